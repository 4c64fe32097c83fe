"""What an event is on the wire, and the facts every sender and receiver agree on.

An event is a flat JSON object (Celery's format, so Flower and Celery's own receivers read
ours). Every event carries:

==========  ==========================================================================
type        ``<group>-<name>``: ``task-succeeded``, ``worker-heartbeat``...
hostname    the sender's node name (``celeriac@host``)
timestamp   ``time.time()`` when it was made
utcoffset   the sender's offset from UTC in hours, Celery's sign: POSITIVE WEST of UTC
            (``time.timezone // 3600``; Berlin in winter is -1, New York +5)
pid         the sending process
clock       the sender's Lamport clock (see ``clock.LamportClock``)
==========  ==========================================================================

plus the fields of its type (``TASK_FIELDS``, ``WORKER_FIELDS``). Events travel on the topic
exchange ``celeryev`` with the type as routing key, dashes turned into dots
(``task.succeeded``); a body holding a list of events goes with ``<group>.multi``.
Messages are transient (delivery mode 1).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from celeriac.messaging.entities import Exchange

#: Celery's name for the events exchange (the ``event_exchange`` setting).
EXCHANGE_NAME = "celeryev"
#: Celery's prefix of listener queue names: ``celeryev.<uuid>``.
QUEUE_PREFIX = "celeryev"
#: Transient: monitoring events are not worth a disk write.
DELIVERY_MODE = 1
#: Seconds between worker heartbeats (Celery's default, sent as the event's ``freq``).
HEARTBEAT_INTERVAL = 2.0

#: ``sw_ident`` of celeriac workers (Celery's say ``py-celery``).
SOFTWARE_IDENT = "py-celeriac"

#: The fields of each event type beyond the common ones (Celery's set).
TASK_FIELDS: Mapping[str, tuple[str, ...]] = {
    "task-sent": (
        "uuid",
        "name",
        "args",
        "kwargs",
        "retries",
        "eta",
        "expires",
        "root_id",
        "parent_id",
        "queue",
        "exchange",
        "routing_key",
    ),
    "task-received": (
        "uuid",
        "name",
        "args",
        "kwargs",
        "retries",
        "eta",
        "expires",
        "root_id",
        "parent_id",
    ),
    "task-started": ("uuid",),
    "task-succeeded": ("uuid", "result", "runtime"),
    "task-failed": ("uuid", "exception", "traceback"),
    "task-retried": ("uuid", "exception", "traceback"),
    "task-revoked": ("uuid", "terminated", "signum", "expired"),
    "task-rejected": ("uuid", "requeue"),
}
WORKER_FIELDS: Mapping[str, tuple[str, ...]] = {
    kind: ("freq", "sw_ident", "sw_ver", "sw_sys", "active", "processed", "loadavg")
    for kind in ("worker-online", "worker-heartbeat", "worker-offline")
}

_COMMON = ("type", "hostname", "timestamp", "utcoffset", "pid", "clock")


def software_info() -> dict[str, str]:
    """``sw_ident``, ``sw_ver`` and ``sw_sys``: the identity every worker event carries."""
    from celeriac import __version__  # the package imports this module: import late

    return {"sw_ident": SOFTWARE_IDENT, "sw_ver": __version__, "sw_sys": platform.system()}


def group_from(event_type: str) -> str:
    """The group of an event type: ``task`` for ``task-sent``."""
    return event_type.split("-", 1)[0]


def routing_key_for(event_type: str) -> str:
    """The routing key of an event type: ``task.succeeded`` for ``task-succeeded``."""
    return event_type.replace("-", ".")


def utcoffset() -> int:
    """Hours from UTC with Celery's sign convention: positive west of Greenwich."""
    if time.localtime().tm_isdst:
        return time.altzone // 3600
    return time.timezone // 3600


def load_average() -> tuple[float, float, float]:
    """The system load averages (1, 5, 15 minutes), rounded; zeros where unknown."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)
    return (round(one, 2), round(five, 2), round(fifteen, 2))


def event_exchange(name: str = EXCHANGE_NAME) -> Exchange:
    """The events exchange, declared exactly as Celery declares it (topic, durable)."""
    return Exchange(name, type="topic", durable=True)


class InvalidEvent(ValueError):
    """A received body item is not an event (not an object, or without a string type)."""


@dataclass(frozen=True, slots=True, eq=False)
class Event(Mapping[str, Any]):
    """One event: the common fields as attributes, the rest in ``fields``.

    An ``Event`` is also a read-only mapping of its wire form (``event["uuid"]``), so
    handlers written for Celery's event dicts work unchanged.

    Attributes:
        type: ``task-succeeded``, ``worker-heartbeat``...
        hostname: The sender's node name.
        timestamp: When the sender made it (seconds since the epoch).
        utcoffset: The sender's UTC offset in hours, positive west of UTC.
        pid: The sending process.
        clock: The sender's Lamport clock value.
        fields: The fields of this type (``uuid``, ``runtime``...).
        local_received: When this process received it (None for events not received).
    """

    type: str
    hostname: str = ""
    timestamp: float = 0.0
    utcoffset: int = 0
    pid: int = 0
    clock: int = 0
    fields: Mapping[str, Any] = field(default_factory=dict)
    local_received: float | None = None

    @property
    def group(self) -> str:
        """``task`` or ``worker`` (the part of the type before the first dash)."""
        return group_from(self.type)

    @property
    def uuid(self) -> str | None:
        """The task id of a task event (None for other events)."""
        value = self.fields.get("uuid")
        return value if isinstance(value, str) else None

    def encode(self) -> dict[str, Any]:
        """The wire form: one flat dict (without ``local_received``)."""
        data = {
            "type": self.type,
            "hostname": self.hostname,
            "timestamp": self.timestamp,
            "utcoffset": self.utcoffset,
            "pid": self.pid,
            "clock": self.clock,
        }
        for key, value in self.fields.items():
            data.setdefault(key, value)  # a field never overrides the common ones
        return data

    @classmethod
    def decode(cls, data: Any, local_received: float | None = None) -> Event:
        """Read the wire form; fields this version does not know are kept in ``fields``.

        Raises:
            InvalidEvent: ``data`` is not a dict with a string ``type``.
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("type"), str):
            raise InvalidEvent(f"not an event: {data!r:.200}")
        rest = {k: v for k, v in data.items() if k not in _COMMON}
        return cls(
            type=data["type"],
            hostname=str(data.get("hostname") or ""),
            timestamp=_number(data.get("timestamp"), float),
            utcoffset=int(_number(data.get("utcoffset"), int)),
            pid=int(_number(data.get("pid"), int)),
            clock=int(_number(data.get("clock"), int)),
            fields=rest,
            local_received=local_received,
        )

    # -- the mapping face (Celery's handlers take dicts) ----------------------------------
    def __getitem__(self, key: str) -> Any:
        if key in _COMMON:
            return getattr(self, key)
        if key == "local_received" and self.local_received is not None:
            return self.local_received
        return self.fields[key]

    def __iter__(self) -> Iterator[str]:
        yield from _COMMON
        yield from (k for k in self.fields if k not in _COMMON)
        if self.local_received is not None:
            yield "local_received"

    def __len__(self) -> int:
        return len(_COMMON) + len(self.fields) + (self.local_received is not None)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return dict(self.items()) == dict(other.items())

    __hash__ = None  # type: ignore[assignment]  # mutable-looking, like a dict

    def __repr__(self) -> str:
        return f"<Event {self.type} from {self.hostname} clock={self.clock} {dict(self.fields)}>"


def _number(value: Any, kind: type[float] | type[int]) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return kind(0)
    return kind(value)
