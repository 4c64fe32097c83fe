"""The contract every broker transport fills in.

A transport is one client session with a broker: it declares exchanges, queues and bindings,
publishes envelopes, fetches deliveries for its consumers and settles them. The messaging
layer (``Connection``, ``Producer``, ``Consumer``, ``Message``) is written once on top of this
contract, for both the synchronous and the asyncio face.

Methods are synchronous. A transport whose operations may block (disk, network) says so with
``capabilities.blocking_io``, and the asyncio face then runs them on the connection's own
I/O thread instead of the event loop. ``await_ready`` is the one asynchronous hook: the
default parks a thread in ``wait``; a transport that can wake an event loop directly
overrides it.

Semantics every transport keeps (checked by ``celeriac.testing.contract``):

- at-least-once: a fetched message leaves the broker only when acked; what a session held
  unacked when it closed or died comes back with ``redelivered`` set;
- ``reject(requeue=True)`` returns a message at once, ``reject(requeue=False)`` dead-letters
  it (or drops it when its queue has no dead-letter exchange);
- higher priority first, FIFO within a priority.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:
    from celeriac.messaging.entities import Binding, Exchange, Queue

T = TypeVar("T")


class WouldBlock(Exception):
    """Raised by ``Transport.call_nowait`` when the call would have to wait."""


@dataclass(frozen=True, slots=True)
class Properties:
    """AMQP basic properties of a message.

    ``expiration`` is in seconds (kombu's unit), ``timestamp`` in seconds since the epoch.
    """

    content_type: str | None = None
    content_encoding: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    delivery_mode: int = 2
    priority: int | None = None
    expiration: float | None = None
    message_id: str | None = None
    timestamp: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The properties that are set, as a plain dict (for storage)."""
        out: dict[str, Any] = {}
        for f in _PROPERTY_FIELDS:
            value = getattr(self, f)
            if value is not None:
                out[f] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Properties:
        """Rebuild from ``to_dict`` output, ignoring keys this version does not know."""
        return cls(**{k: v for k, v in data.items() if k in _PROPERTY_FIELDS})


_PROPERTY_FIELDS = tuple(f.name for f in fields(Properties))


@dataclass(frozen=True, slots=True)
class Envelope:
    """A message as it travels: body bytes, application headers and properties."""

    body: bytes
    headers: Mapping[str, Any] = field(default_factory=dict)
    properties: Properties = field(default_factory=Properties)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One envelope to publish, with its destination."""

    envelope: Envelope
    exchange: str
    routing_key: str


@dataclass(frozen=True, slots=True)
class Delivery:
    """One envelope handed to a consumer; settle it by ``delivery_tag``."""

    envelope: Envelope
    delivery_tag: int
    queue: str
    exchange: str
    routing_key: str
    redelivered: bool


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a transport implements, as data (shown by ``celeriac`` tooling and tests).

    Attributes:
        native_exchanges: Routing happens in the broker rather than in celeriac's emulation.
        priorities: Honours message priority.
        message_ttl: Expires messages (per message and per queue).
        dead_lettering: Sends rejected/expired messages to a dead-letter exchange.
        delivery_limit: Dead-letters messages delivered too many times.
        max_length: Bounds queue length, dropping the oldest.
        cross_process: Several processes can share the broker.
        persistent: Messages survive the process (and a broker restart when durable).
        blocking_io: Operations may block; the asyncio face runs them on an I/O thread.
        async_consume: ``afetch`` and ``aack`` do their I/O on the running event loop; the
            asyncio face calls them instead of ``fetch`` and ``ack`` on the I/O thread.
    """

    native_exchanges: bool = False
    priorities: bool = True
    message_ttl: bool = True
    dead_lettering: bool = True
    delivery_limit: bool = True
    max_length: bool = True
    cross_process: bool = False
    persistent: bool = False
    blocking_io: bool = False
    async_consume: bool = False


class Transport(ABC):
    """One client session with a broker. Subclasses fill in the abstract methods."""

    #: Registered URL schemes handled by this transport (the first is canonical).
    schemes: ClassVar[tuple[str, ...]] = ()
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: Errors after which reconnecting and retrying can succeed.
    recoverable_errors: ClassVar[tuple[type[BaseException], ...]] = (ConnectionError,)

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.options: Mapping[str, Any] = dict(options or {})

    # -- topology -------------------------------------------------------------------------
    @abstractmethod
    def declare_exchange(self, exchange: Exchange) -> None:
        """Create ``exchange`` if it does not exist (idempotent)."""

    @abstractmethod
    def delete_exchange(self, name: str) -> None:
        """Delete an exchange and its bindings; missing is not an error."""

    @abstractmethod
    def declare_queue(self, queue: Queue) -> None:
        """Create ``queue`` and its bindings if missing (idempotent; exchanges must exist)."""

    @abstractmethod
    def delete_queue(self, name: str) -> None:
        """Delete a queue, its messages and bindings; missing is not an error."""

    @abstractmethod
    def bind(self, queue: str, binding: Binding) -> None:
        """Add a binding from ``binding.exchange`` to ``queue`` (idempotent)."""

    @abstractmethod
    def unbind(self, queue: str, binding: Binding) -> None:
        """Remove a binding; missing is not an error."""

    @abstractmethod
    def queue_length(self, name: str) -> int:
        """Messages waiting in ``name``: ready or deferred (not those held by consumers)."""

    @abstractmethod
    def purge(self, name: str) -> int:
        """Delete the ready messages of ``name``; returns how many."""

    # -- messages -------------------------------------------------------------------------
    @abstractmethod
    def publish(self, messages: Sequence[Outgoing]) -> None:
        """Route and store ``messages``, all or none (one transaction where there is one).

        Raises:
            NotFound: An exchange named by a message does not exist.
        """

    @abstractmethod
    def fetch(self, queues: Sequence[str], limit: int, ack: Sequence[int] = ()) -> list[Delivery]:
        """Take up to ``limit`` ready messages from ``queues``, leased to this session.

        ``ack`` settles earlier deliveries first, in the same transaction where the broker
        has them: a consumer that acks what it finished while asking for more pays one
        round trip, not two.
        """

    @abstractmethod
    def ack(self, delivery_tags: Sequence[int]) -> None:
        """Settle deliveries as done: the messages leave the broker."""

    async def afetch(
        self, queues: Sequence[str], limit: int, ack: Sequence[int] = ()
    ) -> list[Delivery]:
        """``fetch`` from asyncio code, for transports with ``capabilities.async_consume``.

        Runs on the caller's event loop without blocking it. One consumer's calls (fetch,
        ack, reject, defer, in either face) are made one at a time.
        """
        raise NotImplementedError(f"{type(self).__name__} does not consume from a loop")

    async def aack(self, delivery_tags: Sequence[int]) -> None:
        """``ack`` from asyncio code, for transports with ``capabilities.async_consume``."""
        raise NotImplementedError(f"{type(self).__name__} does not consume from a loop")

    @abstractmethod
    def reject(self, delivery_tags: Sequence[int], requeue: bool) -> None:
        """Return deliveries to their queues, or dead-letter them when not requeued."""

    @abstractmethod
    def defer(self, deferrals: Sequence[tuple[int, float]]) -> None:
        """Return deliveries to their queues, each hidden from consumers until a time.

        ``deferrals`` pairs a delivery tag with a wall-clock time (``time.time()``). The
        worker uses this for ETA tasks it will not hold in memory; a deferral is not a
        failed delivery (it does not count towards ``delivery_limit``).
        """

    @abstractmethod
    def wait(self, timeout: float) -> None:
        """Block until a message may have become ready, or ``timeout`` seconds passed."""

    def call_nowait(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` here only if it will not wait on the broker; else WouldBlock.

        Lets the asyncio face skip the I/O thread for quick calls. The default never runs
        inline; a transport that can tell (SQLite: the file's write lock is free) overrides.
        """
        raise WouldBlock

    async def await_ready(self, timeout: float) -> None:
        """Asynchronous ``wait``; the default parks a worker thread in ``wait``."""
        await asyncio.to_thread(self.wait, timeout)

    def qos(self, queues: Sequence[str], prefetch_count: int) -> None:  # noqa: B027
        """Hear the window of the consumer of ``queues``: most unacked messages it holds.

        0 means no window: the consumer asks for what it wants through ``fetch``. A push
        transport (AMQP) consumes ``queues`` with this prefetch so the broker sends ahead;
        pull transports need nothing (the default does nothing).
        """

    def wake(self) -> None:  # noqa: B027 (optional hook, not abstract)
        """Make a pending ``wait`` of this session return early (used on shutdown)."""

    @abstractmethod
    def close(self) -> None:
        """End the session; unacked messages return to their queues as redelivered."""
