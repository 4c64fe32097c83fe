"""From a received message to a runnable request, with every check a bad message fails.

``read_request`` either returns a ``Request`` (the task message, its task, the ``Job`` to
run and the settlement policy) or raises ``BadMessage`` with the reason the message must go
to the dead-letter queue. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from celeriac.app.protocol import TaskRequest, parse_task_message
from celeriac.exceptions import (
    ContentDisallowed,
    InvalidTaskError,
    MissingDependency,
    SerializationError,
)
from celeriac.worker.job import Job

if TYPE_CHECKING:
    from celeriac.app.base import Celery
    from celeriac.app.task import Task
    from celeriac.messaging.message import Message


class BadMessage(Exception):
    """A message the worker cannot process; it is dead-lettered, never run or dropped."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


@dataclass(slots=True)
class Request:
    """A task message accepted by the worker, with how to run and settle it."""

    message: Message
    task: Task[Any, Any]
    info: TaskRequest
    job: Job
    acks_late: bool
    reject_on_worker_lost: bool
    acks_on_failure_or_timeout: bool

    @property
    def id(self) -> str:
        """The task id."""
        return self.info.id

    @property
    def name(self) -> str:
        """The task name (its shadow name when one was given, as in Celery's logs)."""
        return self.info.shadow or self.info.name

    def expired(self, now: datetime) -> bool:
        """True when the task's ``expires`` time has passed."""
        expires = self.info.expires
        return expires is not None and _aware(expires) <= now

    def eta_delay(self, now: datetime) -> float:
        """Seconds until the task may run (0 when it has no ETA or it is due)."""
        eta = self.info.eta
        return max(0.0, (_aware(eta) - now).total_seconds()) if eta is not None else 0.0


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _decode(message: Message) -> Any:
    try:
        return message.decode()
    except ContentDisallowed as exc:
        raise BadMessage(str(exc), "content-disallowed") from exc
    except (SerializationError, MissingDependency) as exc:
        raise BadMessage(f"undecodable body: {exc}", "undecodable") from exc


def _setting(task_value: Any, conf_value: Any) -> Any:
    return conf_value if task_value is None else task_value


def read_request(
    app: Celery,
    message: Message,
    hostname: str,
    time_limit: float | None = None,
    soft_time_limit: float | None = None,
) -> Request:
    """Validate ``message`` and build its request.

    Args:
        app: The worker's app (task registry and settings).
        message: The received message.
        hostname: The worker's node name (``self.request.hostname``).
        time_limit: The worker's hard limit (``--time-limit``), below task and message.
        soft_time_limit: The worker's soft limit.

    Raises:
        BadMessage: Disallowed content type, undecodable body, malformed or protocol v1
            message, or a task this worker does not know.
    """
    body = _decode(message)
    try:
        info = parse_task_message(message.headers, body)
    except InvalidTaskError as exc:
        raise BadMessage(f"invalid task message: {exc}", "invalid") from exc
    task = app.tasks.get(info.name)
    if task is None:
        raise BadMessage(
            f"received unregistered task of type {info.name!r}: is its module imported by "
            "this worker (app include/imports)?",
            "unregistered",
        )
    conf = app.conf
    hard = _first(info.time_limit, task.time_limit, time_limit, conf.task_time_limit)
    soft = _first(
        info.soft_time_limit, task.soft_time_limit, soft_time_limit, conf.task_soft_time_limit
    )
    delivery = message.delivery_info
    request = {
        "id": info.id,
        "retries": info.retries,
        "eta": info.eta.isoformat() if info.eta else None,
        "expires": info.expires.isoformat() if info.expires else None,
        "root_id": info.root_id,
        "parent_id": info.parent_id,
        "group": info.group,
        "group_index": info.group_index,
        "callbacks": info.callbacks,
        "errbacks": info.errbacks,
        "chain": info.chain,
        "chord": info.chord,
        "origin": info.origin,
        "shadow": info.shadow,
        "ignore_result": info.ignore_result,
        "correlation_id": message.properties.correlation_id,
        "reply_to": message.properties.reply_to,
        "delivery_info": {
            "exchange": delivery["exchange"],
            "routing_key": delivery["routing_key"],
            "priority": message.properties.priority,
            "redelivered": delivery["redelivered"],
        },
    }
    job = Job(info.id, info.name, tuple(info.args), info.kwargs, request, hard, soft)
    reject_lost = _setting(task.reject_on_worker_lost, conf.task_reject_on_worker_lost)
    return Request(
        message=message,
        task=task,
        info=info,
        job=job,
        acks_late=bool(_setting(task.acks_late, conf.task_acks_late)),
        reject_on_worker_lost=bool(reject_lost),
        acks_on_failure_or_timeout=bool(
            _setting(task.acks_on_failure_or_timeout, conf.task_acks_on_failure_or_timeout)
        ),
    )


def _first(*values: float | None) -> float | None:
    for value in values:
        if value is not None:
            return value
    return None
