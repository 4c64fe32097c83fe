"""A worker's events: heartbeats always, task events when asked for (``-E``).

``WorkerEvents`` lives on the worker's event loop. The consumer calls its hooks as tasks
are received, handed to the pool and finished; each hook only buffers an event (nothing
waits for the broker), and a background flush publishes what accumulated in one broker
call. With task events off the hooks return after one flag check.

Where the events come from, for every pool (prefork included): the pool reports each
outcome to the consumer on the loop, so ``task_finished`` sees them all in the main
process. ``task-started`` is sent when the pool starts the job: the pool starts jobs in the
order they were submitted, so every submitted job beyond those still waiting in the pool's
queue has started (checked on each submit and each finish).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celeriac import states
from celeriac.app.protocol import saferepr
from celeriac.events.dispatcher import EventDispatcher
from celeriac.events.event import HEARTBEAT_INTERVAL, load_average, software_info

if TYPE_CHECKING:
    from celeriac.app.base import Celery
    from celeriac.messaging.connection import Connection
    from celeriac.worker.job import ExceptionInfo, Outcome
    from celeriac.worker.pools.base import Pool
    from celeriac.worker.request import Request

logger = logging.getLogger("celeriac.worker")

#: While events keep coming, publish at most this often (seconds)...
FLUSH_INTERVAL = 0.05
#: ...unless this many are waiting.
FLUSH_SIZE = 1000
#: Longest pause between attempts while the broker refuses events.
RETRY_MAX_PAUSE = 2.0
#: Longest wait for the last events (worker-offline) at shutdown.
STOP_TIMEOUT = 5.0


class WorkerEvents:
    """The events of one worker.

    Args:
        app: The worker's app (event settings, the shared Lamport clock).
        pool: The execution pool (for ``active`` and for when jobs start).
        hostname: The worker's node name.
        processed: Returns how many tasks the worker has finished.
        task_events: Send task events (``-E``, ``worker_send_task_events``).
        heartbeat_interval: Seconds between ``worker-heartbeat`` events.
        connection: The connection to publish on; by default one of its own, opened on
            the first event and closed by ``stop`` (as Celery's worker does: event traffic
            never waits behind the consumer's fetches and acks).
    """

    def __init__(
        self,
        app: Celery,
        pool: Pool,
        hostname: str,
        processed: Callable[[], int],
        task_events: bool = False,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        connection: Connection | None = None,
    ) -> None:
        self._owns_connection = connection is None
        self.connection = connection or app.connection()
        self.dispatcher = EventDispatcher(
            self.connection,
            hostname,
            exchange=app.conf.event_exchange,
            serializer=app.conf.event_serializer,
            clock=app.clock,
        )
        self.pool = pool
        self.processed = processed
        self.task_events = task_events
        self.heartbeat_interval = heartbeat_interval
        #: Requests handed to the pool and not yet announced as started, oldest first
        #: (by ``id()``: a request is alive while it is here).
        self._submitted: dict[int, Request] = {}
        self._flushing: asyncio.Task[None] | None = None
        self._more = asyncio.Event()
        self._heartbeat: asyncio.TimerHandle | None = None
        self._stopping = False
        self._failing = False

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Send ``worker-online`` (published before this returns) and start heartbeats."""
        self._worker_event("worker-online")
        await self._drain(STOP_TIMEOUT)
        self._schedule_heartbeat()

    async def stop(self) -> None:
        """Stop heartbeats, send ``worker-offline`` and publish what is left (bounded wait)."""
        self._stopping = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        self._worker_event("worker-offline")
        await self._drain(STOP_TIMEOUT)
        if self._owns_connection:
            await self.connection.arun(self.connection.close)

    def heartbeat(self) -> None:
        """Send a ``worker-heartbeat`` now (Celery's ``heartbeat`` control command: a
        monitor that just started asks for one so it need not wait for the next beat)."""
        if not self._stopping:
            self._worker_event("worker-heartbeat")

    def enable_task_events(self) -> None:
        """Send task events from now on (the ``enable_events`` control command)."""
        self.task_events = True

    def disable_task_events(self) -> None:
        """Stop sending task events (heartbeats go on)."""
        self.task_events = False
        self._submitted.clear()

    def _schedule_heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        self._heartbeat = loop.call_later(self.heartbeat_interval, self._beat)

    def _beat(self) -> None:
        if self._stopping:
            return
        self._worker_event("worker-heartbeat")
        self._schedule_heartbeat()

    def _worker_event(self, event_type: str) -> None:
        self._emit(
            event_type,
            freq=self.heartbeat_interval,
            active=self.pool.active,
            processed=self.processed(),
            loadavg=load_average(),
            **software_info(),
        )

    # -- task hooks (called by the consumer, on the loop) --------------------------------
    def task_received(self, request: Request) -> None:
        """A task message was accepted (before any ETA wait)."""
        if not self.task_events:
            return
        info = request.info
        self._emit(
            "task-received",
            uuid=request.id,
            name=request.name,
            args=info.headers.get("argsrepr") or saferepr(tuple(info.args)),
            kwargs=info.headers.get("kwargsrepr") or saferepr(info.kwargs),
            root_id=info.root_id,
            parent_id=info.parent_id,
            retries=info.retries,
            eta=info.eta.isoformat() if info.eta else None,
            expires=info.expires.isoformat() if info.expires else None,
        )

    def task_submitted(self, request: Request) -> None:
        """``request``'s job was handed to the pool (it starts when a slot is free)."""
        if not self.task_events:
            return
        self._submitted[id(request)] = request
        self._announce_started()

    def task_finished(self, request: Request, outcome: Outcome, terminating: bool) -> None:
        """The pool reported ``outcome``; ``terminating``: a cold shutdown is under way."""
        if not self.task_events:
            return
        # Normally announced already. Still waiting: dropped from the pool's queue unrun
        # (revoked, a cold stop), or task events were turned on while it waited.
        waited = self._submitted.pop(id(request), None) is not None
        if waited and not outcome.worker_lost and outcome.state != states.REVOKED:
            self._emit("task-started", uuid=request.id)
        event = _outcome_event(request, outcome, terminating)
        if event is not None:
            self._emit(event[0], uuid=request.id, **event[1])
        # The pool gave this job's slot to the next one before telling us it finished.
        if not (outcome.worker_lost and terminating):  # a cold stop empties the pool's queue
            self._announce_started()

    def task_revoked(
        self,
        task_id: str,
        terminated: bool = False,
        signum: int | None = None,
        expired: bool = False,
    ) -> None:
        """The task will not run (or was stopped): expired, or revoked by a user."""
        if self.task_events:
            self._emit(
                "task-revoked", uuid=task_id, terminated=terminated, signum=signum, expired=expired
            )

    def task_rejected(self, task_id: str, requeue: bool) -> None:
        """The task's message was rejected (requeued or dead-lettered) without running."""
        if self.task_events:
            self._emit("task-rejected", uuid=task_id, requeue=requeue)

    def _announce_started(self) -> None:
        # The pool starts jobs in submission order: those beyond its queue have started.
        submitted = self._submitted
        while len(submitted) > self.pool.queued:
            oldest = next(iter(submitted))
            self._emit("task-started", uuid=submitted.pop(oldest).id)

    # -- publishing -----------------------------------------------------------------------
    def _emit(self, event_type: str, **fields: Any) -> None:
        self.dispatcher.put(event_type, **fields)
        if self._flushing is None:
            self._flushing = asyncio.ensure_future(self._flush_loop())
        elif self.dispatcher.buffered >= FLUSH_SIZE:
            self._more.set()

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        pause = 0.0
        try:
            while self.dispatcher.buffered:
                began = loop.time()
                try:
                    await self.dispatcher.aflush()
                except Exception as exc:
                    pause = self._failed(exc, pause)
                    await asyncio.sleep(pause)
                    continue
                if self._failing:
                    self._failing = False
                    logger.warning("Sending events again")
                pause = 0.0
                # More came while publishing: gather a batch rather than send each trickle.
                rest = FLUSH_INTERVAL - (loop.time() - began)
                if rest > 0 and not self._stopping and self.dispatcher.buffered < FLUSH_SIZE:
                    self._more.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._more.wait(), rest)
        finally:
            self._flushing = None

    def _failed(self, exc: Exception, pause: float) -> float:
        if not self._failing:
            self._failing = True
            logger.warning(
                "Cannot send events (%s: %s); keeping them and trying again",
                type(exc).__name__,
                exc,
            )
        return min(max(pause * 2, 0.1), RETRY_MAX_PAUSE)

    async def _drain(self, timeout: float) -> None:
        """Wait until everything buffered is published, at most ``timeout`` seconds."""
        self._more.set()
        flushing = self._flushing
        if flushing is None and self.dispatcher.buffered:
            flushing = self._flushing = asyncio.ensure_future(self._flush_loop())
        if flushing is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(flushing), timeout)
        except TimeoutError:
            flushing.cancel()
            logger.warning("Gave up sending %d event(s)", self.dispatcher.buffered)


def _outcome_event(
    request: Request, outcome: Outcome, terminating: bool
) -> tuple[str, dict[str, Any]] | None:
    """The event type and fields that report ``outcome`` (None: nothing to report)."""
    state = outcome.state
    if outcome.worker_lost and request.acks_late:
        if terminating:
            return None  # left unacked on purpose: it runs again elsewhere
        if request.reject_on_worker_lost:
            return "task-rejected", {"requeue": True}
    if state == states.SUCCESS:
        return "task-succeeded", {"result": saferepr(outcome.result), "runtime": outcome.runtime}
    if state in (states.FAILURE, states.RETRY) and outcome.error is not None:
        kind = "task-failed" if state == states.FAILURE else "task-retried"
        return kind, {"exception": describe(outcome.error), "traceback": outcome.error.traceback}
    if state == states.REJECTED:
        return "task-rejected", {"requeue": outcome.requeue}
    return None


def describe(info: ExceptionInfo) -> str:
    """An exception as its repr reads: ``ValueError('boom')``."""
    return f"{info.type}({', '.join(repr(a) for a in info.args)})"
