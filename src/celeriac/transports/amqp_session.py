"""The network side of the ``amqp://`` transport: one thread running one pika I/O loop.

Everything that touches pika runs on this thread. Other threads hand it work with ``post``
(fire and forget, in order) or ``call`` (wait for the broker's answer). Posting is cheap:
commands go into a deque and the loop is woken only when it was idle, so a burst of
publishes or acks costs one wake-up, not one each.

The session keeps three channels on the connection:

- ``main``: consumers, ``basic.get``, acks, publishes and the topology. Its deliveries share
  one tag sequence, which is what makes ``multiple=True`` acks possible. It is always in
  confirm mode: a publish waits for its confirm only when asked to, but the confirms are
  also the one sure sign that the queues have taken our publishes. RabbitMQ answers a
  queue's message count (``stat``) ahead of the deliveries still in its mailbox, so
  ``queue_length`` first waits for our publishes' confirms (``when_confirmed``).
- ``probe``: passive declares that may fail (does this exchange exist?). A 404 closes a
  channel, and it must not be the one holding our consumers and their unacked messages.

A lost connection fails every waiting call with ``ConnectionError``, tells the transport
(its deliveries are void: the broker redelivers them) and reconnects with a growing pause
(at most ``MAX_BACKOFF``). After connecting, the transport restores its topology and
consumers (``Listener.restore``) before the session reports itself ready again.

The session logs in one line each that the connection was lost, that reconnecting fails
(again once a minute while it does) and that it reconnected; pika's own lines about the
same are quieted unless the user configured pika's logger (see ``amqp_logs``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

import pika
from pika.adapters.select_connection import IOLoop, SelectConnection
from pika.channel import Channel
from pika.exceptions import ChannelClosedByBroker, ConnectionClosedByBroker

from celeriac.exceptions import ImproperlyConfigured, NotFound, OperationalError
from celeriac.transports.amqp_logs import failure_reason, quiet_pika

logger = logging.getLogger(__name__)

#: First and longest pause between reconnection attempts, in seconds.
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 1.0
#: Longest wait for the session to be ready (a channel being reopened, a reconnection)
#: before a call fails with ConnectionError and leaves it to the caller's retry policy.
READY_WAIT = 2.0
#: While reconnecting fails, how often (seconds) the session says so again.
FAILING_LOG_EVERY = 60.0

Done = Callable[[Any], None]
ChannelOp = Callable[[Channel], None]

quiet_pika()


class Listener(Protocol):
    """What the session tells its transport (called on the network thread)."""

    def lost(self, epoch: int) -> None:
        """The main channel of ``epoch`` is gone; its deliveries are void."""

    def restore(self, session: Session) -> None:
        """Issue the declarations and consumers a new main channel needs (RPCs, in order)."""


def channel_error(reason: BaseException) -> Exception:
    """The celeriac exception for why the broker closed a channel or connection."""
    if isinstance(reason, ChannelClosedByBroker | ConnectionClosedByBroker):
        code, text = reason.reply_code, reason.reply_text
        if code == 404:
            return NotFound(text)
        if code == 406:
            return ImproperlyConfigured(f"RabbitMQ refused it: {text}")
        if isinstance(reason, ChannelClosedByBroker):
            return OperationalError(f"RabbitMQ closed the channel: ({code}) {text}")
    return ConnectionError(f"lost the RabbitMQ connection: {reason!r}")


class _Batch:
    """Publishes waiting for the broker's confirms; the future resolves when all are in."""

    __slots__ = ("failed", "future", "remaining")

    def __init__(self, future: Future[None], count: int) -> None:
        self.future = future
        self.remaining = count
        self.failed = False

    def settle(self, ok: bool) -> None:
        self.remaining -= 1
        self.failed = self.failed or not ok
        if self.remaining == 0 and not self.future.done():
            if self.failed:
                self.future.set_exception(
                    ConnectionError("RabbitMQ did not take a message (basic.nack)")
                )
            else:
                self.future.set_result(None)


