"""What a worker does for each remote-control command, and the shape of each reply.

Every name in ``celeriac.control.commands.COMMANDS`` has a handler here, registered with
``@handler``. A handler runs on the worker's event loop, takes the ``ControlState`` and the
request's arguments, and returns the reply (Celery's shapes: ``{"ok": ...}`` or
``{"error": ...}`` for commands, plain data for inspections). Blocking I/O (the result
backend, declaring a queue) goes through ``state.io``, off the loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal as signals_module
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

from celeriac import states
from celeriac.control.commands import COMMANDS, to_bool
from celeriac.control.report import bugreport, settings_table
from celeriac.exceptions import ImproperlyConfigured
from celeriac.messaging.entities import Exchange, Queue
from celeriac.worker.job import Outcome
from celeriac.worker.ratelimit import RateLimits, parse_rate

try:
    import resource
except ImportError:  # pragma: no cover - not on Windows
    resource = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from celeriac.app.base import Celery
    from celeriac.messaging.connection import Connection
    from celeriac.worker.consumer import TaskConsumer
    from celeriac.worker.pools.base import Pool
    from celeriac.worker.request import Request
    from celeriac.worker.worker import Worker

logger = logging.getLogger("celeriac.worker")

P = ParamSpec("P")
T = TypeVar("T")

Handler = Callable[..., Awaitable[Any]]
HANDLERS: dict[str, Handler] = {}

#: Task attributes ``registered`` shows when none are asked for (Celery's).
DEFAULT_TASK_INFO_ITEMS = ("exchange", "routing_key", "rate_limit")
#: Unready states a revoke may overwrite in the result backend (as Celery's workers do).
REVOCABLE_STATES = frozenset({states.PENDING, states.RECEIVED, states.RETRY, states.REJECTED})


def ok(value: Any) -> dict[str, Any]:
    """A command's success reply."""
    return {"ok": value}


def nok(value: Any) -> dict[str, Any]:
    """A command's failure reply."""
    return {"error": value}


def handler(name: str) -> Callable[[Handler], Handler]:
    """Register the handler of command ``name`` (which must be in ``COMMANDS``)."""
    if name not in COMMANDS:
        raise ImproperlyConfigured(f"{name!r} is not a remote-control command (see COMMANDS)")

    def register(fn: Handler) -> Handler:
        HANDLERS[name] = fn
        return fn

    return register


