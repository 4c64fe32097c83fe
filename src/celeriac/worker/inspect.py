"""What a worker answers to each remote-control ``inspect`` command (Celery's shapes).

Inspections only read the worker's state: the requests the task consumer holds (held for
an ETA or a rate limit, given to the pool, running), the pool, the settings. See
``celeriac.worker.control`` for the state handlers get and how they are registered.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from celeriac.control.commands import to_bool
from celeriac.control.report import bugreport, settings_table
from celeriac.messaging.entities import Exchange, Queue
from celeriac.worker.control import ControlState, Handler, ok, registrar, running_ids

try:
    import resource
except ImportError:  # pragma: no cover - not on Windows
    resource = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from celeriac.worker.request import Request

#: Task attributes ``registered`` shows when none are asked for (Celery's).
DEFAULT_TASK_INFO_ITEMS = ("exchange", "routing_key", "rate_limit")

INSPECT_HANDLERS: dict[str, Handler] = {}
handler = registrar("inspect", INSPECT_HANDLERS)


# -- describing requests -------------------------------------------------------------------


def request_info(state: ControlState, request: Request, safe: bool = False) -> dict[str, Any]:
    """Celery's ``TASK_INFO`` of a request (``safe``: argument reprs instead of values)."""
    job, headers = request.job, request.info.headers
    started = dict((j.id, at) for j, at in state.pool.running()).get(job.id)
    return {
        "id": job.id,
        "name": job.name,
        "args": headers.get("argsrepr", repr(job.args)) if safe else list(job.args),
        "kwargs": headers.get("kwargsrepr", repr(job.kwargs)) if safe else job.kwargs,
        "type": job.name,
        "hostname": state.hostname,
        "time_start": started,
        "acknowledged": request.message.acknowledged,
        "delivery_info": job.request.get("delivery_info"),
        "worker_pid": state.pool.job_pid(job.id),
    }


def _where(state: ControlState) -> dict[str, tuple[str, Request]]:
    """Every request the worker holds, by id, with where it is (Celery's words)."""
    running = running_ids(state)
    now = datetime.now(UTC)
    found: dict[str, tuple[str, Request]] = {}
    for request, _timer in state.consumer.held.values():
        where = "scheduled" if request.eta_delay(now) > 0 else "reserved"
        found[request.id] = (where, request)
    for task_id, request in state.consumer.requests.items():
        found[task_id] = ("active" if task_id in running else "reserved", request)
    return found


# -- inspect ---------------------------------------------------------------------------------


@handler("ping")
async def ping(state: ControlState, **_: Any) -> Any:
    return ok("pong")


@handler("clock")
async def clock(state: ControlState, **_: Any) -> Any:
    return {"clock": state.app.clock.value}


@handler("active")
async def active(state: ControlState, safe: Any = False, **_: Any) -> Any:
    safe = to_bool(safe) if isinstance(safe, str) else bool(safe)
    where = _where(state)
    return [request_info(state, r, safe) for kind, r in where.values() if kind == "active"]


@handler("reserved")
async def reserved(state: ControlState, **_: Any) -> Any:
    return [request_info(state, r) for kind, r in _where(state).values() if kind == "reserved"]


@handler("scheduled")
async def scheduled(state: ControlState, **_: Any) -> Any:
    return [
        {
            "eta": request.info.eta.isoformat() if request.info.eta else None,
            "priority": request.message.properties.priority,
            "request": request_info(state, request),
        }
        for kind, request in _where(state).values()
        if kind == "scheduled"
    ]


@handler("query_task")
async def query_task(state: ControlState, ids: Any = (), **_: Any) -> Any:
    wanted = [ids] if isinstance(ids, str) else [str(i) for i in ids or ()]
    where = _where(state)
    return {
        task_id: [where[task_id][0], request_info(state, where[task_id][1])]
        for task_id in wanted
        if task_id in where
    }


@handler("revoked")
async def revoked(state: ControlState, **_: Any) -> Any:
    return list(state.consumer.revoked)


