"""Sending events: now (``send``), or buffered and published in batches (``put`` + ``flush``).

``send``/``asend`` publish one event as one message, for programs that send now and then
(custom events, a client's ``task-sent``). A worker sends thousands of task events a second
from its event loop, so it ``put``s them (no I/O, no waiting) and a background ``aflush``
publishes whatever accumulated in one broker call: task events as lists
(``task.multi``, as Celery's worker does), worker events one per message so a monitor bound
to ``worker.heartbeat`` sees them.

A disabled dispatcher (or one whose ``groups`` leave a type out) does nothing and costs a
flag check.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from celeriac.events.clock import LamportClock
from celeriac.events.event import (
    DELIVERY_MODE,
    EXCHANGE_NAME,
    Event,
    event_exchange,
    group_from,
    routing_key_for,
    utcoffset,
)
from celeriac.exceptions import EncodeError
from celeriac.messaging.connection import Connection
from celeriac.messaging.producer import Producer
from celeriac.messaging.retry import RetryPolicy
from celeriac.transports.base import Outgoing

logger = logging.getLogger(__name__)

#: Groups whose buffered events travel as lists (one message per flush).
BATCHED_GROUPS = frozenset({"task"})
#: Most events in one list message (a flush of more sends several messages).
MAX_EVENTS_PER_MESSAGE = 1000
#: Most events held unsent; beyond it the oldest are dropped (monitoring is best effort).
MAX_BUFFER = 100_000
#: How often the cached UTC offset is looked at again (it changes twice a year).
_OFFSET_TTL = 60.0


def anon_nodename() -> str:
    """The node name of a process that is not a worker: ``gen<pid>@<host>`` (Celery's)."""
    return f"gen{os.getpid()}@{socket.gethostname()}"


class EventDispatcher:
    """Publishes events to the events exchange over ``connection``.

    Args:
        connection: The broker connection to publish on (not closed by the dispatcher
            unless ``owns_connection``).
        hostname: The node name events carry (``gen<pid>@host`` by default).
        enabled: False makes every send a no-op.
        groups: Send only events of these groups (``{"worker"}``); None sends all.
        exchange: Name of the events exchange (the ``event_exchange`` setting).
        serializer: Serializer of event bodies (the ``event_serializer`` setting).
        clock: The Lamport clock to advance (the app's, so that every sender in a
            process shares one); a new one by default.
        owns_connection: Close ``connection`` in ``close``.
    """

    def __init__(
        self,
        connection: Connection,
        hostname: str | None = None,
        *,
        enabled: bool = True,
        groups: Iterable[str] | None = None,
        exchange: str = EXCHANGE_NAME,
        serializer: str = "json",
        clock: LamportClock | None = None,
        owns_connection: bool = False,
    ) -> None:
        self.connection = connection
        self.hostname = hostname or anon_nodename()
        self.enabled = enabled
        self.groups = frozenset(groups) if groups else None
        self.exchange = event_exchange(exchange)
        self.serializer = serializer
        self.clock = clock or LamportClock()
        self.pid = os.getpid()
        self.owns_connection = owns_connection
        #: Events dropped because the buffer was full (the broker was unreachable).
        self.dropped = 0
        self._producer = Producer(
            connection, exchange=self.exchange, serializer=serializer, auto_declare=False
        )
        self._headers = {"hostname": self.hostname}
        #: Buffered events, already in their wire form (no object per event).
        self._buffer: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()
        self._offset = utcoffset()
        self._offset_checked = time.monotonic()

    def __enter__(self) -> EventDispatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- making events --------------------------------------------------------------------
    def wants(self, event_type: str) -> bool:
        """True when an event of this type would be sent."""
        return self.enabled and (self.groups is None or group_from(event_type) in self.groups)

    def event(self, event_type: str, **fields: Any) -> Event:
        """A new event from this sender (advances the clock; sends nothing)."""
        now = time.time()
        self._check_offset()
        return Event(
            event_type, self.hostname, now, self._offset, self.pid, self.clock.forward(), fields
        )

    def _check_offset(self) -> None:
        if time.monotonic() - self._offset_checked > _OFFSET_TTL:
            self._offset, self._offset_checked = utcoffset(), time.monotonic()

    # -- sending now ----------------------------------------------------------------------
    def send(
        self,
        event_type: str,
        *,
        retry: bool = False,
        retry_policy: Mapping[str, Any] | RetryPolicy | None = None,
        **fields: Any,
    ) -> Event | None:
        """Publish one event now; returns it (None when disabled for this type).

        Raises:
            EncodeError: A field cannot be serialized.
            OperationalError: The broker failed (after retries, when ``retry``).
        """
        if not self.wants(event_type):
            return None
        event = self.event(event_type, **fields)
        self._producer.send(
            [self._prepare(event.encode(), routing_key_for(event_type))],
            declare=[self.exchange],
            retry=retry,
            retry_policy=retry_policy,
        )
        return event

    async def asend(self, event_type: str, **fields: Any) -> Event | None:
        """``send`` for asyncio code: the broker call runs off the event loop."""
        if not self.wants(event_type):
            return None
        event = self.event(event_type, **fields)
        outgoing = self._prepare(event.encode(), routing_key_for(event_type))
        await self.connection.arun(self._producer.send, [outgoing], [self.exchange])
        return event

    # -- buffering ------------------------------------------------------------------------
    @property
    def buffered(self) -> int:
        """Events waiting for the next flush."""
        return len(self._buffer)

    def put(self, event_type: str, **fields: Any) -> bool:
        """Buffer an event for the next flush (no I/O); False when disabled for this type.

        The hot path of a worker with task events on: the event is made in its wire form
        at once (the common fields win over same-named ones in ``fields``).
        """
        if not self.enabled or (
            self.groups is not None and group_from(event_type) not in self.groups
        ):
            return False
        fields["type"] = event_type
        fields["hostname"] = self.hostname
        fields["timestamp"] = time.time()
        fields["utcoffset"] = self._offset
        fields["pid"] = self.pid
        fields["clock"] = self.clock.forward()
        with self._lock:
            self._buffer.append(fields)
            if len(self._buffer) > MAX_BUFFER:
                self._buffer.popleft()
                self.dropped += 1
        return True

    def flush(self) -> int:
        """Publish the buffered events in one broker call; returns how many were sent.

        Raises:
            OperationalError: The broker failed; the events stay buffered.
        """
        events, outgoing = self._take()
        if not outgoing:
            return 0
        try:
            self._producer.send(outgoing, declare=[self.exchange])
        except BaseException:
            self._give_back(events)
            raise
        return len(events)

    async def aflush(self) -> int:
        """``flush`` for asyncio code: the broker call runs off the event loop."""
        events, outgoing = self._take()
        if not outgoing:
            return 0
        try:
            await self.connection.arun(self._producer.send, outgoing, [self.exchange])
        except BaseException:
            self._give_back(events)
            raise
        return len(events)

    def _take(self) -> tuple[list[dict[str, Any]], list[Outgoing]]:
        self._check_offset()
        with self._lock:
            events = list(self._buffer)
            self._buffer.clear()
        return events, self._messages(events)

    def _give_back(self, events: list[dict[str, Any]]) -> None:
        with self._lock:
            self._buffer.extendleft(reversed(events))
            while len(self._buffer) > MAX_BUFFER:
                self._buffer.popleft()
                self.dropped += 1

    def _messages(self, events: Sequence[dict[str, Any]]) -> list[Outgoing]:
        """Batched groups as lists of at most ``MAX_EVENTS_PER_MESSAGE``; others one each."""
        batches: dict[str, list[dict[str, Any]]] = {}
        messages: list[Outgoing] = []
        for event in events:
            event_type = event["type"]
            group = group_from(event_type)
            if group in BATCHED_GROUPS:
                batches.setdefault(group, []).append(event)
            else:
                messages.extend(self._encoded([event], routing_key_for(event_type)))
        for group, bodies in batches.items():
            for start in range(0, len(bodies), MAX_EVENTS_PER_MESSAGE):
                chunk = bodies[start : start + MAX_EVENTS_PER_MESSAGE]
                messages.extend(self._encoded(chunk, f"{group}.multi", as_list=True))
        return messages

    def _encoded(
        self, bodies: list[dict[str, Any]], routing_key: str, as_list: bool = False
    ) -> list[Outgoing]:
        """Messages for ``bodies``; an event that cannot be encoded is dropped, not retried
        forever with the rest of its batch."""
        try:
            return [self._prepare(bodies if as_list else bodies[0], routing_key)]
        except EncodeError:
            if len(bodies) == 1:
                logger.warning("Dropping an event that cannot be encoded: %r", bodies[0])
                self.dropped += 1
                return []
        return [m for body in bodies for m in self._encoded([body], routing_key, as_list)]

    def _prepare(self, body: Any, routing_key: str) -> Outgoing:
        return self._producer.prepare(
            body,
            routing_key,
            exchange=self.exchange,
            headers=self._headers,
            delivery_mode=DELIVERY_MODE,
        )

    # -- switching ------------------------------------------------------------------------
    def enable(self) -> None:
        """Send events from now on."""
        self.enabled = True

    def disable(self) -> None:
        """Send nothing from now on (buffered events are dropped)."""
        self.enabled = False
        with self._lock:
            self._buffer.clear()

    def close(self) -> None:
        """Drop buffered events; close the connection when the dispatcher owns it."""
        with self._lock:
            self._buffer.clear()
        if self.owns_connection:
            self.connection.close()
