"""What a pool runs and what it reports back: plain, picklable values.

The worker's event loop turns a task message into a ``Job``; a pool (in a thread, a child
process or on the loop itself) runs it through the tracer and returns an ``Outcome``; the
loop then settles the message and records the result. Nothing here holds a connection, so
both cross process boundaries unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Job:
    """One task execution.

    Attributes:
        id: The task id.
        name: The registered task name.
        args: Positional arguments.
        kwargs: Keyword arguments.
        request: The request context the task sees as ``self.request`` (plain data).
        time_limit: Hard limit in seconds: the execution is stopped when it passes.
        soft_time_limit: Soft limit in seconds: ``SoftTimeLimitExceeded`` is raised inside.
    """

    id: str
    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    request: dict[str, Any] = field(default_factory=dict)
    time_limit: float | None = None
    soft_time_limit: float | None = None


@dataclass(frozen=True, slots=True)
class ExceptionInfo:
    """A raised exception, as data that survives pickling whatever the exception was.

    Attributes:
        type: Class name (``ValueError``).
        module: Module of the class (``builtins``).
        args: The exception's arguments, made JSON-safe by the tracer when they are not.
        traceback: The formatted traceback.
        exception: The exception object itself when it could be carried (same process, or
            picklable); None otherwise.
    """

    type: str
    module: str
    args: tuple[Any, ...]
    traceback: str
    exception: BaseException | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a job ended.

    Attributes:
        state: ``SUCCESS``, ``FAILURE``, ``RETRY``, ``IGNORED`` or ``REJECTED``.
        result: The return value (SUCCESS).
        error: The exception (FAILURE, RETRY, REJECTED with a reason).
        runtime: Seconds the task ran.
        requeue: For REJECTED: put the message back on the queue.
        worker_lost: The process running the job died; ``error`` is a WorkerLostError.
        retry: For RETRY: options of the next attempt (countdown/eta, max_retries...).
        recorded: The tracer stored this outcome in the result backend. Outcomes a pool
            made itself (a killed process, a time limit) are not, and the worker stores them.
    """

    state: str
    result: Any = None
    error: ExceptionInfo | None = None
    runtime: float = 0.0
    requeue: bool = False
    worker_lost: bool = False
    retry: dict[str, Any] | None = None
    recorded: bool = False
