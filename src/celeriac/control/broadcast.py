"""One remote-control request: publishing it and collecting the replies, in both faces.

A ``Broadcast`` publishes its request on the pidbox fanout exchange and, when a reply is
wanted, collects the replies on a queue of its own until ``limit`` replies came (the number
of destinations, when given) or ``timeout`` seconds passed. Each broadcast has a fresh
reply queue, deleted afterwards, so concurrent calls never read each other's replies (a
late reply to an earlier call carries another ticket and is dropped). ``send`` waits in
plain code, ``asend`` without blocking an event loop; the steps are the same.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeriac.control.mailbox import TRANSIENT, ControlRequest, Mailbox, ReplyTo
from celeriac.exceptions import MissingDependency, SerializationError
from celeriac.messaging.consumer import Consumer
from celeriac.messaging.producer import Producer

if TYPE_CHECKING:
    from celeriac.app.base import Celery
    from celeriac.messaging.connection import Connection
    from celeriac.messaging.entities import Queue
    from celeriac.messaging.message import Message

logger = logging.getLogger(__name__)

Reply = dict[str, Any]
"""One node's reply as it travels: ``{hostname: reply}``."""
ReplyCallback = Callable[[Reply], object]
Destination = str | Sequence[str] | None

#: Seconds a broadcast waits for replies when not told.
DEFAULT_TIMEOUT = 1.0
#: Longest wait between two looks at the reply queue. Wake-ups are hints on some
#: transports (SQLite's may miss a reply queue made a moment ago): a short wait keeps a
#: missed one from costing the whole timeout.
REPLY_POLL = 0.05
#: Replies taken at once. A window also makes push transports (RabbitMQ) consume the
#: auto-delete reply queue with one standing consumer for the whole call.
REPLY_PREFETCH = 64


def destination_list(destination: Destination) -> list[str] | None:
    """A node name or names as a list (None for every node).

    Raises:
        ValueError: Neither a name nor a list or tuple of names.
    """
    if destination is None:
        return None
    if isinstance(destination, str):
        return [destination]
    if not isinstance(destination, list | tuple):
        raise ValueError(f"destination must be a node name or a list of them, not {destination!r}")
    return [str(name) for name in destination]


@dataclass(frozen=True, slots=True)
class Broadcast:
    """One request to the workers, and how its replies are awaited.

    Attributes:
        app: The client's app (its clock, serializer and broker).
        mailbox: The pidbox names and options.
        request: The request as it travels.
        reply_queue: Where replies come (None when none are wanted).
        limit: Stop after this many replies (None: wait the whole timeout).
        timeout: Seconds to wait for replies in all.
        callback: Called with each reply as it arrives.
    """

    app: Celery
    mailbox: Mailbox
    request: ControlRequest
    reply_queue: Queue | None
    limit: int | None
    timeout: float
    callback: ReplyCallback | None = None

    @classmethod
    def prepare(
        cls,
        app: Celery,
        command: str,
        arguments: dict[str, Any],
        destination: Destination = None,
        reply: bool = False,
        timeout: float | None = None,
        limit: int | None = None,
        callback: ReplyCallback | None = None,
        pattern: str | None = None,
        matcher: str | None = None,
    ) -> Broadcast:
        """The broadcast of ``command`` (see ``Control.broadcast`` for the arguments)."""
        mailbox = Mailbox.for_app(app)
        names = destination_list(destination)
        if limit is None and names:
            limit = len(names)
        queue = ticket = route = None
        if reply:
            key = str(uuid.uuid4())
            queue = mailbox.reply_queue(key)
            ticket = str(uuid.uuid4())
            route = ReplyTo(mailbox.reply_exchange.name, key)
        request = ControlRequest(command, arguments, names, pattern, matcher, ticket, route)
        wait = DEFAULT_TIMEOUT if timeout is None else timeout
        return cls(app, mailbox, request, queue, limit, wait, callback)

    # -- shared steps -----------------------------------------------------------------------
    def _publish_options(self) -> dict[str, Any]:
        return {
            "exchange": self.mailbox.exchange.name,
            "declare": [self.mailbox.exchange],
            "headers": {
                "clock": self.app.clock.forward(),
                "expires": time.time() + self.timeout if self.timeout else 0,
            },
            "serializer": self.mailbox.serializer,
            "delivery_mode": TRANSIENT,
            "retry": True,
        }

    def _consumer(self, conn: Connection) -> Consumer | None:
        if self.reply_queue is None:
            return None
        return Consumer(
            conn,
            self.reply_queue,
            accept=self.mailbox.accept,
            no_ack=True,
            prefetch_count=REPLY_PREFETCH,
        )

    def _wants_more(self, replies: int) -> bool:
        return self.limit is None or replies < self.limit

    def _take(self, message: Message, replies: list[Reply]) -> None:
        """Keep ``message`` when it answers this request (a late reply to another is not)."""
        clock = message.headers.get("clock")
        if isinstance(clock, int):
            self.app.clock.adjust(clock)
        if message.headers.get("ticket", self.request.ticket) != self.request.ticket:
            return
        try:
            body = message.decode()
        except (SerializationError, MissingDependency) as exc:
            logger.warning("Ignoring a remote-control reply that cannot be decoded: %s", exc)
            return
        if not isinstance(body, dict):
            logger.warning("Ignoring a remote-control reply that is not a mapping: %r", body)
            return
        if self._wants_more(len(replies)):
            replies.append(body)
            if self.callback is not None:
                self.callback(body)

    def _drop_reply_queue(self, conn: Connection) -> None:
        if self.reply_queue is not None:
            with contextlib.suppress(Exception):  # it expires on its own anyway
                conn.transport.delete_queue(self.reply_queue.name)

    # -- the two faces ----------------------------------------------------------------------
    def send(self, conn: Connection) -> list[Reply] | None:
        """Publish the request on ``conn``; the replies when they are wanted."""
        producer = Producer(conn, auto_declare=False)
        consumer = self._consumer(conn)
        if consumer is None:
            producer.publish(self.request.to_body(), "", **self._publish_options())
            return None
        consumer.consume()  # the reply queue exists before any worker can answer
        try:
            producer.publish(self.request.to_body(), "", **self._publish_options())
            replies: list[Reply] = []
            deadline = time.monotonic() + self.timeout
            while self._wants_more(len(replies)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                messages = consumer.fetch()
                for message in messages:
                    self._take(message, replies)
                if not messages:
                    conn.transport.wait(min(remaining, REPLY_POLL))
            return replies
        finally:
            consumer.cancel()
            self._drop_reply_queue(conn)

    async def asend(self, conn: Connection) -> list[Reply] | None:
        """``send`` for asyncio code: the broker I/O does not block the event loop."""
        producer = Producer(conn, auto_declare=False)
        consumer = self._consumer(conn)
        if consumer is None:
            await producer.apublish(self.request.to_body(), "", **self._publish_options())
            return None
        await conn.arun(consumer.consume)
        try:
            await producer.apublish(self.request.to_body(), "", **self._publish_options())
            replies: list[Reply] = []
            deadline = time.monotonic() + self.timeout
            while self._wants_more(len(replies)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                messages = await consumer.afetch()
                for message in messages:
                    self._take(message, replies)
                if not messages:
                    await conn.transport.await_ready(min(remaining, REPLY_POLL))
            return replies
        finally:
            consumer.cancel()
            await conn.arun(self._drop_reply_queue, conn)
