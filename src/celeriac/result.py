"""Task results: ``AsyncResult`` reads a task's state and value from the result backend.

``AsyncResult[R]`` is generic in the task's return type, so ``add.delay(1, 2).get()`` is
an ``int`` to a type checker. ``get`` blocks (plain code); ``aget`` awaits (asyncio code);
both wait on the backend's wake-ups rather than polling.

Workflows: a chain's result links back through ``parent``; ``children`` and ``collect()``
walk the tasks a task sent. ``GroupResult`` and ``ResultSet`` (several results at once) live
in :mod:`celeriac.result_set` and are importable from here, as in Celery.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from celeriac import states
from celeriac.app.state import current_request
from celeriac.exceptions import TaskError, TaskRevokedError
from celeriac.result_set import GroupResult, ResultSet

if TYPE_CHECKING:
    from celeriac.app.base import Celery
    from celeriac.backends.base import ResultBackend

__all__ = [
    "AnyResult",
    "AsyncResult",
    "EagerResult",
    "GroupResult",
    "ResultSet",
    "iterdeps",
    "result_from_tuple",
]

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


#: A task's result or a group's.
AnyResult = AsyncResult[Any] | GroupResult
