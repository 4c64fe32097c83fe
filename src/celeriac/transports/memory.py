"""In-process transport (``memory://``), for tests and eager use.

| feature                         | supported                                   |
|---------------------------------|---------------------------------------------|
| exchanges                       | direct, fanout, topic, headers (emulated)   |
| priorities, TTL, dead-lettering | yes                                         |
| delivery limit, max length      | yes                                         |
| shared between processes        | no: one broker per process and virtual host |
| survives the process            | no                                          |

Every connection to the same URL in one process shares one broker (``memory://`` and
``memory://other`` are two brokers). A session's unacked messages go back to their queues,
marked redelivered, when it closes.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from celeriac.exceptions import NotFound
from celeriac.messaging.entities import Binding, Exchange, Queue
from celeriac.messaging.routing import BindingSpec, route
from celeriac.transports.base import Capabilities, Delivery, Envelope, Outgoing, Transport
from celeriac.transports.virtual import DeathReason, QueuePolicy


@dataclass(slots=True)
class _Stored:
    envelope: Envelope
    exchange: str
    routing_key: str
    expires_at: float | None
    redelivered: bool = False
    delivery_count: int = 0


@dataclass(slots=True)
class _MemQueue:
    name: str
    policy: QueuePolicy
    owner: int | None
    # Heap of (-priority, sequence, message): highest priority first, FIFO within one.
    ready: list[tuple[int, int, _Stored]] = field(default_factory=list)
    # Earliest expiry among ready messages (None: none can expire), so expired messages
    # are dead-lettered on time even in queues nobody consumes.
    next_expiry: float | None = None
    # Heap of (visible_at, sequence, message) returned by ``defer``.
    deferred: list[tuple[float, int, _Stored]] = field(default_factory=list)


class _Broker:
    """The shared state of one in-process broker."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.exchanges: dict[str, Exchange] = {}
        self.bindings: dict[str, list[BindingSpec]] = {}
        self.queues: dict[str, _MemQueue] = {}
        self.sequence = itertools.count()
        self.tags = itertools.count(1)
        # Bumped whenever a message becomes ready, so a session that fetched nothing does
        # not sleep through a publish that came between its fetch and its wait.
        self.generation = 0


_brokers: dict[str, _Broker] = {}
_brokers_lock = threading.Lock()
_session_ids = itertools.count(1)


def _broker_for(url: str) -> _Broker:
    with _brokers_lock:
        return _brokers.setdefault(url.rstrip("/"), _Broker())


