"""Results of several tasks at once: ``ResultSet`` and ``GroupResult`` (a group's, by id).

``GroupResult.get()`` returns the members' values in member order; it first reads every
member's state in one go, then waits only for those not finished. Re-exported by
:mod:`celeriac.result`, where Celery users look for them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from celeriac import states
from celeriac.exceptions import TimeoutError as ResultTimeoutError

if TYPE_CHECKING:
    from celeriac.app.base import Celery
    from celeriac.backends.base import ResultBackend
    from celeriac.result import AnyResult


class ResultSet:
    """Several results, waited for and inspected together (Celery's ``ResultSet``)."""

    def __init__(
        self,
        results: Iterable[AnyResult],
        app: Celery | None = None,
        **_ignored: Any,
    ) -> None:
        self.results: list[AnyResult] = list(results)
        self._app = app

    @property
    def app(self) -> Celery:
        """The app whose backend holds the results."""
        if self._app is None:
            from celeriac.app.state import get_current_app

            self._app = get_current_app()
        return self._app

    # -- membership -----------------------------------------------------------------------
    def add(self, result: AnyResult) -> None:
        """Add ``result`` (once)."""
        if result not in self.results:
            self.results.append(result)

    def update(self, results: Iterable[AnyResult]) -> None:
        """Add every result of ``results`` not there yet."""
        for result in results:
            self.add(result)

    def remove(self, result: AnyResult | str) -> None:
        """Remove ``result`` (or the result with that id).

        Raises:
            KeyError: It is not in the set.
        """
        if isinstance(result, str):
            from celeriac.result import AsyncResult

            result = AsyncResult(result, app=self._app)
        try:
            self.results.remove(result)
        except ValueError:
            raise KeyError(result) from None

    def discard(self, result: AnyResult | str) -> None:
        """Remove ``result`` if it is there."""
        with contextlib.suppress(KeyError):
            self.remove(result)

    def clear(self) -> None:
        """Remove every result."""
        self.results.clear()

    @property
    def children(self) -> list[AnyResult]:
        """The member results (so a set is walked like a task that sent them)."""
        return list(self.results)

    # -- state ----------------------------------------------------------------------------
    def ready(self) -> bool:
        """True when every member has finished."""
        return all(result.ready() for result in self.results)

    def waiting(self) -> bool:
        """True when a member has not finished yet."""
        return not self.ready()

    def successful(self) -> bool:
        """True when every member succeeded."""
        return all(result.successful() for result in self.results)

    def failed(self) -> bool:
        """True when a member failed."""
        return any(result.failed() for result in self.results)

    def completed_count(self) -> int:
        """How many members succeeded."""
        return sum(1 for result in self.results if result.successful())

    def maybe_throw(self, propagate: bool = True) -> None:
        """Raise the exception of the first member that failed or was revoked."""
        for result in self.results:
            if isinstance(result, ResultSet):
                result.maybe_throw(propagate)
            elif propagate and result.state in states.PROPAGATE_STATES:
                result.get(propagate=True, disable_sync_subtasks=False)

    maybe_reraise = maybe_throw

    def forget(self) -> None:
        """Delete every member's stored result."""
        for result in self.results:
            result.forget()

    def revoke(
        self,
        connection: Any = None,
        terminate: bool = False,
        signal: str | int | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Tell the workers not to run any member (one ``app.control.revoke`` for all).

        Args:
            connection: A broker connection to use.
            terminate: Also stop members that are running (prefork pool).
            signal: The signal to stop them with (``SIGTERM`` by default).
            wait: Wait for the workers' replies (up to ``timeout`` seconds).
            timeout: See ``wait``.
        """
        self.app.control.revoke(
            [result.id for result in self.results],
            connection=connection,
            terminate=terminate,
            signal=signal or "SIGTERM",
            reply=wait,
            timeout=timeout,
        )

    # -- waiting --------------------------------------------------------------------------
    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        callback: Callable[[str, Any], object] | None = None,
        disable_sync_subtasks: bool = True,
        **_ignored: Any,
    ) -> list[Any]:
        """Wait for every member; their values in member order.

        Args:
            timeout: Seconds to wait at most, for all of them together.
            propagate: Re-raise the first failed member's exception.
            interval: Longest pause between two looks at the backend.
            callback: Called with ``(task_id, value)`` for each member, in order,
                instead of collecting the values (an empty list is returned).
            disable_sync_subtasks: Refuse to wait inside a running task.

        Raises:
            celeriac.exceptions.TimeoutError: Not all finished within ``timeout``.
        """
        from celeriac.result import _refuse_inside_task

        _refuse_inside_task(disable_sync_subtasks)
        deadline = None if timeout is None else time.monotonic() + timeout
        self._read_ahead()
        values: list[Any] = []
        for result in self.results:
            value = result.get(
                timeout=_remaining(deadline),
                propagate=propagate,
                interval=interval,
                disable_sync_subtasks=False,
            )
            if callback is not None:
                callback(result.id, value)
            else:
                values.append(value)
        return values

    join = join_native = get

    def _read_ahead(self) -> None:
        """Read every member's state in one go, so only unfinished ones are waited for."""
        from celeriac.result import AsyncResult

        unread = [r for r in self.results if type(r) is AsyncResult and r._cache is None]
        if len(unread) < 2:
            return
        backend = unread[0].backend
        same = [r for r in unread if r.backend is backend]
        metas = backend.get_task_metas([r.id for r in same])
        for result in same:
            meta = metas.get(result.id)
            if meta is not None:
                result._remember(meta)

    async def aget(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        callback: Callable[[str, Any], object] | None = None,
    ) -> list[Any]:
        """``get`` for asyncio code: waits without blocking the event loop."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._read_ahead()
        values: list[Any] = []
        for result in self.results:
            value = await result.aget(
                timeout=_remaining(deadline), propagate=propagate, interval=interval
            )
            if callback is not None:
                callback(result.id, value)
            else:
                values.append(value)
        return values

    ajoin = aget

    # -- container ------------------------------------------------------------------------
    def __iter__(self) -> Iterator[AnyResult]:
        return iter(self.results)

    def __getitem__(self, index: int) -> AnyResult:
        return self.results[index]

    def __len__(self) -> int:
        return len(self.results)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: [{', '.join(r.id for r in self.results)}]>"


class GroupResult(ResultSet):
    """The results of a group's members, in member order, under the group's id."""

    def __init__(
        self,
        id: str,
        results: Iterable[AnyResult] = (),
        parent: AnyResult | None = None,
        app: Celery | None = None,
        backend: ResultBackend | None = None,
        **_ignored: Any,
    ) -> None:
        super().__init__(results, app=app)
        self.id = id
        self.parent = parent
        self._backend = backend

    @property
    def backend(self) -> ResultBackend:
        """The result backend the group is saved in."""
        if self._backend is None:
            self._backend = self.app.backend
        return self._backend

    def save(self, backend: ResultBackend | None = None) -> GroupResult:
        """Store the member ids under the group's id, for ``GroupResult.restore``."""
        (backend or self.backend).save_group(self.id, [result.id for result in self.results])
        return self

    def delete(self, backend: ResultBackend | None = None) -> None:
        """Remove what ``save`` stored."""
        (backend or self.backend).delete_group(self.id)

    @classmethod
    def restore(
        cls,
        id: str,
        backend: ResultBackend | None = None,
        app: Celery | None = None,
    ) -> GroupResult | None:
        """The group ``save`` stored under ``id``, or None."""
        if backend is None:
            if app is None:
                from celeriac.app.state import get_current_app

                app = get_current_app()
            backend = app.backend
        ids = backend.restore_group(id)
        if ids is None:
            return None
        from celeriac.result import AsyncResult

        members: list[AnyResult] = [AsyncResult(i, app=app, backend=backend) for i in ids]
        return cls(id, members, app=app, backend=backend)

    def as_tuple(self) -> tuple[Any, ...]:
        """``((id, parent), [member tuples])``, Celery's serialized form of a group result."""
        parent = self.parent.as_tuple() if self.parent is not None else None
        return ((self.id, parent), [result.as_tuple() for result in self.results])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, GroupResult):
            return other.id == self.id and other.results == self.results
        if isinstance(other, str):
            return other == self.id
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        members = ", ".join(result.id for result in self.results)
        return f"<{type(self).__name__}: {self.id} [{members}]>"


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ResultTimeoutError("The group's results were not all ready in time")
    return remaining
