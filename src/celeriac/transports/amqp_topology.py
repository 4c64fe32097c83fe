"""What an ``amqp://`` session declared, and the channel operations that declare it.

RabbitMQ keeps durable exchanges and queues across a restart, but not the others (private
reply queues, auto-delete queues, their bindings), so a session that reconnects declares
again everything it had declared (``replay``), in the order it first did: exchanges, queues
with their bindings, then the bindings added one by one.

The ``*_op`` functions run on the network thread with a pika channel; pika sends a channel's
calls one after another, so a run of them needs only its last one's answer (``done``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from pika.channel import Channel

from celeriac.messaging.entities import Binding, Exchange, Queue
from celeriac.transports import amqp_wire as wire

Done = Callable[[Any], None]
BindingKey = tuple[str, str, str, str]


def declare_exchange_op(exchange: Exchange, ch: Channel, done: Done | None) -> None:
    ch.exchange_declare(
        exchange.name,
        exchange_type=exchange.type,
        durable=exchange.durable,
        auto_delete=exchange.auto_delete,
        arguments=dict(exchange.arguments) or None,
        callback=done,
    )


def declare_queue_op(queue: Queue, queue_type: str | None, ch: Channel, done: Done | None) -> None:
    """Declare ``queue`` with exactly its arguments, then its bindings."""
    bindings = queue.all_bindings()
    ch.queue_declare(
        queue.name,
        durable=queue.durable,
        exclusive=queue.exclusive,
        auto_delete=queue.auto_delete,
        arguments=wire.queue_arguments(queue, queue_type) or None,
        callback=None if bindings else done,
    )
    for i, binding in enumerate(bindings):
        bind_op(queue.name, binding, ch, done if i == len(bindings) - 1 else None)


def bind_op(queue: str, binding: Binding, ch: Channel, done: Done | None) -> None:
    ch.queue_bind(
        queue,
        binding.exchange.name,
        routing_key=binding.routing_key,
        arguments=dict(binding.arguments) or None,
        callback=done,
    )


def unbind_op(queue: str, binding: Binding, ch: Channel, done: Done) -> None:
    ch.queue_unbind(
        queue,
        binding.exchange.name,
        routing_key=binding.routing_key,
        arguments=dict(binding.arguments) or None,
        callback=done,
    )


def delete_queues_op(names: list[str], ch: Channel, done: Done) -> None:
    """Delete queues (a missing one is not an error); ``done`` gets how many messages went."""
    counts: list[int] = []
    for i, name in enumerate(names):

        def deleted(frame: Any, last: bool = i == len(names) - 1) -> None:
            counts.append(frame.method.message_count)
            if last:
                done(sum(counts))

        ch.queue_delete(name, callback=deleted)


def passive_exchange_op(name: str, ch: Channel, done: Done) -> None:
    ch.exchange_declare(name, passive=True, callback=done)


def passive_queue_op(name: str, ch: Channel, done: Done) -> None:
    """``done`` gets the queue's ready count (or the channel closes with 404)."""
    ch.queue_declare(name, passive=True, callback=lambda frame: done(frame.method.message_count))


def declare_bucket_op(name: str, arguments: dict[str, Any], ch: Channel, done: Done) -> None:
    ch.queue_declare(name, durable=True, arguments=arguments, callback=done)


class Topology:
    """The exchanges, queues and bindings a session declared (thread-safe)."""

    def __init__(self, queue_type: str | None) -> None:
        self.queue_type = queue_type
        self._lock = threading.Lock()
        self.exchanges: dict[str, Exchange] = {}
        self.queues: dict[str, Queue] = {}
        self.bindings: dict[BindingKey, tuple[str, Binding]] = {}
        #: Exchanges known to exist: declared here, or checked once.
        self.known_exchanges: set[str] = {""}

    def added_exchange(self, exchange: Exchange) -> None:
        with self._lock:
            self.exchanges[exchange.name] = exchange
            self.known_exchanges.add(exchange.name)

    def unknown_exchanges(self, names: Iterable[str]) -> set[str]:
        """Those of ``names`` not known to exist yet."""
        with self._lock:
            return set(names) - self.known_exchanges

    def known_exchange(self, name: str) -> None:
        with self._lock:
            self.known_exchanges.add(name)

    def removed_exchange(self, name: str) -> None:
        with self._lock:
            self.exchanges.pop(name, None)
            self.known_exchanges.discard(name)
            for key in [k for k in self.bindings if k[1] == name]:
                del self.bindings[key]

    def added_queue(self, queue: Queue) -> None:
        with self._lock:
            self.queues[queue.name] = queue

    def removed_queue(self, name: str) -> None:
        with self._lock:
            self.queues.pop(name, None)
            for key in [k for k in self.bindings if k[0] == name]:
                del self.bindings[key]

    @staticmethod
    def _key(queue: str, binding: Binding) -> BindingKey:
        args = repr(sorted(binding.arguments.items()))
        return (queue, binding.exchange.name, binding.routing_key, args)

    def added_binding(self, queue: str, binding: Binding) -> None:
        with self._lock:
            self.bindings[self._key(queue, binding)] = (queue, binding)

    def removed_binding(self, queue: str, binding: Binding) -> None:
        with self._lock:
            self.bindings.pop(self._key(queue, binding), None)

    def is_auto_delete(self, name: str) -> bool:
        """Whether ``name`` was declared here as an auto-delete queue."""
        queue = self.queues.get(name)  # one dict read: atomic, no lock needed
        return queue is not None and queue.auto_delete

    def auto_delete_queues(self) -> list[str]:
        with self._lock:
            return [q.name for q in self.queues.values() if q.auto_delete]

    def replay(self, run: Callable[[Callable[[Channel], None]], None]) -> None:
        """Declare everything again through ``run(op)`` (network thread, no waiting)."""
        with self._lock:
            exchanges = list(self.exchanges.values())
            queues = list(self.queues.values())
            bindings = list(self.bindings.values())
        for exchange in exchanges:
            run(partial(declare_exchange_op, exchange, done=None))
        for queue in queues:
            run(partial(declare_queue_op, queue, self.queue_type, done=None))
        for name, binding in bindings:
            run(partial(bind_op, name, binding, done=None))
