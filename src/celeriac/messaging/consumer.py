"""Consuming: fetch messages from queues within a prefetch window and hand them over.

A consumer either calls its callbacks (``drain_events``, kombu's style) or is asked for
messages directly (``fetch``/``afetch``, as the worker's event loop does). Either way it
never holds more unacked messages than its prefetch window.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from celeriac.exceptions import MissingDependency, SerializationError
from celeriac.messaging import serialization
from celeriac.messaging.connection import Channel, Connection
from celeriac.messaging.entities import Queue
from celeriac.messaging.message import Message, State
from celeriac.transports.base import Delivery

logger = logging.getLogger(__name__)

MessageCallback = Callable[[Any, Message], None]

#: Messages fetched at once when no prefetch limit is set.
UNLIMITED_BATCH = 100


class Consumer:
    """Receives messages from ``queues``.

    Args:
        channel: A ``Connection`` (its default channel is used) or a ``Channel``.
        queues: Queues to consume from (declared on ``consume`` when ``auto_declare``).
        callbacks: Called as ``callback(body, message)`` with the decoded body.
        on_message: Called as ``on_message(message)`` instead of decoding and callbacks.
        on_decode_error: Called as ``on_decode_error(message, exc)`` when a body cannot be
            decoded or its content type is not accepted. Without it, the error is logged
            with the message id and the message is rejected (dead-lettered), never dropped
            silently and never fatal to the consumer.
        prefetch_count: Most unacked messages held at once (0 = no limit; None = channel's).
        accept: Content types or serializer names to accept (default: json only).
        no_ack: Settle messages as soon as they are fetched (at-most-once).
        auto_declare: Declare the queues when consuming starts.
    """

    def __init__(
        self,
        channel: Connection | Channel,
        queues: Sequence[Queue] | Queue = (),
        callbacks: Iterable[MessageCallback] = (),
        on_message: Callable[[Message], None] | None = None,
        on_decode_error: Callable[[Message, Exception], None] | None = None,
        prefetch_count: int | None = None,
        accept: Iterable[str] | None = None,
        no_ack: bool = False,
        auto_declare: bool = True,
    ) -> None:
        self.channel = channel.default_channel if isinstance(channel, Connection) else channel
        self.connection = self.channel.connection
        self.queues: list[Queue] = [queues] if isinstance(queues, Queue) else list(queues)
        self.callbacks: list[MessageCallback] = list(callbacks)
        self.on_message = on_message
        self.on_decode_error = on_decode_error
        self.prefetch_count = prefetch_count
        self.accept = serialization.accept_content_types(
            serialization.DEFAULT_ACCEPT if accept is None else accept
        )
        self.no_ack = no_ack
        self.auto_declare = auto_declare
        self.unacked = 0
        self.active = False

    # -- lifecycle ------------------------------------------------------------------------
    def consume(self) -> Consumer:
        """Start consuming (declaring the queues first when ``auto_declare``)."""
        if self.auto_declare:
            self.connection.declare(*self.queues)
        if not self.active:
            self.channel.consumers.append(self)
            self.active = True
            self._tell_window(self._window())
        return self

    def cancel(self) -> None:
        """Stop consuming; messages already received stay theirs to settle."""
        if self.active:
            self.channel.consumers.remove(self)
            self.active = False
            self._tell_window(0)

    def __enter__(self) -> Consumer:
        return self.consume()

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()

    def add_queue(self, queue: Queue) -> None:
        """Consume from one more queue (declared now if consuming and ``auto_declare``)."""
        if self.active and self.auto_declare:
            self.connection.declare(queue)
        self.queues.append(queue)
        if self.active:
            self._tell_window(self._window(), [queue])

    def register_callback(self, callback: MessageCallback) -> None:
        """Add a ``callback(body, message)``."""
        self.callbacks.append(callback)

    def qos(self, prefetch_count: int) -> None:
        """Change the prefetch window (0 = no limit)."""
        if prefetch_count < 0:
            raise ValueError("prefetch_count must not be negative")
        self.prefetch_count = prefetch_count
        if self.active:
            self._tell_window(prefetch_count)

    def _window(self) -> int:
        return self.channel.prefetch_count if self.prefetch_count is None else self.prefetch_count

    def _tell_window(self, window: int, queues: Sequence[Queue] | None = None) -> None:
        """Tell the transport this consumer's window (a push transport consumes with it)."""
        names = [q.name for q in (self.queues if queues is None else queues)]
        if names and (window or self.connection.connected):
            self.connection.transport.qos(names, window)

    # -- fetching -------------------------------------------------------------------------
    def capacity(self) -> int:
        """How many more messages this consumer may hold unacked right now."""
        window = self._window()
        if not self.active or not self.queues:
            return 0
        if window == 0:
            return UNLIMITED_BATCH
        return max(0, window - self.unacked)

    def _wrap(self, deliveries: list[Delivery]) -> list[Message]:
        messages = [Message(d, self.channel, self.accept, self._settled) for d in deliveries]
        self.unacked += len(messages)
        return messages

    def _settled(self, _message: Message) -> None:
        self.unacked -= 1

    def _request(self, limit: int | None) -> int:
        return self.capacity() if limit is None else min(limit, self.capacity())

    def _mark_auto_acked(self, messages: list[Message]) -> list[int]:
        for message in messages:
            message.state = "ACK"
        self.unacked -= len(messages)
        return [m.delivery_tag for m in messages]

    def fetch(self, limit: int | None = None) -> list[Message]:
        """Take ready messages, at most ``limit`` and never beyond the prefetch window."""
        count = self._request(limit)
        if count <= 0:
            return []
        transport = self.connection.transport
        messages = self._wrap(transport.fetch([q.name for q in self.queues], count))
        if self.no_ack and messages:
            transport.ack(self._mark_auto_acked(messages))
        return messages

    async def afetch(self, limit: int | None = None, ack: Sequence[Message] = ()) -> list[Message]:
        """``fetch`` for asyncio code: the broker calls run off the event loop.

        ``ack`` messages are acked in the same broker call (one round trip for both).
        """
        count = self._request(limit)
        if count <= 0:
            await self.asettle_many(ack)
            return []
        pending = [m for m in ack if not m.acknowledged]
        conn = self.connection
        names = [q.name for q in self.queues]
        tags = [m.delivery_tag for m in pending]
        transport = conn.transport
        if conn.transport_cls.capabilities.async_consume:
            deliveries = await transport.afetch(names, count, tags)
        else:
            deliveries = await conn.arun_quick(transport.fetch, names, count, tags)
        for message in pending:
            if not message.acknowledged:
                message.mark_settled("ACK")
        messages = self._wrap(deliveries)
        if self.no_ack and messages:
            await self._aack(self._mark_auto_acked(messages))
        return messages

    async def _aack(self, tags: list[int]) -> None:
        conn = self.connection
        if conn.transport_cls.capabilities.async_consume:
            await conn.transport.aack(tags)
        else:
            await conn.arun_quick(conn.transport.ack, tags)

    async def asettle_many(
        self,
        acks: Sequence[Message] = (),
        requeues: Sequence[Message] = (),
        rejects: Sequence[Message] = (),
    ) -> None:
        """Ack, requeue and reject many messages with one broker call each (off the loop).

        Messages settled already are skipped: a batch may be collected over a while.
        """
        conn = self.connection
        batches: tuple[tuple[Sequence[Message], State], ...] = (
            (acks, "ACK"),
            (requeues, "REQUEUED"),
            (rejects, "REJECTED"),
        )
        for batch, state in batches:
            pending = [m for m in batch if not m.acknowledged]
            if not pending:
                continue
            tags = [m.delivery_tag for m in pending]
            if state == "ACK":
                await self._aack(tags)
            else:
                await conn.arun_quick(conn.transport.reject, tags, state == "REQUEUED")
            for message in pending:
                if not message.acknowledged:
                    message.mark_settled(state)

    async def adefer_many(self, deferrals: Sequence[tuple[Message, float]]) -> None:
        """Return messages to the broker, each hidden until its time (``time.time()``)."""
        pending = [(m, until) for m, until in deferrals if not m.acknowledged]
        if not pending:
            return
        conn = self.connection
        await conn.arun(conn.transport.defer, [(m.delivery_tag, t) for m, t in pending])
        for message, _until in pending:
            message.mark_settled("REQUEUED")

    # -- dispatch -------------------------------------------------------------------------
    def dispatch(self, messages: list[Message]) -> int:
        """Hand each message to ``on_message`` or the callbacks; returns how many."""
        for message in messages:
            self.receive(message)
        return len(messages)

    def receive(self, message: Message) -> None:
        """Hand one message over, decoding it for the callbacks."""
        if self.on_message is not None:
            self.on_message(message)
            return
        try:
            body = message.decode()
        except (SerializationError, MissingDependency) as exc:
            self._decode_failed(message, exc)
            return
        for callback in self.callbacks:
            callback(body, message)

    def _decode_failed(self, message: Message, exc: Exception) -> None:
        if self.on_decode_error is not None:
            self.on_decode_error(message, exc)
            return
        logger.error(
            "Cannot decode message %s (tag %s, content type %r): %s; rejecting it",
            message.properties.correlation_id or message.properties.message_id or "without id",
            message.delivery_tag,
            message.content_type,
            exc,
        )
        if not message.acknowledged:
            message.reject(requeue=False)
