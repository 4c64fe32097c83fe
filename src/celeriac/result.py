"""Task results: ``AsyncResult`` reads a task's state and value from the result backend.

``AsyncResult[R]`` is generic in the task's return type, so ``add.delay(1, 2).get()`` is
an ``int`` to a type checker. ``get`` blocks (plain code); ``aget`` awaits (asyncio code);
both wait on the backend's wake-ups rather than polling.

Workflows: ``GroupResult`` (a ``ResultSet`` with the group's id) holds a group's member
results in order; a chain's result links back through ``parent``; ``children`` and
``collect()`` walk the tasks a task sent.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from celeriac import states
from celeriac.app.state import current_request
from celeriac.exceptions import TaskError, TaskRevokedError
from celeriac.exceptions import TimeoutError as ResultTimeoutError

if TYPE_CHECKING:
    from celeriac.app.base import Celery
    from celeriac.backends.base import ResultBackend

R = TypeVar("R")
Meta = dict[str, Any]


def _refuse_inside_task(disable_sync_subtasks: bool) -> None:
    request = current_request.get()
    if disable_sync_subtasks and request is not None and not request.is_eager:
        raise RuntimeError(
            "Never call result.get() within a task: it can deadlock the worker. "
            "Use a chain or a chord instead (or pass disable_sync_subtasks=False)."
        )


class AsyncResult(Generic[R]):
    """The result of a task that was sent (it may not have run yet)."""

    def __init__(
        self,
        id: str,
        backend: ResultBackend | None = None,
        task_name: str | None = None,
        app: Celery | None = None,
        parent: AnyResult | None = None,
    ) -> None:
        if not isinstance(id, str) or not id:
            raise ValueError(f"a result needs a task id, got {id!r}")
        self.id = id
        self._app = app
        self._backend = backend
        self.task_name = task_name
        self.parent = parent
        self._cache: Meta | None = None

    # -- plumbing -------------------------------------------------------------------------
    @property
    def app(self) -> Celery:
        """The app whose backend holds this result."""
        if self._app is None:
            from celeriac.app.state import get_current_app

            self._app = get_current_app()
        return self._app

    @property
    def backend(self) -> ResultBackend:
        """The result backend."""
        if self._backend is None:
            self._backend = self.app.backend
        return self._backend

    @property
    def task_id(self) -> str:
        """Same as ``id``."""
        return self.id

    def _meta(self) -> Meta:
        if self._cache is not None:
            return self._cache
        meta = self.backend.get_task_meta(self.id)
        if meta.get("status") in states.READY_STATES:
            self._cache = meta
        return meta

    def _remember(self, meta: Meta) -> Meta:
        if meta.get("status") in states.READY_STATES:
            self._cache = meta
        return meta

    # -- state ----------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """The task's state: PENDING, STARTED, SUCCESS, FAILURE, RETRY, REVOKED, or custom."""
        return str(self._meta()["status"])

    status = state

    @property
    def result(self) -> Any:
        """The return value, the exception (failed states) or the custom state's meta.

        The backend rebuilds stored exceptions when it reads the meta.
        """
        return self._meta().get("result")

    info = result

    @property
    def traceback(self) -> str | None:
        """The formatted traceback of a failure."""
        value = self._meta().get("traceback")
        return str(value) if value is not None else None

    @property
    def date_done(self) -> datetime | None:
        """When the task finished (UTC), or None."""
        value = self._meta().get("date_done")
        if value is None:
            return None
        return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))

    @property
    def children(self) -> list[AnyResult]:
        """Results of the tasks (and groups) this task sent, once it has finished."""
        children = self._meta().get("children") or []
        return [self._child(c) for c in children]

    def _child(self, value: Any) -> AnyResult:
        # Celery stores a child as a result tuple (``[[id, parent], None]``, a group's
        # ``[[id, parent], [members...]]``) or, in old versions, as a bare task id.
        if isinstance(value, list | tuple):
            return result_from_tuple(value, self._app)
        return AsyncResult(str(value), app=self._app, backend=self._backend)

    def iterdeps(self, intermediate: bool = False) -> Iterator[tuple[AnyResult | None, AnyResult]]:
        """``(parent, result)`` for this result and, breadth first, every child it sent.

        Raises:
            TaskError: A result is not ready (unless ``intermediate``), so its children
                are not known yet.
        """
        return iterdeps(self, intermediate)

    def collect(
        self, intermediate: bool = False, **get_options: Any
    ) -> Iterator[tuple[AnyResult, Any]]:
        """``(result, value)`` for this task and every task it sent, waiting for each.

        ``get_options`` (timeout, propagate...) are passed to each ``get``. Tasks that send
        tasks (a task that returns after starting a group, a chain) are walked through their
        stored ``children``.
        """
        for _, node in self.iterdeps(intermediate=intermediate):
            yield node, node.get(**get_options)

    @property
    def name(self) -> str | None:
        """The task name (stored with extended results)."""
        return self._meta().get("name") or self.task_name

    @property
    def args(self) -> Any:
        """The task's arguments (stored with extended results)."""
        return self._meta().get("args")

    @property
    def kwargs(self) -> Any:
        """The task's keyword arguments (stored with extended results)."""
        return self._meta().get("kwargs")

    def ready(self) -> bool:
        """True when the task finished (SUCCESS, FAILURE or REVOKED)."""
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        """True when the task succeeded."""
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        """True when the task failed."""
        return self.state == states.FAILURE

    # -- waiting --------------------------------------------------------------------------
    def _outcome(self, meta: Meta, propagate: bool) -> R:
        status = meta.get("status")
        value = meta.get("result")  # an exception already, for failed states
        if status in states.PROPAGATE_STATES and propagate:
            if isinstance(value, BaseException):
                raise value
            if status == states.REVOKED:
                raise TaskRevokedError(f"task {self.id} was revoked")
            raise TaskError(f"task {self.id} ended in {status} with no exception stored")
        return cast(R, value)

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        on_message: Callable[[Meta], None] | None = None,
        disable_sync_subtasks: bool = True,
        **_ignored: Any,
    ) -> R:
        """Wait for the task to finish and return its value.

        Args:
            timeout: Seconds to wait at most (None waits forever).
            propagate: Re-raise the task's exception when it failed or was revoked.
            interval: Longest pause between two looks at the backend.
            on_message: Called with the meta of every state the task reports, in order.
            disable_sync_subtasks: Refuse to wait inside a running task (deadlock guard).

        Raises:
            celeriac.exceptions.TimeoutError: The task did not finish within ``timeout``.
        """
        _refuse_inside_task(disable_sync_subtasks)
        if self._cache is not None and on_message is None:
            return self._outcome(self._cache, propagate)
        meta = self.backend.wait_for(
            self.id, timeout=timeout, interval=interval, on_message=on_message
        )
        return self._outcome(self._remember(meta), propagate)

    wait = get

    async def aget(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        on_message: Callable[[Meta], None] | None = None,
    ) -> R:
        """``get`` for asyncio code: waits without blocking the event loop."""
        if self._cache is not None and on_message is None:
            return self._outcome(self._cache, propagate)
        meta = await self.backend.await_for(
            self.id, timeout=timeout, interval=interval, on_message=on_message
        )
        return self._outcome(self._remember(meta), propagate)

    def forget(self) -> None:
        """Delete the stored result."""
        self._cache = None
        self.backend.forget(self.id)

    def revoke(
        self,
        connection: Any = None,
        terminate: bool = False,
        signal: str | int | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Tell the workers not to run this task (``app.control.revoke``).

        Args:
            connection: A broker connection to use.
            terminate: Also stop the task if it is running (prefork pool).
            signal: The signal to stop it with (``SIGTERM`` by default).
            wait: Wait for the workers' replies (up to ``timeout`` seconds).
            timeout: See ``wait``.
        """
        self.app.control.revoke(
            self.id,
            connection=connection,
            terminate=terminate,
            signal=signal or "SIGTERM",
            reply=wait,
            timeout=timeout,
        )

    def as_tuple(self) -> tuple[Any, ...]:
        """``((id, parent), None)``, Celery's serialized form of a result."""
        parent = self.parent.as_tuple() if self.parent is not None else None
        return ((self.id, parent), None)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return other.id == self.id
        if isinstance(other, str):
            return other == self.id
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.id}>"