class SessionChannel:
    """One channel of the session, opened on demand and again after the broker closed it.

    Attributes:
        confirm: Whether the channel is in confirm mode.
        seq: Publish sequence number of the last publish (confirm mode).
    """

    def __init__(self, session: Session, name: str, confirm: bool) -> None:
        self.session = session
        self.name = name
        self.confirm = confirm
        self.channel: Channel | None = None
        self._opening = False
        self._waiting: list[ChannelOp] = []
        self.pending: set[Future[Any]] = set()
        # Publish sequence numbers not confirmed yet, in order, with the batch waiting on
        # each (None: nobody waits for that publish).
        self.unconfirmed: OrderedDict[int, _Batch | None] = OrderedDict()
        self._barriers: list[tuple[int, Callable[[], None]]] = []
        self.seq = 0

    def run(self, op: ChannelOp) -> None:
        """Run ``op(channel)`` now if the channel is open, else once it is."""
        channel = self.channel
        if channel is not None and channel.is_open:
            op(channel)
            return
        self._waiting.append(op)
        self.open()

    def open(self) -> None:
        conn = self.session.connection
        if self._opening or conn is None or not conn.is_open:
            return
        self._opening = True
        conn.channel(on_open_callback=self._opened)

    def _opened(self, channel: Channel) -> None:
        channel.add_on_close_callback(self._closed)
        if self.confirm:
            channel.confirm_delivery(self._on_confirm)
        self.channel, self._opening, self.seq = channel, False, 0
        waiting, self._waiting = self._waiting, []
        for op in waiting:
            op(channel)

    def _closed(self, channel: Channel, reason: BaseException) -> None:
        if channel is not self.channel and self.channel is not None:
            return
        self.channel, self._opening = None, False
        self.fail(channel_error(reason))
        self.session.channel_closed(self, reason)

    def fail(self, exc: BaseException) -> None:
        """Fail every call waiting on this channel (it closed or the connection went)."""
        pending, self.pending = self.pending, set()
        batches, self.unconfirmed = self.unconfirmed, OrderedDict()
        self._barriers = []
        for future in pending:
            if not future.done():
                future.set_exception(exc)
        for batch in batches.values():
            if batch is not None and not batch.future.done():
                batch.future.set_exception(exc)
        waiting, self._waiting = self._waiting, []
        if waiting and not isinstance(exc, ConnectionError):
            # Ops queued behind a failed open: try them on a fresh channel.
            self._waiting = waiting
            self.open()

    def reset(self) -> None:
        """Forget the channel (its connection is gone)."""
        self.channel, self._opening, self._waiting = None, False, []

    def track(self, future: Future[Any]) -> Done:
        """Register ``future`` as waiting on this channel; returns the function that resolves it."""
        self.pending.add(future)

        def done(result: Any) -> None:
            self.pending.discard(future)
            if not future.done():
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

        return done

    def published(self, count: int, future: Future[None] | None) -> None:
        """Count the next ``count`` publishes; ``future`` resolves once all are confirmed."""
        batch = None if future is None else _Batch(future, count)
        first = self.seq + 1
        self.seq += count
        unconfirmed = self.unconfirmed
        for seq in range(first, self.seq + 1):
            unconfirmed[seq] = batch
        if future is not None and count == 0:
            future.set_result(None)

    def when_confirmed(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once every publish made so far is confirmed (at once if they are)."""
        if not self.unconfirmed:
            fn()
        else:
            self._barriers.append((self.seq, fn))

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        ok = isinstance(method, pika.spec.Basic.Ack)
        tag: int = method.delivery_tag
        unconfirmed = self.unconfirmed
        if method.multiple:
            while unconfirmed:
                seq, batch = unconfirmed.popitem(last=False)
                if seq > tag:
                    unconfirmed[seq] = batch
                    unconfirmed.move_to_end(seq, last=False)
                    break
                if batch is not None:
                    batch.settle(ok)
        else:
            batch = unconfirmed.pop(tag, None)
            if batch is not None:
                batch.settle(ok)
        if self._barriers:
            first = next(iter(unconfirmed), None)
            due = [b for b in self._barriers if first is None or b[0] < first]
            self._barriers = [b for b in self._barriers if b not in due]
            for _upto, fn in due:
                fn()


class Session:
    """The connection, its channels and the thread that runs them.

    Attributes:
        epoch: Increases every time the main channel is replaced; deliveries carry it.
        ready: Set while connected and restored.
        failed_attempts: Failed connection attempts since the connection was lost.
    """

    def __init__(self, params: pika.ConnectionParameters, listener: Listener) -> None:
        self.params = params
        self.listener = listener
        self.ioloop = IOLoop()
        self.connection: SelectConnection | None = None
        self.main = SessionChannel(self, "main", True)
        self.probe = SessionChannel(self, "probe", False)
        self.epoch = 0
        self.ready = threading.Event()
        self.closing = False
        self._started: Future[None] = Future()
        self._posted: deque[Callable[[], None]] = deque()
        self._on_ready: list[Callable[[], None]] = []
        self._wake_pending = False
        self._backoff = FIRST_BACKOFF
        #: When the connection was lost (None while connected), and when we last said
        #: that reconnecting fails.
        self._lost_at: float | None = None
        self._failure_logged_at: float | None = None
        self.failed_attempts = 0
        self._thread = threading.Thread(target=self._run, name="celeriac-amqp", daemon=True)

    # -- lifecycle (any thread) -----------------------------------------------------------
    def start(self, timeout: float) -> None:
        """Connect; returns when ready.

        Raises:
            ConnectionError: The broker cannot be reached or refused the login.
        """
        self._thread.start()
        try:
            self._started.result(timeout)
        except TimeoutError:
            self.close(1.0)
            raise ConnectionError(f"no answer from RabbitMQ within {timeout}s") from None
        except BaseException:
            self.close(1.0)
            raise

    def close(self, timeout: float = 10.0) -> None:
        """Flush what was posted, close the connection and stop the thread."""
        if not self._thread.is_alive():
            return
        self.post(self._close_now)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        self._connect()
        try:
            self.ioloop.start()
        finally:
            self.ioloop.close()

    def _close_now(self) -> None:
        self.closing = True
        self.ready.clear()
        conn = self.connection
        if conn is not None and conn.is_open:
            conn.close()
        elif conn is None or conn.is_closed:
            self.ioloop.stop()

    # -- handing work to the loop (any thread) ----------------------------------------------
    def post(self, command: Callable[[], None]) -> None:
        """Run ``command`` on the network thread, after everything posted before it."""
        self._posted.append(command)
        if not self._wake_pending:
            self._wake_pending = True
            self.ioloop.add_callback_threadsafe(self._drain_posted)

    def backlog(self) -> int:
        """Commands posted and not yet run."""
        return len(self._posted)

    def _drain_posted(self) -> None:
        self._wake_pending = False
        posted = self._posted
        while posted:
            command = posted.popleft()
            try:
                command()
            except Exception:
                logger.exception("AMQP command failed on the network thread")

    def wait_ready(self, timeout: float = READY_WAIT) -> None:
        """Return once connected and restored.

        Raises:
            ConnectionError: Still not ready after ``timeout`` seconds (or closed).
        """
        if not self.ready.wait(timeout) or self.closing:
            raise ConnectionError("not connected to RabbitMQ")

    def call(
        self, channel: SessionChannel, op: Callable[[Channel, Done], None], timeout: float = 30.0
    ) -> Any:
        """Run ``op(channel, done)`` on the network thread and wait for ``done(result)``.

        Raises:
            ConnectionError: Not connected, or the connection went while waiting.
            NotFound, ImproperlyConfigured, OperationalError: The broker closed the channel.
        """
        self.wait_ready()
        future: Future[Any] = Future()

        def start() -> None:
            if not self.ready.is_set():
                if self.connected:
                    self._on_ready.append(start)  # a channel is being reopened: soon
                else:
                    future.set_exception(ConnectionError("not connected to RabbitMQ"))
                return
            done = channel.track(future)

            def run(ch: Channel) -> None:
                try:
                    op(ch, done)
                except Exception as exc:
                    done(ConnectionError(f"AMQP call failed: {exc!r}"))

            channel.run(run)

        self.post(start)
        return future.result(timeout)

    # -- connection events (network thread) -------------------------------------------------
    def _connect(self) -> None:
        self.connection = SelectConnection(
            self.params,
            on_open_callback=self._on_open,
            on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_close,
            custom_ioloop=self.ioloop,
        )

    def _on_open(self, _conn: Any) -> None:
        self._backoff = FIRST_BACKOFF
        self.main.run(lambda _ch: self._restore())

    def _restore(self) -> None:
        """Replay the topology and consumers, then report ready once the broker caught up."""
        self.listener.restore(self)
        # Replies come in order: when this one does, every restore call before it is done.
        self.main.run(
            lambda ch: ch.exchange_declare("amq.direct", passive=True, callback=self._restored)
        )

    def _restored(self, _frame: Any) -> None:
        if self._lost_at is not None:
            logger.warning(
                "Reconnected to RabbitMQ at %s after %.1f s",
                self.address,
                time.monotonic() - self._lost_at,
            )
            self._lost_at = self._failure_logged_at = None
            self.failed_attempts = 0
        self.ready.set()
        if not self._started.done():
            self._started.set_result(None)
        waiting, self._on_ready = self._on_ready, []
        for op in waiting:
            op()

    @property
    def address(self) -> str:
        """``host:port`` of the broker, for log lines."""
        return f"{self.params.host}:{self.params.port}"

    @property
    def connected(self) -> bool:
        """True while the connection is open (ready or still restoring)."""
        conn = self.connection
        return conn is not None and conn.is_open and not self.closing

    def when_ready(self, op: Callable[[], None]) -> None:
        """Run ``op`` now if ready, else once the session is connected and restored again."""
        if self.ready.is_set():
            op()
        else:
            self._on_ready.append(op)

    def _on_open_error(self, _conn: Any, error: BaseException) -> None:
        self.connection = None
        reason = failure_reason(error)
        if not self._started.done():
            self._started.set_exception(
                ConnectionError(f"cannot connect to RabbitMQ at {self.address}: {reason}")
            )
            self.ioloop.stop()
            return
        self.failed_attempts += 1
        self._log_failing(reason)
        self._retry_later()

    def _log_failing(self, reason: str) -> None:
        """Say that reconnecting fails: at the first failure, then once a minute."""
        now = time.monotonic()
        lost_at = self._lost_at if self._lost_at is not None else now
        if self._failure_logged_at is None:
            logger.warning(
                "Cannot reconnect to RabbitMQ at %s (%s); trying again every %g s",
                self.address,
                reason,
                MAX_BACKOFF,
            )
        elif now - self._failure_logged_at >= FAILING_LOG_EVERY:
            logger.warning(
                "Still cannot reconnect to RabbitMQ at %s after %.0f s (%s)",
                self.address,
                now - lost_at,
                reason,
            )
        else:
            return
        self._failure_logged_at = now

    def _on_close(self, _conn: Any, reason: BaseException) -> None:
        self.connection = None
        self.ready.clear()
        exc = channel_error(reason)
        if not isinstance(exc, ConnectionError):
            exc = ConnectionError(str(exc))
        for channel in (self.main, self.probe):
            channel.fail(exc)
            channel.reset()
        self._new_epoch()
        if self.closing:
            self.ioloop.stop()
            return
        if not self._started.done():
            self._started.set_exception(exc)
            self.ioloop.stop()
            return
        if self._lost_at is None:
            logger.warning(
                "Lost the RabbitMQ connection to %s (%s); reconnecting",
                self.address,
                failure_reason(reason),
            )
            self._lost_at = time.monotonic()
        else:  # a new connection went before it was restored: one more failed attempt
            self.failed_attempts += 1
            self._log_failing(failure_reason(reason))
        self._retry_later()

    def _retry_later(self) -> None:
        if self.closing:
            self.ioloop.stop()
            return
        delay, self._backoff = self._backoff, min(self._backoff * 2, MAX_BACKOFF)
        self.ioloop.call_later(delay, self._connect)

    def _new_epoch(self) -> None:
        old, self.epoch = self.epoch, self.epoch + 1
        self.listener.lost(old)

    def channel_closed(self, channel: SessionChannel, reason: BaseException) -> None:
        """A channel was closed by the broker; the main one takes its consumers with it."""
        if channel is not self.main or not self.connected:
            return  # a closing connection takes its channels with it: _on_close handles it
        logger.warning("RabbitMQ closed the main channel (%s); reopening it", reason)
        self.ready.clear()
        self._new_epoch()
        self.main.run(lambda _ch: self._restore())