@dataclass
class ControlState:
    """What handlers work with: the worker, its parts, and a way to do blocking I/O."""

    worker: Worker
    connection: Connection
    started: float = field(default_factory=time.time)

    @property
    def app(self) -> Celery:
        return self.worker.app

    @property
    def hostname(self) -> str:
        return self.worker.hostname

    @property
    def consumer(self) -> TaskConsumer:
        consumer = self.worker.consumer
        assert consumer is not None, "remote control starts after the task consumer"
        return consumer

    @property
    def pool(self) -> Pool:
        pool = self.worker.pool
        assert pool is not None, "remote control starts after the pool"
        return pool

    async def io(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking call off the event loop."""
        return await self.connection.arun(fn, *args, **kwargs)


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


def _running_ids(state: ControlState) -> set[str]:
    return {job.id for job, _ in state.pool.running()}


def _where(state: ControlState) -> dict[str, tuple[str, Request]]:
    """Every request the worker holds, by id, with where it is (Celery's words)."""
    running = _running_ids(state)
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


# -- control ---------------------------------------------------------------------------------


def signal_number(value: Any) -> int:
    """``SIGTERM``, ``TERM``, ``15`` or 15 to the signal number.

    Raises:
        ValueError: Not a signal this system knows.
    """
    if value is None:
        return int(signals_module.SIGTERM)
    text = str(value).strip().upper()
    if text.isdigit():
        return int(signals_module.Signals(int(text)))
    name = text if text.startswith("SIG") else f"SIG{text}"
    try:
        return int(signals_module.Signals[name])
    except KeyError:
        raise ValueError(f"unknown signal {value!r}") from None


async def _mark_revoked(state: ControlState, task_ids: list[str]) -> None:
    """Record REVOKED for tasks that are not running here and have not started anywhere."""
    backend = state.app.backend
    running = _running_ids(state)
    for task_id in task_ids:
        if task_id in running or task_id in state.consumer.requests:
            continue  # the consumer records it when the pool hands the task back
        with contextlib.suppress(Exception):  # best effort, as in Celery
            meta = await state.io(backend.get_task_meta, task_id)
            if meta.get("status") in REVOCABLE_STATES:
                await state.io(backend.mark_as_revoked, task_id, "revoked")


@handler("revoke")
async def revoke(
    state: ControlState, task_id: Any = (), terminate: Any = False, signal: Any = None, **_: Any
) -> Any:
    ids = [task_id] if isinstance(task_id, str) else [str(i) for i in task_id or ()]
    consumer, pool = state.consumer, state.pool
    for one in ids:
        consumer.revoked.add(one)
        consumer.revoke_held(one)
        pool.discard(one, Outcome(state=states.REVOKED))
    logger.info("Tasks flagged as revoked: %s", ", ".join(ids))
    await _mark_revoked(state, ids)
    if to_bool(terminate) if isinstance(terminate, str) else terminate:
        return _terminate(state, ids, signal_number(signal))
    return ok(f"tasks {', '.join(ids)} flagged as revoked")


def _terminate(state: ControlState, ids: list[str], signum: int) -> dict[str, Any]:
    consumer, pool = state.consumer, state.pool
    stopped, unstoppable = [], []
    for task_id in ids:
        if pool.job_pid(task_id) is None:
            continue  # not running here
        consumer.revoked.mark_terminated(task_id, signum)
        if pool.terminate_job(task_id, signum):
            stopped.append(task_id)
        else:
            consumer.revoked.pop_terminated(task_id)
            unstoppable.append(task_id)
    if unstoppable:
        return nok(
            f"terminate: the {state.worker.pool_name} pool cannot stop a running task: "
            f"{', '.join(unstoppable)} will run to the end (revoked: not run again)"
        )
    if not stopped:
        return ok("terminate: tasks unknown")
    return ok(f"terminate: {', '.join(stopped)}")


@handler("terminate")
async def terminate(state: ControlState, signal: Any = None, task_id: Any = (), **_: Any) -> Any:
    return await revoke(state, task_id=task_id, terminate=True, signal=signal)


@handler("rate_limit")
async def rate_limit(
    state: ControlState, task_name: str = "", rate_limit: Any = None, **_: Any
) -> Any:
    try:
        per_second = parse_rate(rate_limit)
    except ImproperlyConfigured as exc:
        return nok(f"Invalid rate limit string: {exc}")
    task = state.app.tasks.get(task_name)
    if task is None:
        return nok("unknown task")
    task.rate_limit = rate_limit if per_second else None
    conf = state.app.conf
    # Fresh buckets: the next task of each type reads its (new) rate, as Celery resets them.
    state.consumer.rate_limits = RateLimits(
        conf.task_default_rate_limit, conf.worker_disable_rate_limits
    )
    if not per_second:
        return ok("rate limit disabled successfully")
    return ok("new rate limit set successfully")


@handler("time_limit")
async def time_limit(
    state: ControlState,
    task_name: str = "",
    hard: float | None = None,
    soft: float | None = None,
    **_: Any,
) -> Any:
    task = state.app.tasks.get(task_name)
    if task is None:
        return nok("unknown task")
    task.soft_time_limit = soft
    task.time_limit = hard
    return ok("time limits set successfully")


@handler("shutdown")
async def shutdown(state: ControlState, **_: Any) -> Any:
    # After this reply is sent: the node finishes its batch before the worker stops it.
    state.worker.stop()
    return ok("shutting down")


async def _resize(state: ControlState, by: int) -> dict[str, Any]:
    pool, consumer, worker = state.pool, state.consumer, state.worker
    wanted = pool.concurrency + by
    if wanted < 1:
        return nok("the pool cannot shrink below one")
    per_slot = max(1, consumer.prefetch // max(1, pool.concurrency))
    try:
        size = pool.resize(wanted)
    except ImproperlyConfigured as exc:
        return nok(str(exc))
    worker.concurrency = size
    consumer.prefetch = per_slot * size
    return ok("pool will grow" if by > 0 else "pool will shrink")


@handler("pool_grow")
async def pool_grow(state: ControlState, n: Any = 1, **_: Any) -> Any:
    return await _resize(state, int(n))


@handler("pool_shrink")
async def pool_shrink(state: ControlState, n: Any = 1, **_: Any) -> Any:
    return await _resize(state, -int(n))


@handler("add_consumer")
async def add_consumer(
    state: ControlState,
    queue: str = "",
    exchange: str | None = None,
    exchange_type: str | None = None,
    routing_key: str | None = None,
    **_: Any,
) -> Any:
    consumer = state.consumer
    if any(q.name == queue for q in consumer.consumer.queues):
        return ok(f"already consuming from {queue}")
    known = state.app.router.queues.get(queue)
    if known is not None and exchange is None and routing_key is None:
        new = known
    else:
        exchange_entity = Exchange(exchange or queue, exchange_type or "direct")
        new = Queue(queue, exchange_entity, routing_key or "")
    await state.io(consumer.consumer.add_queue, new)
    consumer.queues.append(new)
    return ok(f"add consumer {queue}")


@handler("cancel_consumer")
async def cancel_consumer(state: ControlState, queue: str = "", **_: Any) -> Any:
    consumer = state.consumer
    consumer.consumer.queues[:] = [q for q in consumer.consumer.queues if q.name != queue]
    consumer.queues[:] = [q for q in consumer.queues if q.name != queue]
    return ok(f"no longer consuming from {queue}")


@handler("enable_events")
async def enable_events(state: ControlState, **_: Any) -> Any:
    events = state.consumer.events
    if events.task_events:
        return ok("task events already enabled")
    events.enable_task_events()
    return ok("task events enabled")


@handler("disable_events")
async def disable_events(state: ControlState, **_: Any) -> Any:
    events = state.consumer.events
    if not events.task_events:
        return ok("task events already disabled")
    events.disable_task_events()
    return ok("task events disabled")
