"""A Redis session's background thread: heartbeats, liveness and wake-ups.

One daemon thread per session (started when the session first holds messages) does three
things on its own connections, so none of them waits behind the transport's calls:

- renews the session's heartbeat every ``heartbeat_interval`` (the ``BEAT`` script);
- stays subscribed to ``alive:<session>``: when the process dies its connections close,
  the subscription vanishes, and other sessions may take its messages back sooner than
  its lease (``connection_lost_timeout``);
- listens on ``wake:<queue>`` for every queue the session consumes and bumps a generation
  counter on each notification. ``wait`` sleeps until the counter moves past what the
  last fetch saw, so a publish between a fetch and a wait is never missed, and an idle
  consumer sleeps in ``select`` at no cost.

A lost connection (Redis restarting) is retried with backoff; after resubscribing, the
counter is bumped, because notifications may have been missed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis

from celeriac.transports.redis_link import CONNECTION_ERRORS

logger = logging.getLogger(__name__)

#: Longest pause between reconnection attempts.
MAX_BACKOFF = 1.0
#: How long a subscription may stay unconfirmed before it is asked for again.
CONFIRM_RETRY = 0.5


class SessionThread:
    """Heartbeats and wake-ups of one session.

    Args:
        pool: Connections for this thread (beats and the subscription).
        alive_channel: The session's liveness channel.
        beat: Renews the heartbeat on the given client; returns False when the session had
            been taken for dead.
        interval: Seconds between heartbeats.
    """

    def __init__(
        self,
        pool: redis.ConnectionPool,
        alive_channel: str,
        beat: Callable[[redis.Redis], bool],
        interval: float,
    ) -> None:
        self._pool = pool
        self._client = redis.Redis(connection_pool=pool)
        self._alive = alive_channel.encode()
        self._beat = beat
        self._interval = interval
        self._cond = threading.Condition()
        self._wanted: set[bytes] = {self._alive}
        self._confirmed: set[bytes] = set()
        self._pubsub: Any = None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._stopped = False
        self._beat_lock = threading.Lock()
        self.generation = 0
        self._thread = threading.Thread(
            target=self._run, name="celeriac-redis-session", daemon=True
        )

    def start(self, timeout: float) -> None:
        """Start the thread and wait until the liveness subscription is in place.

        Raises:
            redis.ConnectionError: Redis could not be reached within ``timeout``.
        """
        self._thread.start()
        self._await_confirmed([self._alive], timeout)

    # -- waiting --------------------------------------------------------------------------
    def watch(self, channels: Iterable[str], timeout: float) -> None:
        """Subscribe to ``channels`` (if not yet) and return once Redis confirmed it.

        Raises:
            redis.ConnectionError: The subscription could not be made within ``timeout``.
        """
        wanted = [c.encode() for c in channels]
        with self._cond:
            if self._wanted.issuperset(wanted) and self._confirmed.issuperset(wanted):
                return
            self._wanted.update(wanted)
        self._await_confirmed(wanted, timeout)

    def watching(self, channels: Iterable[str]) -> bool:
        """True when Redis confirmed a subscription to every channel (``watch`` would not
        wait)."""
        wanted = [c.encode() for c in channels]
        with self._cond:
            return self._confirmed.issuperset(wanted)

    def _await_confirmed(self, channels: list[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                missing = [c for c in channels if c not in self._confirmed]
                pubsub = self._pubsub
            if not missing:
                return
            if time.monotonic() >= deadline or self._stopped:
                raise redis.exceptions.ConnectionError(
                    "could not subscribe to Redis wake-up channels in time"
                )
            if pubsub is not None:
                # Sending while the thread reads is safe (redis-py locks its writes). A
                # reconnection subscribes to everything wanted; asking twice is harmless.
                with contextlib.suppress(Exception):
                    pubsub.subscribe(*missing)
            with self._cond:
                if not self._confirmed.issuperset(missing):
                    self._cond.wait(min(CONFIRM_RETRY, max(0.0, deadline - time.monotonic())))

    def wait(self, seen: int, timeout: float) -> None:
        """Block until ``generation`` differs from ``seen``, or ``timeout`` passed."""
        with self._cond:
            if self.generation == seen:
                self._cond.wait(timeout)

    async def await_change(self, seen: int, timeout: float) -> None:
        """``wait`` for asyncio code, without a thread."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._cond:
            if self.generation != seen:
                return
            self._waiters.append((loop, future))
        try:
            await asyncio.wait([future], timeout=timeout)
        finally:
            with self._cond:
                if (loop, future) in self._waiters:
                    self._waiters.remove((loop, future))

    def bump(self) -> None:
        """Wake every waiter (a notification arrived, or may have been missed)."""
        with self._cond:
            self.generation += 1
            self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits
                loop.call_soon_threadsafe(_resolve, future)

    # -- the thread -----------------------------------------------------------------------
    def stop(self) -> None:
        """Stop beating at once; the thread ends within one heartbeat interval."""
        with self._beat_lock:
            self._stopped = True
        self.bump()

    def _run(self) -> None:
        # The first heartbeat is the transport's own registration; renew one period later.
        next_beat = time.monotonic() + self._interval
        backoff = 0.0
        while not self._stopped:
            now = time.monotonic()
            if now >= next_beat:
                self._renew()
                next_beat = now + self._interval
            try:
                if self._pubsub is None:
                    self._subscribe()
                    backoff = 0.0
                message = self._pubsub.get_message(timeout=max(0.0, next_beat - now))
            except Exception as exc:  # this thread must outlive any error: it is the lease
                self._drop(exc)
                backoff = min(max(backoff * 2, 0.05), MAX_BACKOFF)
                time.sleep(min(backoff, max(0.0, next_beat - time.monotonic())))
                continue
            if message is not None:
                self._handle(message)
        self._drop(None)
        self._pool.disconnect()

    def _renew(self) -> None:
        with self._beat_lock:
            if self._stopped:
                return
            try:
                if not self._beat(self._client):
                    logger.warning(
                        "This Redis session was taken for dead (its messages went back to "
                        "their queues); it carries on as a new lease"
                    )
            except CONNECTION_ERRORS as exc:
                logger.debug("Redis heartbeat failed (%s); will retry", exc)
            except Exception:
                logger.exception("Redis heartbeat failed; will retry")

    def _subscribe(self) -> None:
        pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]
        with self._cond:
            channels = set(self._wanted)
        try:
            pubsub.subscribe(*channels)  # connects: from here on ``watch`` may send on it
        except BaseException:
            pubsub.close()
            raise
        with self._cond:
            self._pubsub = pubsub
            later = self._wanted - channels
        if later:  # wanted while connecting
            pubsub.subscribe(*later)

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "subscribe":
            with self._cond:
                first = not self._confirmed
                self._confirmed.add(message["channel"])
                self._cond.notify_all()
            if first:  # (re)connected: wake-ups may have been missed meanwhile
                self.bump()
        elif kind == "message":
            self.bump()

    def _drop(self, exc: BaseException | None) -> None:
        with self._cond:
            pubsub, self._pubsub = self._pubsub, None
            self._confirmed.clear()
        if pubsub is not None:
            if exc is not None:
                logger.debug("Redis wake-up subscription lost (%s); reconnecting", exc)
            with contextlib.suppress(Exception):
                pubsub.close()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
