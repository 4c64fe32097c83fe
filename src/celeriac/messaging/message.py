"""A received message: its content, where it came from, and how to settle it.

A message is settled exactly once: ``ack`` (done, it leaves the broker), ``reject`` (dead-
lettered or dropped) or ``requeue`` (back to its queue). A second settlement raises
``MessageStateError``: acking twice is a bug that would otherwise hide a lost message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from celeriac.exceptions import MessageStateError
from celeriac.messaging import compression, serialization
from celeriac.transports.base import Delivery, Properties

if TYPE_CHECKING:
    from celeriac.messaging.connection import Channel

State = Literal["RECEIVED", "ACK", "REJECTED", "REQUEUED"]
_UNSET: Any = object()


class Message:
    """One delivery to a consumer.

    Attributes:
        channel: The channel it was delivered on.
        accept: Content types the consumer accepts (None accepts every type).
        state: ``RECEIVED`` until settled, then ``ACK``, ``REJECTED`` or ``REQUEUED``.
    """

    __slots__ = ("_decoded", "_delivery", "_on_settle", "accept", "channel", "state")

    def __init__(
        self,
        delivery: Delivery,
        channel: Channel,
        accept: frozenset[str] | None,
        on_settle: Callable[[Message], None] | None = None,
    ) -> None:
        self._delivery = delivery
        self.channel = channel
        self.accept = accept
        self.state: State = "RECEIVED"
        self._on_settle = on_settle
        self._decoded: Any = _UNSET

    # -- content --------------------------------------------------------------------------
    @property
    def body(self) -> bytes:
        """The raw (serialized, possibly compressed) body."""
        return self._delivery.envelope.body

    @property
    def headers(self) -> Mapping[str, Any]:
        """Application headers."""
        return self._delivery.envelope.headers

    @property
    def properties(self) -> Properties:
        """AMQP basic properties."""
        return self._delivery.envelope.properties

    @property
    def content_type(self) -> str | None:
        """MIME type of the serialized body."""
        return self._delivery.envelope.properties.content_type

    @property
    def content_encoding(self) -> str | None:
        """Character encoding of the body (``binary`` for bytes)."""
        return self._delivery.envelope.properties.content_encoding

    @property
    def delivery_tag(self) -> int:
        """Identifies this delivery on its channel."""
        return self._delivery.delivery_tag

    @property
    def redelivered(self) -> bool:
        """True when the message was delivered before and not acked."""
        return self._delivery.redelivered

    @property
    def delivery_info(self) -> dict[str, Any]:
        """Exchange, routing key, queue, redelivered flag and delivery tag, as kombu has it."""
        d = self._delivery
        return {
            "exchange": d.exchange,
            "routing_key": d.routing_key,
            "queue": d.queue,
            "redelivered": d.redelivered,
            "delivery_tag": d.delivery_tag,
        }

    @property
    def payload(self) -> Any:
        """The decoded body (decoded once, then cached)."""
        return self.decode()

    def decode(self) -> Any:
        """Decompress and deserialize the body.

        Raises:
            ContentDisallowed: The content type is not accepted; nothing was decoded.
            DecodeError: The body is corrupt.
        """
        if self._decoded is _UNSET:
            serialization.check_accept(self.content_type, self.accept)
            body = self.body
            encoding = self.headers.get("compression")
            if encoding:
                body = compression.decompress(body, str(encoding))
            self._decoded = serialization.loads(
                body, self.content_type, self.content_encoding, accept=self.accept
            )
        return self._decoded

    # -- settlement -----------------------------------------------------------------------
    @property
    def acknowledged(self) -> bool:
        """True once the message was acked, rejected or requeued."""
        return self.state != "RECEIVED"

    def _check_unsettled(self, action: str) -> None:
        if self.state != "RECEIVED":
            raise MessageStateError(
                f"Message {self.delivery_tag} was already settled ({self.state}); "
                f"cannot {action} it again"
            )

    def mark_settled(self, state: State) -> None:
        """Record a settlement made by a batch call on the transport (``asettle_many``)."""
        self._check_unsettled(state.lower())
        self._settled(state)

    def _settled(self, state: State) -> None:
        # Recorded only once the broker took the settlement: after a broker error the
        # message is still unsettled here, as it is on the broker.
        self.state = state
        if self._on_settle is not None:
            self._on_settle(self)

    def ack(self) -> None:
        """Acknowledge: the message is done and leaves the broker."""
        self._check_unsettled("ack")
        self.channel.transport.ack([self.delivery_tag])
        self._settled("ACK")

    def reject(self, requeue: bool = False) -> None:
        """Reject: dead-letter (or drop) the message, or return it to its queue."""
        self._check_unsettled("reject")
        self.channel.transport.reject([self.delivery_tag], requeue)
        self._settled("REQUEUED" if requeue else "REJECTED")

    def requeue(self) -> None:
        """Return the message to its queue, to be delivered again (marked redelivered)."""
        self.reject(requeue=True)

    async def aack(self) -> None:
        """``ack`` for asyncio code: the broker call does not block the event loop."""
        self._check_unsettled("ack")
        conn = self.channel.connection
        await conn.arun(conn.transport.ack, [self.delivery_tag])
        self._settled("ACK")

    async def areject(self, requeue: bool = False) -> None:
        """``reject`` for asyncio code."""
        self._check_unsettled("reject")
        conn = self.channel.connection
        await conn.arun(conn.transport.reject, [self.delivery_tag], requeue)
        self._settled("REQUEUED" if requeue else "REJECTED")

    async def arequeue(self) -> None:
        """``requeue`` for asyncio code."""
        await self.areject(requeue=True)

    def __repr__(self) -> str:
        return (
            f"<Message tag={self.delivery_tag} {self.state} "
            f"content_type={self.content_type!r} queue={self._delivery.queue!r}>"
        )