@handler("registered")
async def registered(
    state: ControlState, taskinfoitems: Iterable[str] | None = None, **_: Any
) -> Any:
    items = [
        item
        for item in (taskinfoitems or DEFAULT_TASK_INFO_ITEMS)
        if isinstance(item, str) and item.isidentifier() and not item.startswith("_")
    ]
    described = []
    for name, task in sorted(state.app.tasks.regular().items()):
        fields = {i: getattr(task, i, None) for i in items}
        shown = " ".join(f"{i}={v}" for i, v in fields.items() if v is not None)
        described.append(f"{name} [{shown}]" if shown else name)
    return described


@handler("active_queues")
async def active_queues(state: ControlState, **_: Any) -> Any:
    return [queue_info(queue) for queue in state.consumer.consumer.queues]


def queue_info(queue: Queue) -> dict[str, Any]:
    """A queue as Celery's ``active_queues`` describes it (kombu's ``Queue.as_dict``)."""
    exchange = queue.exchange or Exchange("")
    return {
        "name": queue.name,
        "exchange": {
            "name": exchange.name,
            "type": exchange.type,
            "arguments": dict(exchange.arguments) or None,
            "durable": exchange.durable,
            "passive": False,
            "auto_delete": exchange.auto_delete,
            "delivery_mode": None,
            "no_declare": False,
        },
        "routing_key": queue.routing_key or queue.name,
        "queue_arguments": None,
        "binding_arguments": None,
        "consumer_arguments": None,
        "durable": queue.durable,
        "exclusive": queue.exclusive,
        "auto_delete": queue.auto_delete,
        "no_ack": False,
        "alias": None,
        "bindings": [
            {"exchange": b.exchange.name, "routing_key": b.routing_key} for b in queue.bindings
        ],
        "no_declare": None,
        "expires": queue.expires,
        "message_ttl": queue.message_ttl,
        "max_length": queue.max_length,
        "max_length_bytes": None,
        "max_priority": queue.max_priority,
    }


@handler("stats")
async def stats(state: ControlState, **_: Any) -> Any:
    consumer, worker = state.consumer, state.worker
    soft = worker.options.soft_time_limit or state.app.conf.task_soft_time_limit
    hard = worker.options.time_limit or state.app.conf.task_time_limit
    return {
        "total": dict(consumer.totals),
        "pid": os.getpid(),
        "clock": str(state.app.clock.value),
        "uptime": round(time.time() - state.started),
        "pool": {**state.pool.info(), "timeouts": [soft or 0, hard or 0]},
        "broker": broker_info(consumer.connection.url),
        "prefetch_count": consumer.prefetch,
        "rusage": rusage(),
    }


def broker_info(url: str) -> dict[str, Any]:
    """The broker connection as ``stats`` shows it (Celery's keys; never the password)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return {
        "hostname": parts.hostname or "",
        "userid": parts.username,
        "virtual_host": parts.path.lstrip("/") or "/",
        "port": port,
        "insist": False,
        "ssl": parts.scheme.endswith("s"),
        "transport": parts.scheme,
        "connect_timeout": None,
        "heartbeat": None,
        "login_method": None,
        "uri_prefix": None,
        "transport_options": {},
    }


def rusage() -> dict[str, Any] | str:
    """This process's resource usage (``getrusage``), or ``"N/A"`` where there is none."""
    if resource is None:  # pragma: no cover
        return "N/A"
    usage = resource.getrusage(resource.RUSAGE_SELF)
    names = (
        *("utime", "stime", "maxrss", "ixrss", "idrss", "isrss", "minflt", "majflt"),
        *("nswap", "inblock", "oublock", "msgsnd", "msgrcv", "nsignals", "nvcsw", "nivcsw"),
    )
    return {name: getattr(usage, f"ru_{name}") for name in names}


@handler("conf")
async def conf(state: ControlState, with_defaults: Any = False, **_: Any) -> Any:
    everything = to_bool(with_defaults) if isinstance(with_defaults, str) else with_defaults
    return settings_table(state.app, bool(everything))


@handler("report")
async def report(state: ControlState, **_: Any) -> Any:
    return ok(bugreport(state.app))


@handler("hello")
async def hello(state: ControlState, from_node: str = "", revoked: Any = None, **_: Any) -> Any:
    if from_node == state.hostname:
        return None
    if revoked:
        # Only the ids are taken: another host's expiry stamps mean nothing here.
        state.consumer.revoked.update([str(task_id) for task_id in revoked])
    return {"revoked": list(state.consumer.revoked), "clock": state.app.clock.forward()}
