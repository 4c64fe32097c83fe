"""``app.events``: the events API of one app, configured from its settings.

Celery's spelling works::

    with app.connection() as conn:
        recv = app.events.Receiver(conn, handlers={"*": state.event})
        recv.capture(limit=10, timeout=5)

where ``state = app.events.State()``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from celeriac.events.dispatcher import EventDispatcher, anon_nodename
from celeriac.events.event import (
    DELIVERY_MODE,
    Event,
    event_exchange,
    routing_key_for,
    utcoffset,
)
from celeriac.events.receiver import EventReceiver, Handler
from celeriac.events.state import State
from celeriac.messaging.entities import Exchange

if TYPE_CHECKING:
    from celeriac.app.base import Celery
    from celeriac.messaging.connection import Connection
    from celeriac.messaging.producer import Producer
    from celeriac.transports.base import Outgoing


class Events:
    """The events API of ``app`` (``app.events``)."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._nodename: tuple[int, str] | None = None

    @property
    def exchange(self) -> Exchange:
        """The events exchange (``event_exchange`` setting)."""
        return event_exchange(self.app.conf.event_exchange)

    def Dispatcher(
        self,
        connection: Connection | None = None,
        hostname: str | None = None,
        enabled: bool = True,
        groups: Iterable[str] | None = None,
    ) -> EventDispatcher:
        """A dispatcher; on a new connection of its own (closed with it) when none is given."""
        conf = self.app.conf
        return EventDispatcher(
            connection or self.app.connection(),
            hostname,
            enabled=enabled,
            groups=groups,
            exchange=conf.event_exchange,
            serializer=conf.event_serializer,
            clock=self.app.clock,
            owns_connection=connection is None,
        )

    def Receiver(
        self,
        connection: Connection,
        handlers: Mapping[str, Handler] | None = None,
        routing_key: str | Sequence[str] = "#",
        node_id: str | None = None,
        accept: Iterable[str] | None = None,
    ) -> EventReceiver:
        """A receiver with its own listener queue (see ``EventReceiver``)."""
        conf = self.app.conf
        if accept is None:
            accept = sorted({conf.event_serializer, "json"})
        return EventReceiver(
            connection,
            handlers,
            routing_key,
            node_id,
            exchange=conf.event_exchange,
            queue_prefix=conf.event_queue_prefix,
            queue_ttl=conf.event_queue_ttl,
            queue_expires=conf.event_queue_expires,
            accept=accept,
            clock=self.app.clock,
        )

    def State(self, **kwargs: Any) -> State:
        """An empty cluster state (see ``State`` for the arguments)."""
        return State(**kwargs)

    def task_sent(
        self,
        producer: Producer,
        headers: Mapping[str, Any],
        queue: str,
        exchange: str,
        routing_key: str,
    ) -> Outgoing:
        """The ``task-sent`` event of a task message, ready to publish beside it.

        Sent in the same broker call as the task itself (``task_send_sent_event``).
        """
        fields = {
            "uuid": headers["id"],
            "root_id": headers.get("root_id"),
            "parent_id": headers.get("parent_id"),
            "name": headers["task"],
            "args": headers.get("argsrepr"),
            "kwargs": headers.get("kwargsrepr"),
            "retries": headers.get("retries", 0),
            "eta": headers.get("eta"),
            "expires": headers.get("expires"),
            "queue": queue,
            "exchange": exchange,
            "routing_key": routing_key,
        }
        hostname = self._hostname()
        event = Event(
            "task-sent",
            hostname,
            time.time(),
            utcoffset(),
            os.getpid(),
            self.app.clock.forward(),
            fields,
        )
        conf = self.app.conf
        return producer.prepare(
            event.encode(),
            routing_key_for(event.type),
            exchange=conf.event_exchange,
            serializer=conf.event_serializer,
            headers={"hostname": hostname},
            delivery_mode=DELIVERY_MODE,
        )

    def _hostname(self) -> str:
        pid = os.getpid()
        if self._nodename is None or self._nodename[0] != pid:  # new after a fork
            self._nodename = (pid, anon_nodename())
        return self._nodename[1]
