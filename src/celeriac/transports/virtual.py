"""Queue policies for brokers without native AMQP queues (memory, SQLite, Redis).

RabbitMQ applies TTLs, length limits, delivery limits and dead-lettering itself. Brokers that
store plain lists of messages get the same behaviour from this one module, so the rules are
written once: which priority a message is stored under, when it expires, and where it goes
when it dies (with the ``x-death`` header RabbitMQ would have added).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from celeriac.messaging.entities import Queue
from celeriac.transports.base import Envelope, Properties

DeathReason = Literal["rejected", "expired", "maxlen", "delivery_limit"]

#: Priorities are clamped to this when a queue does not set ``max_priority``.
DEFAULT_MAX_PRIORITY = 255


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """The per-queue rules an emulating transport enforces (a ``Queue``'s arguments)."""

    max_priority: int | None = None
    message_ttl: float | None = None
    expires: float | None = None
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None
    max_length: int | None = None
    delivery_limit: int | None = None

    @classmethod
    def of(cls, queue: Queue) -> QueuePolicy:
        """The policy a declared ``queue`` asks for."""
        return cls(
            max_priority=queue.max_priority,
            message_ttl=queue.message_ttl,
            expires=queue.expires,
            dead_letter_exchange=queue.dead_letter_exchange,
            dead_letter_routing_key=queue.dead_letter_routing_key,
            max_length=queue.max_length,
            delivery_limit=queue.delivery_limit,
        )

    def to_json(self) -> str:
        """Compact JSON of the set fields (for storage)."""
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None})

    @classmethod
    def from_json(cls, text: str) -> QueuePolicy:
        """Inverse of ``to_json``."""
        return cls(**json.loads(text))

    def priority_of(self, properties: Properties) -> int:
        """The priority a message is stored under: its own, clamped to the queue's range."""
        priority = properties.priority or 0
        ceiling = DEFAULT_MAX_PRIORITY if self.max_priority is None else self.max_priority
        return max(0, min(int(priority), ceiling))

    def expires_at(self, properties: Properties, now: float) -> float | None:
        """When a message published ``now`` expires: the sooner of its and the queue's TTL."""
        ttls = [t for t in (properties.expiration, self.message_ttl) if t is not None]
        return now + min(ttls) if ttls else None

    def over_delivery_limit(self, delivery_count: int) -> bool:
        """True when a message already delivered ``delivery_count`` times may not go again."""
        return self.delivery_limit is not None and delivery_count > self.delivery_limit

    def dead_letter(
        self,
        envelope: Envelope,
        queue: str,
        exchange: str,
        routing_key: str,
        reason: DeathReason,
    ) -> tuple[str, str, Envelope] | None:
        """Where a dying message goes: (exchange, routing key, envelope with ``x-death``).

        None when the queue has no dead-letter exchange (the message is dropped).
        """
        if self.dead_letter_exchange is None:
            return None
        key = self.dead_letter_routing_key
        if key is None:
            key = routing_key
        headers = dict(envelope.headers)
        headers["x-death"] = _add_death(
            headers.get("x-death"), queue, exchange, routing_key, reason
        )
        headers.setdefault("x-first-death-reason", reason)
        headers.setdefault("x-first-death-queue", queue)
        # A dead-lettered message must not expire again on its per-message TTL (RabbitMQ
        # removes the expiration property for the same reason).
        properties = replace(envelope.properties, expiration=None)
        return self.dead_letter_exchange, key, Envelope(envelope.body, headers, properties)


def _add_death(
    deaths: Any, queue: str, exchange: str, routing_key: str, reason: DeathReason
) -> list[dict[str, Any]]:
    """RabbitMQ's ``x-death``: one entry per (queue, reason), newest first, with a count."""
    entries: list[dict[str, Any]] = [dict(d) for d in deaths] if isinstance(deaths, list) else []
    for i, entry in enumerate(entries):
        if entry.get("queue") == queue and entry.get("reason") == reason:
            entry["count"] = int(entry.get("count", 0)) + 1
            entry["time"] = time.time()
            entries.insert(0, entries.pop(i))
            return entries
    entries.insert(
        0,
        {
            "queue": queue,
            "reason": reason,
            "count": 1,
            "exchange": exchange,
            "routing-keys": [routing_key],
            "time": time.time(),
        },
    )
    return entries
