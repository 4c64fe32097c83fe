"""Receiving events: a listener queue of our own, bound to the events exchange.

Each receiver declares ``celeryev.<uuid>`` (auto-delete, not durable, messages expire after
``event_queue_ttl`` seconds, the queue after ``event_queue_expires`` idle seconds: a monitor
that goes away leaves nothing behind), bound with ``#`` or the routing keys asked for. A body
is one event or a list of them. Events reach handlers by type (``"*"`` catches the rest), or
are iterated over, from plain code (``capture``/``itercapture``) or asyncio code
(``acapture``/``aitercapture``).

Timestamps are kept as sent: senders stamp ``time.time()``, which does not depend on their
time zone, so there is nothing to shift (``utcoffset`` is passed on for display).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from celeriac.events.clock import LamportClock
from celeriac.events.event import (
    EXCHANGE_NAME,
    QUEUE_PREFIX,
    Event,
    InvalidEvent,
    event_exchange,
    routing_key_for,
)
from celeriac.exceptions import ContentDisallowed, MissingDependency, SerializationError
from celeriac.messaging.connection import MAX_WAIT, Connection
from celeriac.messaging.consumer import Consumer
from celeriac.messaging.entities import Binding, Queue
from celeriac.messaging.message import Message
from celeriac.messaging.routing import topic_matches

logger = logging.getLogger(__name__)

Handler = Callable[[Event], Any]
"""Called with each event of its type."""

#: Messages taken from the listener queue at once.
FETCH_BATCH = 200
#: Clients never take part in clock exchanges, so their ``task-sent`` clock means nothing
#: here: it is placed just before the receiver's own clock (as Celery does).
CLIENT_CLOCK_SKEW = -1


class EventReceiver:
    """Captures events from the events exchange.

    Args:
        connection: The broker connection (not closed by the receiver).
        handlers: Event type -> handler; ``"*"`` handles types without a handler of their
            own. Handlers get ``Event`` objects, which read like Celery's event dicts.
        routing_key: ``#`` for everything, or one or more topic patterns
            (``"task.#"``, ``["worker.#", "task.failed"]``).
        node_id: The listener queue is ``<queue_prefix>.<node_id>`` (a new uuid by default).
        exchange: Name of the events exchange.
        queue_prefix: Prefix of the listener queue's name.
        queue_ttl: Seconds an event may wait in the listener queue (None: no limit).
        queue_expires: Seconds the listener queue may stay unused before the broker
            deletes it (None: no limit).
        accept: Content types or serializer names to accept (json by default).
        clock: The Lamport clock to move past received clocks (a new one by default).
    """

    def __init__(
        self,
        connection: Connection,
        handlers: Mapping[str, Handler] | None = None,
        routing_key: str | Sequence[str] = "#",
        node_id: str | None = None,
        *,
        exchange: str = EXCHANGE_NAME,
        queue_prefix: str = QUEUE_PREFIX,
        queue_ttl: float | None = 5.0,
        queue_expires: float | None = 60.0,
        accept: Iterable[str] | None = None,
        clock: LamportClock | None = None,
    ) -> None:
        self.connection = connection
        self.handlers: dict[str, Handler] = dict(handlers or {})
        keys = [routing_key] if isinstance(routing_key, str) else list(routing_key)
        self.routing_keys = keys or ["#"]
        self.node_id = node_id or str(uuid.uuid4())
        self.exchange = event_exchange(exchange)
        self.queue = self._listener_queue(queue_prefix, queue_ttl, queue_expires)
        self.accept = list(accept) if accept is not None else ["json"]
        self.clock = clock or LamportClock()
        self._filtered = "#" not in self.routing_keys
        self._consumer: Consumer | None = None
        self._stopping = False
        self._warned = False

    def _listener_queue(self, prefix: str, ttl: float | None, expires: float | None) -> Queue:
        # Worker task events travel as lists under ``task.multi``: a receiver asking for
        # ``task.failed`` must hear those too, and picks its events out of them itself.
        keys = list(dict.fromkeys(self.routing_keys))
        if "#" not in keys:
            for key in list(keys):
                multi = f"{key.split('.', 1)[0]}.multi"
                if multi not in keys:
                    keys.append(multi)
        first, *more = keys
        return Queue(
            f"{prefix}.{self.node_id}",
            self.exchange,
            routing_key=first,
            bindings=[Binding(self.exchange, key) for key in more],
            durable=False,
            auto_delete=True,
            message_ttl=ttl,
            expires=expires,
        )

    def __enter__(self) -> EventReceiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- handling -------------------------------------------------------------------------
    def process(self, event: Event) -> None:
        """Call the handler of ``event``'s type (or the ``"*"`` handler)."""
        handler = self.handlers.get(event.type) or self.handlers.get("*")
        if handler is not None:
            handler(event)

    def events_from(self, message: Message) -> list[Event]:
        """The events in ``message`` (one or a list), clocks adjusted; bad items skipped."""
        try:
            body = message.decode()
        except (ContentDisallowed, SerializationError, MissingDependency) as exc:
            self._warn(f"undecodable events message: {exc}")
            return []
        now = time.time()
        items = body if isinstance(body, list) else [body]
        events: list[Event] = []
        for item in items:
            try:
                event = Event.decode(item, local_received=now)
            except InvalidEvent as exc:
                self._warn(str(exc))
                continue
            if self._filtered and not self._wanted(event):
                continue
            events.append(self._clocked(event))
        return events

    def _wanted(self, event: Event) -> bool:
        key = routing_key_for(event.type)
        return any(topic_matches(pattern, key) for pattern in self.routing_keys)

    def _clocked(self, event: Event) -> Event:
        if event.type == "task-sent":
            clock = (self.clock.value or 1) + CLIENT_CLOCK_SKEW
            self.clock.adjust(clock)
            return Event(
                event.type,
                event.hostname,
                event.timestamp,
                event.utcoffset,
                event.pid,
                clock,
                event.fields,
                event.local_received,
            )
        self.clock.adjust(event.clock)
        return event

    def _warn(self, reason: str) -> None:
        # One line per receiver: a noisy sender must not flood the monitor's log.
        if not self._warned:
            self._warned = True
            logger.warning("Skipping a bad event (further ones are skipped quietly): %s", reason)

    # -- the synchronous face -------------------------------------------------------------
    def consume(self) -> Consumer:
        """Declare the listener queue and start consuming (done by the capture methods)."""
        if self._consumer is None:
            consumer = Consumer(
                self.connection, self.queue, prefetch_count=0, accept=self.accept, no_ack=True
            )
            consumer.consume()
            self._consumer = consumer
        return self._consumer

    def itercapture(
        self, limit: int | None = None, timeout: float | None = None
    ) -> Iterator[Event]:
        """Yield events as they arrive: ``limit`` of them, or for ``timeout`` seconds, or
        until ``stop`` is called (whichever comes first; None: no bound)."""
        consumer = self.consume()
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = 0
        self._stopping = False
        while not self._stopping and (limit is None or seen < limit):
            messages = consumer.fetch(FETCH_BATCH)
            for message in messages:
                for event in self.events_from(message):
                    yield event
                    seen += 1
                    if limit is not None and seen >= limit:
                        return
            if not messages:
                wait = _wait_time(deadline)
                if wait <= 0:
                    return
                self.connection.transport.wait(wait)
            elif deadline is not None and time.monotonic() >= deadline:
                return

    def capture(self, limit: int | None = None, timeout: float | None = None) -> int:
        """Hand events to the handlers (see ``itercapture`` for the bounds); returns how
        many were handled."""
        count = 0
        for event in self.itercapture(limit, timeout):
            self.process(event)
            count += 1
        return count

    def stop(self) -> None:
        """Make a running capture return soon (callable from another thread)."""
        self._stopping = True
        self.connection.transport.wake()

    # -- the asyncio face -----------------------------------------------------------------
    async def aconsume(self) -> Consumer:
        """``consume`` for asyncio code."""
        if self._consumer is None:
            consumer = Consumer(
                self.connection, self.queue, prefetch_count=0, accept=self.accept, no_ack=True
            )
            await self.connection.arun(consumer.consume)
            self._consumer = consumer
        return self._consumer

    async def aitercapture(
        self, limit: int | None = None, timeout: float | None = None
    ) -> AsyncIterator[Event]:
        """``itercapture`` for asyncio code: waits without blocking the event loop."""
        consumer = await self.aconsume()
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = 0
        self._stopping = False
        while not self._stopping and (limit is None or seen < limit):
            messages = await consumer.afetch(FETCH_BATCH)
            for message in messages:
                for event in self.events_from(message):
                    yield event
                    seen += 1
                    if limit is not None and seen >= limit:
                        return
            if not messages:
                wait = _wait_time(deadline)
                if wait <= 0:
                    return
                await self.connection.transport.await_ready(wait)
            elif deadline is not None and time.monotonic() >= deadline:
                return

    async def acapture(self, limit: int | None = None, timeout: float | None = None) -> int:
        """``capture`` for asyncio code."""
        count = 0
        async for event in self.aitercapture(limit, timeout):
            self.process(event)
            count += 1
        return count

    # -- ending ---------------------------------------------------------------------------
    def close(self) -> None:
        """Stop consuming and delete the listener queue (the connection stays open)."""
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        consumer.cancel()
        try:
            self.connection.transport.delete_queue(self.queue.name)
        except Exception as exc:  # the broker may be gone; the queue expires by itself
            logger.debug("Could not delete %s: %s", self.queue.name, exc)

    async def aclose(self) -> None:
        """``close`` for asyncio code."""
        await self.connection.arun(self.close)


def _wait_time(deadline: float | None) -> float:
    if deadline is None:
        return MAX_WAIT
    return min(deadline - time.monotonic(), MAX_WAIT)