class MemoryTransport(Transport):
    """A session with the process-wide in-memory broker named by the URL."""

    schemes: ClassVar[tuple[str, ...]] = ("memory",)
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        self._broker = _broker_for(url)
        self._id = next(_session_ids)
        self._unacked: dict[int, tuple[str, _Stored]] = {}
        self._rotation = 0
        self._seen_generation = -1

    # -- topology -------------------------------------------------------------------------
    def declare_exchange(self, exchange: Exchange) -> None:
        if not exchange.name:
            return
        with self._broker.cond:
            self._broker.exchanges.setdefault(exchange.name, exchange)
            self._broker.bindings.setdefault(exchange.name, [])

    def delete_exchange(self, name: str) -> None:
        with self._broker.cond:
            self._broker.exchanges.pop(name, None)
            self._broker.bindings.pop(name, None)

    def declare_queue(self, queue: Queue) -> None:
        owner = self._id if (queue.exclusive or queue.auto_delete) else None
        with self._broker.cond:
            if queue.name not in self._broker.queues:
                self._broker.queues[queue.name] = _MemQueue(
                    queue.name, QueuePolicy.of(queue), owner
                )
            for binding in queue.all_bindings():
                self._bind_locked(queue.name, binding)

    def delete_queue(self, name: str) -> None:
        with self._broker.cond:
            self._broker.queues.pop(name, None)
            for specs in self._broker.bindings.values():
                specs[:] = [s for s in specs if s.queue != name]

    def bind(self, queue: str, binding: Binding) -> None:
        with self._broker.cond:
            self._bind_locked(queue, binding)

    def _bind_locked(self, queue: str, binding: Binding) -> None:
        if binding.exchange.name not in self._broker.exchanges:
            raise NotFound(f"cannot bind {queue!r}: no exchange {binding.exchange.name!r}")
        spec = BindingSpec(queue, binding.routing_key, dict(binding.arguments))
        specs = self._broker.bindings[binding.exchange.name]
        if spec not in specs:
            specs.append(spec)

    def unbind(self, queue: str, binding: Binding) -> None:
        spec = BindingSpec(queue, binding.routing_key, dict(binding.arguments))
        with self._broker.cond:
            specs = self._broker.bindings.get(binding.exchange.name, [])
            if spec in specs:
                specs.remove(spec)

    def queue_length(self, name: str) -> int:
        with self._broker.cond:
            self._sweep_locked(time.time())
            q = self._broker.queues.get(name)
            return len(q.ready) + len(q.deferred) if q else 0

    def purge(self, name: str) -> int:
        with self._broker.cond:
            q = self._broker.queues.get(name)
            if q is None:
                return 0
            count = len(q.ready)
            count += len(q.deferred)
            q.ready.clear()
            q.deferred.clear()
            return count

    # -- messages -------------------------------------------------------------------------
    def publish(self, messages: Sequence[Outgoing]) -> None:
        now = time.time()
        with self._broker.cond:
            # Route everything first: a batch naming a missing exchange stores nothing.
            routes = [
                (out, self._route_locked(out.exchange, out.routing_key, out.envelope))
                for out in messages
            ]
            for out, queues in routes:
                for queue in queues:
                    self._put_locked(queue, out.envelope, out.exchange, out.routing_key, now)
            self._notify_locked()

    def _notify_locked(self) -> None:
        self._broker.generation += 1
        self._broker.cond.notify_all()

    def _route_locked(self, exchange: str, routing_key: str, envelope: Envelope) -> list[str]:
        if not exchange:
            return [routing_key] if routing_key in self._broker.queues else []
        ex = self._broker.exchanges.get(exchange)
        if ex is None:
            raise NotFound(f"no exchange {exchange!r} (declare it first)")
        bindings = self._broker.bindings.get(exchange, [])
        return route(ex.type, bindings, routing_key, envelope.headers)

    def _put_locked(
        self,
        queue: str,
        envelope: Envelope,
        exchange: str,
        routing_key: str,
        now: float,
        redelivered: bool = False,
        delivery_count: int = 0,
    ) -> None:
        q = self._broker.queues.get(queue)
        if q is None:
            return
        stored = _Stored(
            envelope,
            exchange,
            routing_key,
            q.policy.expires_at(envelope.properties, now),
            redelivered,
            delivery_count,
        )
        self._push(q, stored)
        if q.policy.max_length is not None:
            while len(q.ready) > q.policy.max_length:
                oldest = min(q.ready, key=lambda item: item[1])
                q.ready.remove(oldest)
                heapq.heapify(q.ready)
                self._dead_letter_locked(q, oldest[2], "maxlen", now)

    def _push(self, q: _MemQueue, stored: _Stored) -> None:
        priority = q.policy.priority_of(stored.envelope.properties)
        heapq.heappush(q.ready, (-priority, next(self._broker.sequence), stored))
        if stored.expires_at is not None and (
            q.next_expiry is None or stored.expires_at < q.next_expiry
        ):
            q.next_expiry = stored.expires_at

    def _sweep_locked(self, now: float) -> None:
        """Make due deferred messages ready; dead-letter expired ready ones."""
        for q in list(self._broker.queues.values()):
            while q.deferred and q.deferred[0][0] <= now:
                self._push(q, heapq.heappop(q.deferred)[2])
            if q.next_expiry is None or q.next_expiry > now:
                continue
            expired: list[tuple[int, int, _Stored]] = []
            kept: list[tuple[int, int, _Stored]] = []
            for item in q.ready:
                expires_at = item[2].expires_at
                (expired if expires_at is not None and expires_at <= now else kept).append(item)
            q.ready = kept
            heapq.heapify(q.ready)
            pending = [i[2].expires_at for i in q.ready if i[2].expires_at is not None]
            q.next_expiry = min(pending) if pending else None
            for item in expired:
                self._dead_letter_locked(q, item[2], "expired", now)

    def _dead_letter_locked(
        self, q: _MemQueue, stored: _Stored, reason: DeathReason, now: float
    ) -> None:
        target = q.policy.dead_letter(
            stored.envelope, q.name, stored.exchange, stored.routing_key, reason
        )
        if target is None:
            return
        exchange, routing_key, envelope = target
        try:
            queues = self._route_locked(exchange, routing_key, envelope)
        except NotFound:
            return  # RabbitMQ drops messages dead-lettered to a missing exchange, too.
        for name in queues:
            self._put_locked(name, envelope, exchange, routing_key, now)

    def fetch(self, queues: Sequence[str], limit: int, ack: Sequence[int] = ()) -> list[Delivery]:
        out: list[Delivery] = []
        now = time.time()
        with self._broker.cond:
            for tag in ack:
                self._unacked.pop(tag, None)
            self._sweep_locked(now)
            self._seen_generation = self._broker.generation
            start = self._rotation % max(len(queues), 1)
            self._rotation += 1
            for name in itertools.chain(queues[start:], queues[:start]):
                q = self._broker.queues.get(name)
                while q is not None and q.ready and len(out) < limit:
                    stored = heapq.heappop(q.ready)[2]
                    if stored.expires_at is not None and stored.expires_at <= now:
                        self._dead_letter_locked(q, stored, "expired", now)
                        continue
                    if q.policy.over_delivery_limit(stored.delivery_count):
                        self._dead_letter_locked(q, stored, "delivery_limit", now)
                        continue
                    stored.delivery_count += 1
                    tag = next(self._broker.tags)
                    self._unacked[tag] = (name, stored)
                    out.append(
                        Delivery(
                            stored.envelope,
                            tag,
                            name,
                            stored.exchange,
                            stored.routing_key,
                            stored.redelivered,
                        )
                    )
        return out

    def ack(self, delivery_tags: Sequence[int]) -> None:
        with self._broker.cond:
            for tag in delivery_tags:
                self._unacked.pop(tag, None)

    def reject(self, delivery_tags: Sequence[int], requeue: bool) -> None:
        now = time.time()
        with self._broker.cond:
            for tag in delivery_tags:
                held = self._unacked.pop(tag, None)
                if held is not None:
                    self._return_locked(held[0], held[1], requeue, now)
            self._notify_locked()

    def _return_locked(self, queue: str, stored: _Stored, requeue: bool, now: float) -> None:
        q = self._broker.queues.get(queue)
        if q is None:
            return
        if requeue:
            stored.redelivered = True
            self._push(q, stored)
        else:
            self._dead_letter_locked(q, stored, "rejected", now)

    def _next_due_locked(self) -> float:
        """Seconds until the next deferred message becomes ready (a long time if none)."""
        times = [q.deferred[0][0] for q in self._broker.queues.values() if q.deferred]
        return max(0.0, min(times) - time.time()) if times else 3600.0

    def defer(self, deferrals: Sequence[tuple[int, float]]) -> None:
        with self._broker.cond:
            for tag, until in deferrals:
                held = self._unacked.pop(tag, None)
                q = self._broker.queues.get(held[0]) if held else None
                if held is None or q is None:
                    continue
                stored = held[1]
                stored.delivery_count -= 1
                heapq.heappush(q.deferred, (until, next(self._broker.sequence), stored))

    def wait(self, timeout: float) -> None:
        with self._broker.cond:
            if self._broker.generation == self._seen_generation:
                self._broker.cond.wait(min(timeout, self._next_due_locked()))

    def wake(self) -> None:
        with self._broker.cond:
            self._broker.cond.notify_all()

    def close(self) -> None:
        now = time.time()
        with self._broker.cond:
            for queue, stored in self._unacked.values():
                self._return_locked(queue, stored, True, now)
            self._unacked.clear()
            owned = [q.name for q in self._broker.queues.values() if q.owner == self._id]
            for name in owned:
                self._broker.queues.pop(name, None)
                for specs in self._broker.bindings.values():
                    specs[:] = [s for s in specs if s.queue != name]
            self._notify_locked()