class EagerResult(AsyncResult[R]):
    """The result of a task run in this process by ``apply()`` or ``task_always_eager``."""

    def __init__(
        self,
        id: str,
        value: Any,
        state: str,
        traceback: str | None = None,
        name: str | None = None,
        app: Celery | None = None,
    ) -> None:
        super().__init__(id, task_name=name, app=app)
        self._value = value
        self._state = state
        self._traceback = traceback

    def _meta(self) -> Meta:
        return {
            "task_id": self.id,
            "status": self._state,
            "result": self._value,
            "traceback": self._traceback,
            "children": [],
            "date_done": None,
        }

    @property
    def result(self) -> Any:
        return self._value

    info = result

    def _outcome(self, meta: Meta, propagate: bool) -> R:
        propagating = self._state in states.PROPAGATE_STATES and propagate
        if propagating and isinstance(self._value, BaseException):
            raise self._value
        value: R = self._value
        return value

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        on_message: Callable[[Meta], None] | None = None,
        disable_sync_subtasks: bool = True,
        **_ignored: Any,
    ) -> R:
        if on_message is not None:
            on_message(self._meta())
        return self._outcome(self._meta(), propagate)

    async def aget(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        on_message: Callable[[Meta], None] | None = None,
    ) -> R:
        return self.get(timeout, propagate, interval, on_message)

    def forget(self) -> None:
        """Eager results are not stored; nothing to delete."""


def result_from_tuple(value: Any, app: Celery | None = None) -> AnyResult:
    """Rebuild a result from Celery's serialized form.

    ``((id, parent), None)`` is a task's result; ``((id, parent), [members...])`` a
    group's; ``parent`` is the same form again, or None.
    """
    if isinstance(value, Mapping):
        raise TypeError("expected a result tuple, got a mapping")
    head, nodes = value
    task_id, parent = head if isinstance(head, list | tuple) else (head, None)
    parent_result = result_from_tuple(parent, app) if parent else None
    if nodes is not None:
        members = [result_from_tuple(node, app) for node in nodes]
        return GroupResult(str(task_id), members, parent=parent_result, app=app)
    return AsyncResult(str(task_id), app=app, parent=parent_result)


def iterdeps(
    result: AnyResult, intermediate: bool = False
) -> Iterator[tuple[AnyResult | None, AnyResult]]:
    """``(parent, result)`` for ``result`` and, breadth first, every result it sent."""
    stack: deque[tuple[AnyResult | None, AnyResult]] = deque([(None, result)])
    while stack:
        parent, node = stack.popleft()
        yield parent, node
        if node.ready():
            stack.extend((node, child) for child in node.children)
        elif not intermediate:
            raise TaskError(f"{node!r} is not ready: the tasks it sends are not known yet")


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


#: A task's result or a group's.
AnyResult = AsyncResult[Any] | GroupResult


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ResultTimeoutError("The group's results were not all ready in time")
    return remaining
