"""The worker's event loop side: fetch task messages, hand them to the pool, settle them.

One asyncio loop owns the broker connection. It keeps at most ``prefetch`` requests in
flight (received and not finished; held ETA tasks are counted apart, up to
``worker_eta_hold_limit``), fetches in batches, and acknowledges in batches:

- by default a message is acked when its task starts (Celery's early ack), in batches:
  after the fetch that brought it, with the next fetch, or on their own once the loop
  has waited ``ACK_DELAY`` with its window full (long tasks do not keep theirs pending);
- with ``acks_late`` it is acked when the task finished; a task whose process died is
  requeued (``reject_on_worker_lost``) or recorded as failed with ``WorkerLostError``;
- ``Reject`` requeues or dead-letters; an expired task is marked REVOKED and not run;
- a message that cannot be processed (see ``request.read_request``) is logged once with
  its id and moved to the dead-letter queue; the worker carries on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from celeriac import signals, states
from celeriac.app.trace import record_untraced_end
from celeriac.control.revoked import RevokedSet
from celeriac.events.worker import WorkerEvents
from celeriac.exceptions import TaskRevokedError, WorkerLostError
from celeriac.messaging.consumer import Consumer
from celeriac.messaging.entities import Queue
from celeriac.transports.base import Envelope, Outgoing
from celeriac.utils.exceptions import exception_to_python
from celeriac.worker.job import ExceptionInfo, Outcome
from celeriac.worker.ratelimit import RateLimits
from celeriac.worker.request import BadMessage, Request, read_request

if TYPE_CHECKING:
    from celeriac.app.base import Celery
    from celeriac.messaging.connection import Connection
    from celeriac.messaging.message import Message
    from celeriac.worker.pools.base import Pool

logger = logging.getLogger("celeriac.worker")

#: Longest idle wait before looking at the broker again.
IDLE_WAIT = 1.0
#: Longest wait of pending acks for a fetch to ride on, once the loop is idle.
ACK_DELAY = 0.01
#: The consumer window changes in steps of at least this many messages.
MIN_WINDOW_STEP = 16
#: First and longest pause before fetching again after the broker connection failed.
RECONNECT_FIRST_PAUSE = 0.1
RECONNECT_MAX_PAUSE = 2.0
#: ETA tasks returned to the broker come back this many seconds before they are due.
ETA_MARGIN = 2.0


class TaskConsumer:
    """Consumes ``queues`` for one worker and runs their tasks in ``pool``."""

    def __init__(
        self,
        app: Celery,
        pool: Pool,
        queues: Sequence[Queue],
        hostname: str,
        prefetch: int,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
    ) -> None:
        self.app = app
        self.pool = pool
        self.queues = list(queues)
        self.hostname = hostname
        self.prefetch = max(1, prefetch)
        self.time_limit = time_limit
        self.soft_time_limit = soft_time_limit
        self.rate_limits = RateLimits(
            app.conf.task_default_rate_limit, app.conf.worker_disable_rate_limits
        )
        self.eta_limit = app.conf.worker_eta_hold_limit
        self.eta_max_delay = app.conf.worker_eta_hold_max_delay
        self.connection: Connection = app.connection()
        self.consumer = Consumer(
            self.connection, self.queues, prefetch_count=0, accept=app.conf.accept_content
        )
        self.in_flight = 0
        self.processed = 0
        self.events = WorkerEvents(app, pool, hostname, lambda: self.processed)
        self.held: dict[str, tuple[Request, asyncio.TimerHandle]] = {}
        #: For remote control: ids not to run, the requests given to the pool (by id) and
        #: how many tasks of each name were given to it.
        self.revoked = RevokedSet()
        self.requests: dict[str, Request] = {}
        self.totals: Counter[str] = Counter()
        self._acks: list[Message] = []
        self._requeues: list[Message] = []
        self._rejects: list[Message] = []
        self._defers: list[tuple[Message, float]] = []
        #: Ids of requests given to the pool that have not started yet (their messages are
        #: not acked until they start).
        self._unstarted: set[str] = set()
        #: Set when a slot frees or a stop is asked for; the idle step waits on it.
        self._changed = False
        self._wakeup: asyncio.Future[None] | None = None
        self._stopping = False
        #: Set by a cold shutdown: the pool is being terminated on purpose.
        self.terminating = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- the loop -------------------------------------------------------------------------
    async def start(self) -> None:
        """Declare the queues and start consuming."""
        await self.connection.arun(self.consumer.consume)
        await self._retune_window()

    def _wanted_window(self) -> int:
        """Unacked messages this worker may hold: its prefetch for running tasks, as many
        again for acks not yet sent, and the held (ETA, rate-limited) tasks; in steps, so
        a push transport (AMQP, whose consumer restarts on a change) is re-told rarely."""
        step = max(self.prefetch, MIN_WINDOW_STEP)
        wanted = 2 * self.prefetch + len(self.held)
        return -(-wanted // step) * step

    async def _retune_window(self) -> None:
        """Tell the consumer (and a push transport, through ``qos``) the window it needs."""
        wanted = self._wanted_window()
        if wanted != self.consumer.prefetch_count:
            await self.connection.arun(self.consumer.qos, wanted)

    async def run(self) -> None:
        """Fetch and dispatch until ``stop`` is called.

        A lost broker connection is not fatal: the worker says so once, tries again with a
        growing pause (at most ``RECONNECT_MAX_PAUSE``, so it resumes within seconds of the
        broker coming back) and says when it is consuming again.
        """
        recoverable = self.connection.transport_cls.recoverable_errors
        pause = 0.0
        while not self._stopping:
            try:
                await self._step()
            except recoverable as exc:
                if not pause:
                    logger.warning(
                        "Lost the broker connection (%s: %s); trying again",
                        type(exc).__name__,
                        exc,
                    )
                pause = min(max(pause * 2, RECONNECT_FIRST_PAUSE), RECONNECT_MAX_PAUSE)
                await asyncio.sleep(pause)
                continue
            except Exception:
                # A bug here must not stop the worker from fetching: log and go on.
                logger.exception("Error in the worker's fetch loop; continuing")
                await asyncio.sleep(IDLE_WAIT)
                continue
            if pause:
                logger.warning("Consuming again after the broker connection came back")
                pause = 0.0

    async def _step(self) -> None:
        room = self.prefetch - self.in_flight
        # Refill at a low-water mark, not slot by slot: a fetch costs a broker round trip
        # whatever its size, so batches should be large.
        refill = room > 0 and (room * 2 >= self.prefetch or self.in_flight == 0)
        messages: list[Message] = []
        if refill:
            acks, self._acks = self._acks, []
            try:
                messages = await self.consumer.afetch(room, ack=acks)
            except BaseException:
                self._acks[:0] = acks  # not settled: they ride on the next attempt
                raise
        for message in messages:
            self._receive(message)
        if messages:
            await self._retune_window()
        # Acks wait for the next fetch to ride along, unless this step fetched.
        await self.flush(acks=refill)
        if messages:
            return
        if self._stopping:  # a stop that came while fetching must not wait a period
            return
        if self._acks and not refill:
            # The window is full: no fetch may come soon for the acks to ride on.
            if await self._idle(refill, ACK_DELAY):
                return
            await self.flush()
        await self._idle(refill)

    async def _idle(self, refill: bool, timeout: float = IDLE_WAIT) -> bool:
        """Wait until a slot frees (``_changed``), the broker may have messages (when
        there is room for them), or ``timeout`` passed; False when it passed.

        One future that each of these resolves, rather than a task per source and
        ``asyncio.wait``: a worker waiting for the next message wakes in fewer loop turns.
        """
        if self._changed:
            self._changed = False
            return True
        loop = asyncio.get_running_loop()
        wakeup: asyncio.Future[None] = loop.create_future()
        self._wakeup = wakeup
        ready: asyncio.Future[None] | None = None
        if refill:
            ready = asyncio.ensure_future(self.connection.transport.await_ready(IDLE_WAIT))
            ready.add_done_callback(lambda _ready: _resolve(wakeup))
        timed_out: list[bool] = []
        timer = loop.call_later(timeout, _time_out, wakeup, timed_out)
        try:
            await wakeup
            return not timed_out
        finally:
            timer.cancel()
            self._wakeup = None
            self._changed = False
            if ready is not None and not ready.done():
                ready.cancel()
                # Let the cancelled wait clean up now: a transport that watches a file
                # descriptor (SQLite's wake socket) must remove its reader before the next
                # wait adds one, or the late removal takes the new reader away (a missed
                # wake-up: a 1 s stall).
                await asyncio.gather(ready, return_exceptions=True)

    def _poke(self) -> None:
        """Something changed (a slot freed, a stop): an idle step looks again."""
        self._changed = True
        if self._wakeup is not None:
            _resolve(self._wakeup)

    def stop(self) -> None:
        """Stop fetching (running tasks go on)."""
        self._stopping = True
        self._poke()

    async def flush(self, acks: bool = True) -> None:
        """Send the pending batched settlements (acks too unless ``acks`` is False)."""
        # What a failed broker call did not settle goes back to be sent next time
        # (``asettle_many`` skips messages it settled before failing).
        if self._defers:
            defers, self._defers = self._defers, []
            try:
                await self.consumer.adefer_many(defers)
            except BaseException:
                self._defers[:0] = [d for d in defers if not d[0].acknowledged]
                raise
        if (acks and self._acks) or self._requeues or self._rejects:
            pending_acks: list[Message] = []
            if acks:
                pending_acks, self._acks = self._acks, []
            requeues, self._requeues = self._requeues, []
            rejects, self._rejects = self._rejects, []
            try:
                await self.consumer.asettle_many(pending_acks, requeues, rejects)
            except BaseException:
                self._acks[:0] = pending_acks
                self._requeues[:0] = requeues
                self._rejects[:0] = rejects
                raise

    async def shutdown(self) -> None:
        """Return held (ETA and rate-limited) tasks to the broker and close the connection."""
        self.stop()
        now = datetime.now(UTC)
        for request, timer in list(self.held.values()):
            timer.cancel()
            self._return_held(request, request.eta_delay(now))
        self.held.clear()
        await self.flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.flush()
        await self.connection.arun(self.connection.close)

    # -- receiving ------------------------------------------------------------------------
    def _receive(self, message: Message) -> None:
        try:
            request = read_request(
                self.app, message, self.hostname, self.time_limit, self.soft_time_limit
            )
        except BadMessage as bad:
            self._spawn(self._dead_letter(message, bad))
            return
        logger.info("Task %s[%s] received", request.name, request.id)
        signals.task_received.send(sender=self, request=request)
        now = datetime.now(UTC)
        expired = request.expired(now)
        if expired or request.id in self.revoked:
            self._spawn(self._revoke(request, expired=expired))
            return
        self.events.task_received(request)
        delay = request.eta_delay(now)
        if delay > 0:
            self._hold(request, delay)
            return
        self.in_flight += 1
        self._admit(request)

    def _return_held(self, request: Request, delay: float) -> None:
        """Give a held message back to the broker, hidden until shortly before it is due."""
        if delay > ETA_MARGIN:
            self._defers.append((request.message, time.time() + delay - ETA_MARGIN))
        else:
            self._requeues.append(request.message)

    def _hold(self, request: Request, delay: float) -> None:
        """Keep ``request`` (unacked) until ``delay`` seconds pass, then admit it.

        Beyond ``worker_eta_hold_limit`` held tasks, or when it is due later than
        ``worker_eta_hold_max_delay``, a task not due within ``ETA_MARGIN`` goes back to the
        broker, hidden until shortly before it is due: memory stays bounded, tasks that are
        due keep flowing, and no message is held unacked for long (which RabbitMQ punishes).
        """
        if delay > ETA_MARGIN and (len(self.held) >= self.eta_limit or delay > self.eta_max_delay):
            self._return_held(request, delay)
            return

        def due() -> None:
            self.held.pop(request.id, None)
            self.in_flight += 1
            self._admit(request)
            self._poke()

        timer = asyncio.get_running_loop().call_later(delay, due)
        self.held[request.id] = (request, timer)

    def _admit(self, request: Request) -> None:
        """Start ``request`` now, or later when its task's rate limit says so."""
        expired = request.expired(datetime.now(UTC))  # it may have expired while held
        if expired or request.id in self.revoked:  # ...or been revoked
            self.in_flight -= 1
            self._spawn(self._revoke(request, expired=expired))
            return
        wait = self.rate_limits.delay(request.task.name, request.task.rate_limit)
        if wait > 0:
            # Held like an ETA task, so a shutdown returns it to the broker.
            self.in_flight -= 1
            self._hold(request, wait)
            return
        self.requests[request.id] = request
        self.totals[request.task.name] += 1
        self._unstarted.add(request.id)
        future = self.pool.submit(request.job, lambda: self._started(request))
        self.events.task_submitted(request)
        future.add_done_callback(lambda f: self._finished(request, f.result()))

    def _started(self, request: Request) -> None:
        """The pool starts the job now: without ``acks_late`` its message is acked here,
        as Celery does (just before the task runs), so a worker killed while tasks wait in
        its pool loses none of them: they were never acked."""
        self._unstarted.discard(request.id)
        if not request.acks_late:
            self._acks.append(request.message)
            if len(self._acks) == 1 and self._wakeup is not None:
                self._poke()  # an idle step sees the ack pending (``ACK_DELAY``)

    def revoke_held(self, task_id: str) -> bool:
        """Drop a held (ETA or rate-limited) task that was revoked; False if not held."""
        held = self.held.pop(task_id, None)
        if held is None:
            return False
        request, timer = held
        timer.cancel()
        self._spawn(self._revoke(request))
        return True

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- finishing ------------------------------------------------------------------------
    def _finished(self, request: Request, outcome: Outcome) -> None:
        """Settle a finished task; runs as the pool's callback, on the loop, without I/O.

        Acks and requeues are batched and sent by the fetch loop; only a failure the tracer
        could not store (a killed process, a time limit) needs a coroutine.
        """
        self.events.task_finished(request, outcome, self.terminating)
        self.requests.pop(request.id, None)
        if request.id in self._unstarted:
            self._unstarted.discard(request.id)
            if outcome.worker_lost and self.terminating:
                # Never started, stopped by a cold shutdown: left unacked for redelivery.
                logger.info("Task %s[%s] not started; left to the broker", request.name, request.id)
                self._done()
                return
        signum = self.revoked.pop_terminated(request.id)
        try:
            if outcome.state == states.REVOKED or (signum is not None and outcome.worker_lost):
                self._spawn(self._revoke_finished(request, signum))
                return
            if self._must_record(request, outcome):
                self._spawn(self._record_then_settle(request, outcome))
                return
            self._settle(request, outcome)
            self._log(request, outcome)
        except Exception:
            logger.exception("Settling task %s[%s] failed", request.name, request.id)
        self._done()

    def _done(self) -> None:
        self.in_flight -= 1
        self.processed += 1
        if self._step_would_act():
            self._poke()

    def _step_would_act(self) -> bool:
        """Whether a freed slot is worth waking the idle step for: a refill is due (half
        the window free, or nothing in flight), or settlements that do not ride on a
        fetch (requeues, rejects, deferrals) wait. Waking it for every finished task
        would cost a loop turn per task for nothing."""
        room = self.prefetch - self.in_flight
        if room * 2 >= self.prefetch or self.in_flight == 0:
            return True
        return bool(self._requeues or self._rejects or self._defers)

    def _must_record(self, request: Request, outcome: Outcome) -> bool:
        if outcome.state != states.FAILURE or outcome.recorded:
            return False
        if outcome.worker_lost and request.acks_late:
            # A cold shutdown leaves the message for redelivery; reject_on_worker_lost
            # requeues it: either way the task will run again and nothing is recorded.
            return not (self.terminating or request.reject_on_worker_lost)
        return True

    async def _record_then_settle(self, request: Request, outcome: Outcome) -> None:
        try:
            await self._record_failure(request, outcome)
            self._settle(request, outcome)
            self._log(request, outcome)
        except Exception:
            logger.exception("Settling task %s[%s] failed", request.name, request.id)
        finally:
            self._done()

    def _settle(self, request: Request, outcome: Outcome) -> None:
        message = request.message
        if outcome.worker_lost and request.acks_late:
            if self.terminating:
                return  # Stopped by a cold shutdown: left unacked, the broker redelivers it.
            if request.reject_on_worker_lost:
                self._requeues.append(message)
                return
        if outcome.state == states.REJECTED:
            # Without acks_late the message was acked when the task started (as in
            # Celery): there is nothing left to reject.
            if request.acks_late:
                (self._requeues if outcome.requeue else self._rejects).append(message)
            return
        if request.acks_late:
            self._acks.append(message)

    async def _record_failure(self, request: Request, outcome: Outcome) -> None:
        """Record a failure the tracer could not (its process was killed, a time limit):
        stored, and told to its chord, chain and errbacks, in a thread (blocking I/O)."""
        info = outcome.error
        exc = _rebuild(info) if info is not None else WorkerLostError("worker lost")
        traceback = info.traceback if info is not None else None
        await asyncio.to_thread(
            record_untraced_end,
            self.app,
            request.task,
            request.job,
            states.FAILURE,
            exc,
            traceback,
            self.hostname,
        )

    async def _revoke(
        self, request: Request, *, expired: bool = False, signum: int | None = None
    ) -> None:
        """Record a task that will not run (expired, revoked) or was stopped (``signum``)
        as REVOKED, and ack its message."""
        reason = "expired" if expired else "revoked" if signum is None else "terminated"
        logger.info("Discarding %s task %s[%s]", reason, request.name, request.id)
        self.events.task_revoked(request.id, signum is not None, signum, expired)
        await asyncio.to_thread(
            record_untraced_end,
            self.app,
            request.task,
            request.job,
            states.REVOKED,
            TaskRevokedError(reason),
        )
        signals.task_revoked.send(
            sender=request.task,
            request=request,
            terminated=signum is not None,
            signum=signum,
            expired=expired,
        )
        message = request.message
        if not message.acknowledged and message not in self._acks:
            self._acks.append(message)

    async def _revoke_finished(self, request: Request, signum: int | None) -> None:
        """``_revoke`` for a task the pool had: dropped before it started, or stopped."""
        try:
            await self._revoke(request, signum=signum)
        except Exception:
            logger.exception("Settling revoked task %s[%s] failed", request.name, request.id)
        finally:
            self._done()

    async def _dead_letter(self, message: Message, bad: BadMessage) -> None:
        queue_name = self.app.conf.task_dead_letter_queue
        ident = message.headers.get("id") or message.properties.correlation_id
        logger.error(
            "Rejecting message %s (%s): %s; moved to dead-letter queue %r",
            ident,
            bad.kind,
            bad.reason,
            queue_name,
        )
        headers = dict(message.headers)
        headers.update(
            {
                "x-celeriac-dead-letter-reason": bad.reason,
                "x-celeriac-dead-letter-kind": bad.kind,
                "x-celeriac-original-queue": message.delivery_info["queue"],
            }
        )
        envelope = Envelope(message.body, headers, message.properties)
        conn = self.connection

        def move() -> None:
            conn.declare(Queue(queue_name))
            conn.transport.publish([Outgoing(envelope, "", queue_name)])

        await conn.arun(move)
        self._acks.append(message)

    def _log(self, request: Request, outcome: Outcome) -> None:
        if outcome.state == states.SUCCESS:
            logger.info(
                "Task %s[%s] succeeded in %.4fs: %r",
                request.name,
                request.id,
                outcome.runtime,
                outcome.result,
            )
        elif outcome.state == states.RETRY and outcome.error is not None:
            logger.info("Task %s[%s] retry: %s", request.name, request.id, _describe(outcome))
        elif outcome.state == states.FAILURE and outcome.error is not None:
            logger.error(
                "Task %s[%s] raised unexpected: %s\n%s",
                request.name,
                request.id,
                _describe(outcome),
                outcome.error.traceback,
            )
        elif outcome.state == states.REJECTED:
            logger.warning(
                "Task %s[%s] rejected (requeue=%s)", request.name, request.id, outcome.requeue
            )


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _time_out(future: asyncio.Future[None], timed_out: list[bool]) -> None:
    if not future.done():
        timed_out.append(True)
        future.set_result(None)


def _describe(outcome: Outcome) -> str:
    info = outcome.error
    if info is None:
        return ""
    args = ", ".join(repr(a) for a in info.args)
    return f"{info.type}({args})"


def _rebuild(info: ExceptionInfo) -> BaseException:
    """The exception a pool reported: carried as is, or rebuilt as a stored one would be."""
    if info.exception is not None:
        return info.exception
    stored = {"exc_type": info.type, "exc_module": info.module, "exc_message": list(info.args)}
    rebuilt = exception_to_python(stored)
    assert rebuilt is not None  # a dict naming a type always rebuilds to something
    return rebuilt
