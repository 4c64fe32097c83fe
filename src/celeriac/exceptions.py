"""Every exception celeriac raises, in one hierarchy.

Names follow kombu and Celery where users already catch them (``OperationalError``,
``ContentDisallowed``, ``MessageStateError``), so ``except`` clauses carry over.
"""

from __future__ import annotations

import builtins


class CeleriacError(Exception):
    """Base class of every error celeriac raises on purpose."""


class ImproperlyConfigured(CeleriacError, ValueError):
    """A setting, URL or argument cannot work as given; the message says how to fix it."""


class UnknownTransport(ImproperlyConfigured):
    """A broker URL names a scheme no transport is registered for."""


class MissingDependency(CeleriacError, ImportError):
    """An optional feature needs a package that is not installed (the message names the extra)."""


class OperationalError(CeleriacError):
    """The broker could not be reached or used, after any retries the policy allowed."""


class BrokerFileError(CeleriacError):
    """The embedded SQLite broker's file cannot be used: unwritable, not a database, corrupt.

    Not an ``OperationalError``: retrying cannot help, the file or its path must change.
    """


class NotFound(OperationalError):
    """An exchange or queue named by an operation does not exist on the broker."""


class LimitExceeded(CeleriacError):
    """A pool or channel limit was reached and the caller did not want to wait (longer)."""


class SerializationError(CeleriacError):
    """Base class of errors turning values into message bodies and back."""


class EncodeError(SerializationError):
    """A value could not be serialized with the chosen serializer."""


class DecodeError(SerializationError):
    """A message body could not be deserialized (corrupt, or not what its content type says)."""


class ContentDisallowed(SerializationError):
    """A message's content type is not in the accept list; the body was not decoded."""


class MessageStateError(CeleriacError):
    """A message was acknowledged or rejected when it had already been settled."""


# -- tasks, results and workers (names as in ``celery.exceptions``) ------------------------


class TaskError(CeleriacError):
    """Base class of task-related errors."""


class NotRegistered(TaskError, KeyError):
    """No task with this name is registered with the app (or the worker)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "task not registered"


class QueueNotFound(TaskError, KeyError):
    """A task was routed to a queue that is not in ``task_queues``."""


class TimeoutError(TaskError, builtins.TimeoutError):  # Celery's name; also the builtin
    """A result did not become ready within the timeout."""


class TaskPredicate(CeleriacError):
    """Base class of the exceptions a task raises to steer the worker (retry, ignore...)."""


class Retry(TaskPredicate):
    """Raised by ``Task.retry``: the task will run again (the message was already sent).

    Attributes:
        exc: The exception that caused the retry, if any.
        when: The ETA (datetime) or countdown (seconds) of the next attempt.
        sig: Options for the new message (worker use).
    """

    def __init__(
        self,
        message: str | None = None,
        exc: BaseException | None = None,
        when: object = None,
        is_eager: bool = False,
        sig: object = None,
    ) -> None:
        self.message = message
        self.exc = exc
        self.when = when
        #: True when the next attempt is still to be sent (by the worker, after it stored
        #: the RETRY state); ``Task.retry`` sets it.
        self.unsent = False
        self.is_eager = is_eager
        self.sig = sig
        super().__init__(message or self._describe())

    def _describe(self) -> str:
        what = f"Retry in {self.when}" if self.when is not None else "Retry"
        return f"{what}: {self.exc!r}" if self.exc is not None else what


class Ignore(TaskPredicate):
    """Raised by a task to stop without a state update (the state is not recorded)."""


class Reject(TaskPredicate):
    """Raised by a task to reject its message (``requeue`` to deliver it again)."""

    def __init__(self, reason: object = None, requeue: bool = False) -> None:
        self.reason = reason
        self.requeue = requeue
        super().__init__(reason, requeue)


class MaxRetriesExceededError(TaskError):
    """A task asked to be retried more than ``max_retries`` times."""


class TaskRevokedError(TaskError):
    """The task was revoked (or expired) and will not run."""


class InvalidTaskError(TaskError):
    """A task message is malformed (missing or ill-typed headers, protocol v1...)."""


class WorkerLostError(TaskError):
    """The process running the task died (killed, crashed) before it finished."""


class TimeLimitExceeded(TaskError):
    """The task ran past its hard time limit and was stopped."""


class SoftTimeLimitExceeded(TaskError):
    """Raised inside a task that ran past its soft time limit, so it can clean up."""


class Terminated(TaskError):
    """The task was terminated on request."""


class RemoteError(TaskError):
    """A task failed with an exception type that is not rebuilt here (not imported, or
    not known to be safe). Carries the original type's module, name and arguments.

    Attributes:
        exc_type: The original exception's class name.
        exc_module: The module the original class lives in.
        exc_args: The original exception's arguments.
    """

    def __init__(self, exc_type: str, exc_module: str, exc_args: tuple[object, ...]) -> None:
        self.exc_type = exc_type
        self.exc_module = exc_module
        self.exc_args = exc_args
        shown = ", ".join(repr(a) for a in exc_args)
        super().__init__(f"{exc_module}.{exc_type}({shown})")


class ChordError(TaskError):
    """A task in a chord's header failed, so its callback cannot run."""
