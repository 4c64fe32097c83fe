"""What a worker does for each remote-control ``control`` command, and what handlers share.

Every name in ``celeriac.control.commands.COMMANDS`` has a handler: the ``control`` kind
here, the ``inspect`` kind in ``celeriac.worker.inspect``; each is registered with its
module's ``registrar``. A handler runs on the worker's event loop, takes the
``ControlState`` and the request's arguments, and returns the reply (Celery's shapes:
``{"ok": ...}`` or ``{"error": ...}`` for commands, plain data for inspections). Blocking
I/O never runs on the loop: result-backend calls go through ``state.io`` (a thread), broker
calls through the connection they belong to (its I/O thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal as signals_module
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from celeriac import states
from celeriac.control.commands import COMMANDS, Kind, to_bool
from celeriac.exceptions import ImproperlyConfigured
from celeriac.messaging.entities import Exchange, Queue
from celeriac.worker.job import Outcome
from celeriac.worker.ratelimit import RateLimits, parse_rate

if TYPE_CHECKING:
    from celeriac.app.base import Celery
    from celeriac.worker.consumer import TaskConsumer
    from celeriac.worker.pools.base import Pool
    from celeriac.worker.worker import Worker

logger = logging.getLogger("celeriac.worker")

P = ParamSpec("P")
T = TypeVar("T")

Handler = Callable[..., Awaitable[Any]]
Registrar = Callable[[str], Callable[[Handler], Handler]]

#: Unready states a revoke may overwrite in the result backend (as Celery's workers do).
REVOCABLE_STATES = frozenset({states.PENDING, states.RECEIVED, states.RETRY, states.REJECTED})


def ok(value: Any) -> dict[str, Any]:
    """A command's success reply."""
    return {"ok": value}


def nok(value: Any) -> dict[str, Any]:
    """A command's failure reply."""
    return {"error": value}


def registrar(kind: Kind, registry: dict[str, Handler]) -> Registrar:
    """A decorator factory adding handlers of ``kind`` commands to ``registry``."""

    def handler(name: str) -> Callable[[Handler], Handler]:
        spec = COMMANDS.get(name)
        if spec is None or spec.kind != kind:
            raise ImproperlyConfigured(f"{name!r} is not a remote-control {kind} command")

        def register(fn: Handler) -> Handler:
            registry[name] = fn
            return fn

        return register

    return handler


CONTROL_HANDLERS: dict[str, Handler] = {}
handler = registrar("control", CONTROL_HANDLERS)


@dataclass
class ControlState:
    """What handlers work with: the worker, its parts, and a way to do blocking I/O."""

    worker: Worker
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
        """Run a blocking call (the result backend's) in a thread, off the event loop."""
        return await asyncio.to_thread(fn, *args, **kwargs)


def running_ids(state: ControlState) -> set[str]:
    """The ids of the tasks the pool runs now."""
    return {job.id for job, _ in state.pool.running()}


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
    running = running_ids(state)
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
    await consumer.connection.arun(consumer.consumer.add_queue, new)
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
