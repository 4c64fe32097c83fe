"""Publishing: turn a body into an envelope and hand it to the broker, with retries.

``prepare`` does everything that does not touch the broker (serialize, compress, set
properties), so a batch can be prepared and then sent in one transport call with
``send``. ``publish``/``apublish`` are the one-message faces of the same two steps.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import celeriac.messaging.compression as compressors
from celeriac.messaging import serialization
from celeriac.messaging.connection import Channel, Connection
from celeriac.messaging.entities import DEFAULT_EXCHANGE, Exchange, Queue
from celeriac.messaging.retry import RetryPolicy, acall_with_retry, call_with_retry
from celeriac.transports.base import Envelope, Outgoing, Properties


def _exchange_name(exchange: Exchange | str | None) -> str | None:
    if exchange is None or isinstance(exchange, str):
        return exchange
    return exchange.name


class Producer:
    """Publishes messages through a connection (or one of its channels).

    Args:
        channel: A ``Connection`` (its default channel is used) or a ``Channel``.
        exchange: Default exchange (the default exchange '' when None).
        routing_key: Default routing key.
        serializer: Default serializer name (``json``).
        compression: Default compression name, or None.
        auto_declare: Declare ``exchange`` on creation.
    """

    def __init__(
        self,
        channel: Connection | Channel,
        exchange: Exchange | str | None = None,
        routing_key: str = "",
        serializer: str | None = None,
        compression: str | None = None,
        auto_declare: bool = True,
    ) -> None:
        self.channel = channel.default_channel if isinstance(channel, Connection) else channel
        self.connection = self.channel.connection
        if isinstance(exchange, str):
            exchange = Exchange(exchange)
        self.exchange = exchange or DEFAULT_EXCHANGE
        self.routing_key = routing_key
        self.serializer = serializer or "json"
        self.compression = compression
        if auto_declare and self.exchange.name:
            self.connection.declare(self.exchange)

    def prepare(
        self,
        body: Any,
        routing_key: str | None = None,
        *,
        exchange: Exchange | str | None = None,
        serializer: str | None = None,
        compression: str | None = None,
        headers: Mapping[str, Any] | None = None,
        content_type: str | None = None,
        content_encoding: str | None = None,
        priority: int | None = None,
        expiration: float | None = None,
        delivery_mode: int | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        message_id: str | None = None,
        timestamp: float | None = None,
    ) -> Outgoing:
        """Build the envelope for ``body`` without touching the broker.

        Raises:
            EncodeError: ``body`` cannot be serialized.
            ImproperlyConfigured: Unknown serializer or compression name.
        """
        if content_type is not None and isinstance(body, bytes | str):
            # Already serialized by the caller: send as is.
            data = body.encode(content_encoding or "utf-8") if isinstance(body, str) else body
            encoding = content_encoding or ("binary" if isinstance(body, bytes) else "utf-8")
        else:
            content_type, encoding, data = serialization.dumps(body, serializer or self.serializer)
        message_headers = dict(headers or {})
        codec = compression or self.compression
        if codec:
            data, message_headers["compression"] = compressors.compress(data, codec)
        if priority is not None and not 0 <= priority <= 255:
            raise ValueError(f"priority must be 0-255, got {priority}")
        properties = Properties(
            content_type=content_type,
            content_encoding=encoding,
            correlation_id=correlation_id,
            reply_to=reply_to,
            delivery_mode=2 if delivery_mode is None else delivery_mode,
            priority=priority,
            expiration=expiration,
            message_id=message_id,
            timestamp=time.time() if timestamp is None else timestamp,
        )
        name = _exchange_name(exchange)
        return Outgoing(
            Envelope(data, message_headers, properties),
            self.exchange.name if name is None else name,
            self.routing_key if routing_key is None else routing_key,
        )

    def send(
        self,
        messages: Sequence[Outgoing],
        declare: Sequence[Exchange | Queue] = (),
        retry: bool = False,
        retry_policy: Mapping[str, Any] | RetryPolicy | None = None,
    ) -> None:
        """Publish prepared messages in one transport call (declaring ``declare`` first).

        Raises:
            OperationalError: The broker failed and retries (if any) were exhausted.
        """

        def attempt() -> None:
            self.connection.declare(*declare)
            self.connection.transport.publish(messages)

        if not retry:
            attempt()
            return
        call_with_retry(
            attempt,
            RetryPolicy.from_mapping(retry_policy),
            self.connection.transport_cls.recoverable_errors,
            lambda: f"publish to {self.connection.as_uri()}",
            on_retry=lambda _exc: self.connection.reset(),
        )

    async def asend(
        self,
        messages: Sequence[Outgoing],
        declare: Sequence[Exchange | Queue] = (),
        retry: bool = False,
        retry_policy: Mapping[str, Any] | RetryPolicy | None = None,
    ) -> None:
        """``send`` for asyncio code."""
        conn = self.connection

        async def attempt() -> None:
            await conn.arun(conn.declare, *declare)
            await conn.arun(conn.transport.publish, messages)

        if not retry:
            await attempt()
            return
        await acall_with_retry(
            attempt,
            RetryPolicy.from_mapping(retry_policy),
            conn.transport_cls.recoverable_errors,
            lambda: f"publish to {conn.as_uri()}",
            on_retry=lambda _exc: conn.reset(),
        )

    def publish(
        self,
        body: Any,
        routing_key: str | None = None,
        *,
        declare: Sequence[Exchange | Queue] = (),
        retry: bool = False,
        retry_policy: Mapping[str, Any] | RetryPolicy | None = None,
        **options: Any,
    ) -> None:
        """Serialize and publish one message; ``options`` are those of ``prepare``."""
        self.send([self.prepare(body, routing_key, **options)], declare, retry, retry_policy)

    async def apublish(
        self,
        body: Any,
        routing_key: str | None = None,
        *,
        declare: Sequence[Exchange | Queue] = (),
        retry: bool = False,
        retry_policy: Mapping[str, Any] | RetryPolicy | None = None,
        **options: Any,
    ) -> None:
        """``publish`` for asyncio code."""
        outgoing = self.prepare(body, routing_key, **options)
        await self.asend([outgoing], declare, retry, retry_policy)
