"""The AMQP model: exchanges, queues and the bindings between them.

These are plain frozen values. Declaring them is a transport's job (``Connection.declare`` or
``Producer.publish(declare=[...])``); a value can be declared on any number of connections.
Durations are in seconds (as in kombu), whatever unit the broker itself uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from celeriac.messaging.routing import EXCHANGE_TYPES


@dataclass(frozen=True, slots=True)
class Exchange:
    """A named router of messages; its type decides how bindings match.

    Attributes:
        name: Exchange name. The empty name is the default exchange, which routes a message
            to the queue named by its routing key.
        type: ``direct`` (exact key), ``fanout`` (every bound queue), ``topic`` (``*`` one
            word, ``#`` zero or more) or ``headers`` (``x-match`` all/any on headers).
        durable: Survives a broker restart.
        auto_delete: Deleted when its last binding goes.
        arguments: Broker-specific arguments.
    """

    name: str = ""
    type: str = "direct"
    durable: bool = True
    auto_delete: bool = False
    arguments: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.type not in EXCHANGE_TYPES:
            valid = ", ".join(sorted(EXCHANGE_TYPES))
            raise ValueError(f"Exchange {self.name!r}: unknown type {self.type!r} (use {valid})")


DEFAULT_EXCHANGE = Exchange("")


@dataclass(frozen=True, slots=True)
class Binding:
    """A rule that sends messages from an exchange to a queue.

    Attributes:
        exchange: The source exchange.
        routing_key: The binding key (a pattern for topic exchanges).
        arguments: For headers exchanges, the headers to match plus ``x-match``.
    """

    exchange: Exchange
    routing_key: str = ""
    arguments: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Queue:
    """A named buffer of messages, bound to one or more exchanges.

    With ``exchange`` given, the queue is bound to it with ``routing_key`` (the queue's name
    when empty and the exchange is direct). ``bindings`` adds more.

    Attributes:
        name: Queue name.
        exchange: Exchange to bind to, or None for no primary binding.
        routing_key: Binding key of the primary binding.
        bindings: Further bindings.
        durable: Survives a broker restart.
        exclusive: Used by the declaring connection alone and deleted when it closes.
        auto_delete: Deleted when the connection that declared it goes away.
        max_priority: Highest message priority honoured (0-255; None disables priorities).
        message_ttl: Seconds a message may wait in the queue before it expires.
        expires: Seconds the queue may stay unused before the broker deletes it.
        dead_letter_exchange: Where rejected, expired and over-limit messages go.
        dead_letter_routing_key: Routing key for dead-lettered messages (theirs when None).
        max_length: Most ready messages held; the oldest are dropped (dead-lettered) first.
        delivery_limit: Deliveries beyond the first after which a message is dead-lettered.
    """

    name: str
    exchange: Exchange | None = None
    routing_key: str = ""
    bindings: Sequence[Binding] = ()
    durable: bool = True
    exclusive: bool = False
    auto_delete: bool = False
    max_priority: int | None = None
    message_ttl: float | None = None
    expires: float | None = None
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None
    max_length: int | None = None
    delivery_limit: int | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("Queue needs a name")
        if self.max_priority is not None and not 0 <= self.max_priority <= 255:
            raise ValueError(f"Queue {self.name!r}: max_priority must be 0-255")
        for label, value in (
            ("message_ttl", self.message_ttl),
            ("expires", self.expires),
            ("max_length", self.max_length),
            ("delivery_limit", self.delivery_limit),
        ):
            if value is not None and value < 0:
                raise ValueError(f"Queue {self.name!r}: {label} must not be negative")

    def all_bindings(self) -> list[Binding]:
        """The primary binding (if any) followed by the extra ones."""
        result: list[Binding] = []
        if self.exchange is not None and self.exchange.name:
            key = self.routing_key
            if not key and self.exchange.type == "direct":
                key = self.name
            result.append(Binding(self.exchange, key))
        result.extend(self.bindings)
        return result

    def exchanges(self) -> list[Exchange]:
        """Every named exchange this queue's bindings need declared."""
        seen: dict[str, Exchange] = {}
        for binding in self.all_bindings():
            seen.setdefault(binding.exchange.name, binding.exchange)
        return list(seen.values())
