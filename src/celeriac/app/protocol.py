"""Celery's task message protocol v2: building messages and reading them back.

Every header Celery sends is present in every message (many are null), so a Celery worker
reads ours and ours reads Celery's. The body is ``[args, kwargs, embed]``; ``embed`` holds the
callbacks, errbacks, the rest of a chain and a chord. See ``shared/PROTOCOL.md``.
"""

from __future__ import annotations

import os
import reprlib
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from celeriac.exceptions import InvalidTaskError

_HOSTNAME = socket.gethostname()


def origin() -> str:
    """``pid@hostname`` of the sending process (right after a fork, too)."""
    return f"{os.getpid()}@{_HOSTNAME}"


_repr = reprlib.Repr()
_repr.maxstring = 256
_repr.maxother = 256
_repr.maxlist = _repr.maxtuple = _repr.maxdict = 16
_repr.maxlevel = 4


#: Longest ``argsrepr``/``kwargsrepr`` sent as a plain ``repr``.
REPR_MAX = 1024


def saferepr(value: Any) -> str:
    """A short repr for logs and monitors (``argsrepr``/``kwargsrepr``).

    The builtin ``repr`` is ten times faster than ``reprlib`` and arguments are usually
    small; ``reprlib`` abbreviates the rest.
    """
    text = repr(value)
    return text if len(text) <= REPR_MAX else _repr.repr(value)


@dataclass(frozen=True, slots=True)
class TaskMessage:
    """An outgoing task message: headers, body parts and the AMQP properties it needs."""

    headers: dict[str, Any]
    args: list[Any]
    kwargs: dict[str, Any]
    embed: dict[str, Any]
    correlation_id: str
    reply_to: str

    @property
    def body(self) -> list[Any]:
        """The body before serialization: ``[args, kwargs, embed]``."""
        return [self.args, self.kwargs, self.embed]


def build_task_message(
    task_id: str,
    name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    *,
    eta: datetime | None = None,
    expires: datetime | None = None,
    group_id: str | None = None,
    group_index: int | None = None,
    retries: int = 0,
    chord: Any = None,
    callbacks: list[Any] | None = None,
    errbacks: list[Any] | None = None,
    chain: list[Any] | None = None,
    reply_to: str | None = None,
    time_limit: float | None = None,
    soft_time_limit: float | None = None,
    root_id: str | None = None,
    parent_id: str | None = None,
    shadow: str | None = None,
    ignore_result: bool = False,
    extra_headers: Mapping[str, Any] | None = None,
) -> TaskMessage:
    """A protocol v2 task message with every header Celery sends."""
    args = list(args)
    kwargs = dict(kwargs)
    headers: dict[str, Any] = {
        "lang": "py",
        "task": name,
        "id": task_id,
        "shadow": shadow,
        "eta": eta.isoformat() if eta is not None else None,
        "expires": expires.isoformat() if expires is not None else None,
        "group": group_id,
        "group_index": group_index,
        "retries": retries,
        "timelimit": [time_limit, soft_time_limit],
        "root_id": root_id or task_id,
        "parent_id": parent_id,
        "argsrepr": saferepr(tuple(args)),
        "kwargsrepr": saferepr(kwargs),
        "origin": origin(),
        "ignore_result": ignore_result,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    if extra_headers:
        headers.update(extra_headers)
    embed = {"callbacks": callbacks, "errbacks": errbacks, "chain": chain, "chord": chord}
    return TaskMessage(headers, args, kwargs, embed, task_id, reply_to or "")


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """A task message as the worker reads it (validated)."""

    id: str
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    eta: datetime | None = None
    expires: datetime | None = None
    retries: int = 0
    time_limit: float | None = None
    soft_time_limit: float | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    shadow: str | None = None
    origin: str | None = None
    ignore_result: bool = False
    callbacks: list[Any] | None = None
    errbacks: list[Any] | None = None
    chain: list[Any] | None = None
    chord: Any = None
    headers: dict[str, Any] = field(default_factory=dict)


def _optional_time(headers: Mapping[str, Any], key: str) -> datetime | None:
    value = headers.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidTaskError(f"header {key!r} must be an ISO-8601 string, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidTaskError(f"header {key!r} is not an ISO-8601 time: {value!r}") from exc
    return parsed


def _optional_number(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidTaskError(f"{what} must be a number or null, got {value!r}")
    return float(value)


def _time_limits(headers: Mapping[str, Any]) -> tuple[float | None, float | None]:
    limits = headers.get("timelimit")
    if limits is None:
        return None, None
    if not isinstance(limits, list | tuple) or len(limits) != 2:
        raise InvalidTaskError(f"header 'timelimit' must be [hard, soft], got {limits!r}")
    return _optional_number(limits[0], "timelimit[0]"), _optional_number(limits[1], "timelimit[1]")


def _str_or_none(headers: Mapping[str, Any], key: str) -> str | None:
    value = headers.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidTaskError(f"header {key!r} must be a string or null, got {value!r}")
    return value


def parse_task_message(headers: Mapping[str, Any], body: Any) -> TaskRequest:
    """Validate a decoded protocol v2 message.

    Raises:
        InvalidTaskError: Protocol v1, missing or ill-typed headers, or a malformed body.
    """
    if "task" not in headers:
        raise InvalidTaskError(
            "message has no 'task' header: protocol v1 messages are not supported "
            "(send with task_protocol=2, Celery's default since 4.0)"
        )
    name, task_id = headers.get("task"), headers.get("id")
    if not isinstance(name, str) or not name:
        raise InvalidTaskError(f"header 'task' must be a task name, got {name!r}")
    if not isinstance(task_id, str) or not task_id:
        raise InvalidTaskError(f"header 'id' must be a task id, got {task_id!r}")
    if not isinstance(body, list | tuple) or len(body) != 3:
        raise InvalidTaskError("body must be [args, kwargs, embed]")
    args, kwargs, embed = body
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        raise InvalidTaskError("body args must be a list and kwargs an object")
    if embed is None:
        embed = {}
    if not isinstance(embed, dict):
        raise InvalidTaskError("body embed must be an object")
    retries = headers.get("retries") or 0
    if isinstance(retries, bool) or not isinstance(retries, int):
        raise InvalidTaskError(f"header 'retries' must be an integer, got {retries!r}")
    group_index = headers.get("group_index")
    if group_index is not None and not isinstance(group_index, int):
        raise InvalidTaskError(f"header 'group_index' must be an integer, got {group_index!r}")
    hard, soft = _time_limits(headers)
    return TaskRequest(
        id=task_id,
        name=name,
        args=list(args),
        kwargs=kwargs,
        eta=_optional_time(headers, "eta"),
        expires=_optional_time(headers, "expires"),
        retries=retries,
        time_limit=hard,
        soft_time_limit=soft,
        root_id=_str_or_none(headers, "root_id"),
        parent_id=_str_or_none(headers, "parent_id"),
        group=_str_or_none(headers, "group"),
        group_index=group_index,
        shadow=_str_or_none(headers, "shadow"),
        origin=_str_or_none(headers, "origin"),
        ignore_result=bool(headers.get("ignore_result", False)),
        callbacks=embed.get("callbacks"),
        errbacks=embed.get("errbacks"),
        chain=embed.get("chain"),
        chord=embed.get("chord"),
        headers=dict(headers),
    )
