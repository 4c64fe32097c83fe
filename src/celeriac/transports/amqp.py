"""RabbitMQ transport (``amqp://``, ``pyamqp://``, ``amqps://``) on pika.

| feature                         | supported                                              |
|---------------------------------|--------------------------------------------------------|
| exchanges                       | direct, fanout, topic, headers (native)                |
| priorities                      | yes (``x-max-priority`` on the queue)                  |
| TTL, dead-lettering, max length | yes (native queue arguments)                           |
| delivery limit                  | yes: a queue with ``delivery_limit`` is a quorum queue |
| publisher confirms              | ``confirm_publish`` option; batches wait once          |
| deferral (long ETA)             | delay bucket queues dead-lettering back (broker-side)  |
| shared between processes        | yes; survives broker restarts when durable             |

Options (``broker_transport_options``): ``confirm_publish`` (False), ``queue_type``
(``classic``; ``quorum`` makes every durable shared queue a quorum queue), ``heartbeat``
(60 s), ``connect_timeout`` (4 s), ``ssl``.

How it is built: a network thread (``amqp_session``) owns the connection. Consumers are
pull-based in this contract (``fetch(queues, limit)``), and a queue is consumed one of two
ways. When a ``Consumer`` has told its window (``qos``), the queue has a ``basic.consume``
with that prefetch: the broker pushes up to the window, deliveries wait in a buffer and
``fetch`` takes from it without a round trip. Without a window (``prefetch_count=0``),
``fetch`` uses ``basic.get``, which takes exactly what was asked for, and ``wait`` watches
the queues with short-lived prefetch-1 consumers (on an auto-delete queue the watcher stays:
RabbitMQ would delete the queue when its last consumer goes; see ``amqp_consumers``). Acks
go out in batches, one ``multiple=True`` frame for the longest run of settled tags at the
head of the channel.

On a lost connection the session reconnects with backoff and this transport declares again
what it declared and consumes again; deliveries of the lost connection are void (their acks
are dropped; the broker redelivers them). A publish with confirms that was not confirmed
raises ``ConnectionError`` (recoverable: the producer's retry policy retries it). Without
confirms a publish returns once handed to the network thread, as AMQP's fire-and-forget
publish does; ``close`` (and interpreter exit) flushes what is still queued.

``queue_length`` counts the ready messages of the queue itself: deferred messages wait in
delay buckets (see ``amqp_wire``), which ``purge`` and ``delete_queue`` empty too.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from functools import partial
from typing import Any, ClassVar, TypeVar

import pika
from pika.channel import Channel

from celeriac.exceptions import NotFound
from celeriac.messaging.entities import Binding, Exchange, Queue
from celeriac.transports import amqp_topology as ops
from celeriac.transports import amqp_wire as wire
from celeriac.transports.amqp_consumers import Consumers
from celeriac.transports.amqp_inbox import Inbox
from celeriac.transports.amqp_session import Done, Session, SessionChannel
from celeriac.transports.amqp_topology import Topology
from celeriac.transports.base import Capabilities, Delivery, Outgoing, Transport, WouldBlock

T = TypeVar("T")
Wire = tuple[str, str, bytes, pika.BasicProperties]

#: Most commands (publishes, acks) queued for the network thread before publishing waits.
MAX_QUEUED_COMMANDS = 5_000
#: Longest wait for deliveries the broker said are on their way (``fetch``).
ARRIVAL_WAIT = 0.5
#: Longest wait for a confirm or another broker answer before the outcome counts as unknown.
CALL_TIMEOUT = 30.0

_live: weakref.WeakSet[AMQPTransport] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    """Close live sessions at interpreter exit so queued publishes reach the broker."""
    for transport in list(_live):
        transport.close()


def _forked() -> None:
    """In a forked child the network thread is gone: each transport opens a new session."""
    for transport in list(_live):
        transport._stale = True


os.register_at_fork(after_in_child=_forked)


class AMQPTransport(Transport):
    """A session with RabbitMQ (AMQP 0-9-1)."""

    schemes: ClassVar[tuple[str, ...]] = ("amqp", "pyamqp", "amqps")
    capabilities: ClassVar[Capabilities] = Capabilities(
        native_exchanges=True,
        cross_process=True,
        persistent=True,
        blocking_io=True,
    )

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        self.confirm_publish = bool(self.options.get("confirm_publish", False))
        self.topology = Topology(self.options.get("queue_type"))
        self._local = threading.local()
        self._closed = False
        self._stale = False
        self._open()
        _live.add(self)

    def _open(self) -> None:
        self._inbox = Inbox()
        self._session = Session(wire.connection_parameters(self.url, self.options), self)
        self._consumers = Consumers(
            self._session, self._inbox, self._settle_now, self.topology.is_auto_delete
        )
        self._session.start(float(self.options.get("connect_timeout", 4)) + 1)

    def _current(self) -> None:
        # A forked child opens its own session (declaring again what was declared); the
        # parent's deliveries stay the parent's.
        if self._stale:
            self._stale = False
            self._open()

    @property
    def session(self) -> Session:
        """The network thread's session."""
        self._current()
        return self._session

    @property
    def inbox(self) -> Inbox:
        """The deliveries this session holds."""
        self._current()
        return self._inbox

    @property
    def consumers(self) -> Consumers:
        """This session's consumers."""
        self._current()
        return self._consumers

    # -- the session's listener (network thread) ------------------------------------------
    def lost(self, epoch: int) -> None:
        self._inbox.void(epoch)
        self._consumers.void()

    def restore(self, session: Session) -> None:
        """Declare again what this session declared, then consume again."""
        self.topology.replay(session.main.run)
        self._consumers.restore()

    # -- topology -------------------------------------------------------------------------
    def _call(
        self, op: Callable[[Channel, Done], None], channel: SessionChannel | None = None
    ) -> Any:
        return self.session.call(channel or self.session.main, op, CALL_TIMEOUT)

    def declare_exchange(self, exchange: Exchange) -> None:
        if not exchange.name or exchange.name.startswith("amq."):
            self._check_exchanges([exchange.name])  # the broker's own: may not be declared
            return
        self._call(partial(ops.declare_exchange_op, exchange))
        self.topology.added_exchange(exchange)

    def delete_exchange(self, name: str) -> None:
        self._call(lambda ch, done: ch.exchange_delete(name, callback=done))
        self.topology.removed_exchange(name)

    def declare_queue(self, queue: Queue) -> None:
        queue_type = self.topology.queue_type
        wire.queue_arguments(queue, queue_type)  # an impossible queue fails here, not later
        self._call(partial(ops.declare_queue_op, queue, queue_type))
        self.topology.added_queue(queue)

    def delete_queue(self, name: str) -> None:
        self._call(partial(ops.delete_queues_op, [name, *_buckets(name)]))
        self.topology.removed_queue(name)
        self.consumers.forget(name)

    def bind(self, queue: str, binding: Binding) -> None:
        self._call(partial(ops.bind_op, queue, binding))
        self.topology.added_binding(queue, binding)

    def unbind(self, queue: str, binding: Binding) -> None:
        self._call(partial(ops.unbind_op, queue, binding))
        self.topology.removed_binding(queue, binding)

    def queue_length(self, name: str) -> int:
        try:
            return self._ready_count(name)
        except NotFound:
            return 0

    def _ready_count(self, name: str) -> int:
        """Ready messages in ``name`` (a passive declare; NotFound when it does not exist).

        RabbitMQ answers a count ahead of the work waiting in the queue's mailbox, so first
        our publishes must be confirmed and a round trip must pass our acks and requeues.
        """
        main = self.session.main
        barrier = partial(ops.passive_exchange_op, "amq.direct")
        self._call(lambda ch, done: main.when_confirmed(partial(barrier, ch, done)))
        return int(self._call(partial(ops.passive_queue_op, name), self._channel_for(name)))

    def _channel_for(self, queue: str) -> SessionChannel:
        # A queue we did not declare may not exist, and a 404 must not close the main channel.
        return self.session.main if queue in self.topology.queues else self.session.probe

    def purge(self, name: str) -> int:
        purge = lambda ch, done: ch.queue_purge(  # noqa: E731
            name, callback=lambda frame: done(frame.method.message_count)
        )
        count = int(self._call(purge, self._channel_for(name)))
        parked = self.inbox.take_early(name)
        self.ack([delivery.delivery_tag for delivery, _due in parked])
        deferred = int(self._call(partial(ops.delete_queues_op, _buckets(name))))
        return count + len(parked) + deferred

    # -- publishing -----------------------------------------------------------------------
    def _check_exchanges(self, names: Iterable[str]) -> None:
        """Raise NotFound unless every exchange in ``names`` exists (checked once each)."""
        for name in self.topology.unknown_exchanges(names):
            self._call(partial(ops.passive_exchange_op, name), self.session.probe)
            self.topology.known_exchange(name)

    def publish(self, messages: Sequence[Outgoing]) -> None:
        if not messages:
            return
        self._check_exchanges(m.exchange for m in messages)
        wires = [
            (m.exchange, m.routing_key, m.envelope.body, wire.to_wire(m.envelope)) for m in messages
        ]
        self._send(wires, confirmed=self.confirm_publish)

    def _send(self, wires: list[Wire], confirmed: bool) -> None:
        """Publish on the network thread; with ``confirmed``, wait for the broker's confirms.

        Raises:
            ConnectionError: Not connected, or the outcome of a confirmed publish is unknown.
        """
        session, channel = self.session, self.session.main
        if not session.ready.is_set():
            session.wait_ready()
        # Backpressure without a lock on this path: the queue of commands is the measure.
        if session.backlog() > MAX_QUEUED_COMMANDS:
            deadline = time.monotonic() + CALL_TIMEOUT
            while session.backlog() > MAX_QUEUED_COMMANDS // 2 and time.monotonic() < deadline:
                time.sleep(0.001)
        future: Future[None] | None = Future() if confirmed else None

        def run(ch: Channel) -> None:
            channel.published(len(wires), future)
            for exchange, routing_key, body, props in wires:
                ch.basic_publish(exchange, routing_key, body, props)

        def start() -> None:
            if future is not None and not session.ready.is_set() and not session.connected:
                future.set_exception(ConnectionError("lost the RabbitMQ connection"))
                return
            # Not sent yet, so not lost: it goes out once the session is restored.
            session.when_ready(lambda: channel.run(run))

        session.post(start)
        if future is not None:
            try:
                future.result(CALL_TIMEOUT)
            except TimeoutError:
                raise ConnectionError("RabbitMQ did not confirm the publish in time") from None

    # -- consuming ------------------------------------------------------------------------
    def qos(self, queues: Sequence[str], prefetch_count: int) -> None:
        """Consume ``queues`` with this window (pushed), or with ``basic.get`` (0)."""
        for name in queues:
            if prefetch_count > 0 and name not in self.topology.queues:
                self._ready_count(name)  # NotFound now, not a closed main channel later
            self.consumers.set_window(name, prefetch_count)

    def call_nowait(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` inline when it will not wait: fetches served from the buffer, settles."""
        self._local.nowait = True
        try:
            return fn(*args)
        finally:
            self._local.nowait = False

    def fetch(self, queues: Sequence[str], limit: int, ack: Sequence[int] = ()) -> list[Delivery]:
        inbox = self.inbox
        if getattr(self._local, "nowait", False) and (
            inbox.has_early() or not inbox.has_buffered(queues)
        ):
            raise WouldBlock
        if ack:
            self.ack(ack)
        self._hop_early()
        got = inbox.take(queues, limit)
        if got or limit <= 0:
            return got
        self.session.wait_ready()
        push = [q for q in queues if self.consumers.window(q)]
        pull = [q for q in queues if not self.consumers.window(q)]
        if push:
            got = self._await_pushed(push, limit)
        if pull and len(got) < limit:
            for name in pull:
                if name not in self.topology.queues:
                    self._ready_count(name)  # NotFound now, not a closed main channel
            got += self._call(self.consumers.get_op(pull, limit - len(got)))
        return got

    def _await_pushed(self, queues: list[str], limit: int) -> list[Delivery]:
        """Wait for the deliveries the broker is about to push (it said how many are ready)."""
        expected = 0
        for name in queues:
            ready = self._ready_count(name)
            credit = self.inbox.credit(name, self.consumers.window(name))
            expected += max(0, min(ready, credit))
        want = min(limit, expected)
        if want:
            self.inbox.wait_for(lambda: self.inbox.buffered(queues) >= want, ARRIVAL_WAIT)
        return self.inbox.take(queues, limit)

    # -- settling -------------------------------------------------------------------------
    def ack(self, delivery_tags: Sequence[int]) -> None:
        self._settle_now(list(delivery_tags), None)

    def reject(self, delivery_tags: Sequence[int], requeue: bool) -> None:
        self._settle_now(list(delivery_tags), requeue)

    def _settle_now(self, delivery_tags: list[int], requeue: bool | None) -> None:
        """Ack (``requeue`` None) or nack deliveries, with as few frames as is safe.

        Tags of a lost channel are dropped: the broker gives those messages to someone else.
        """
        epoch, frames = self.inbox.settle_plan(delivery_tags)
        if not frames:
            return
        session = self.session

        def send() -> None:
            channel = session.main.channel
            if session.epoch != epoch or channel is None or not channel.is_open:
                return
            for tag, multiple in frames:
                if requeue is None:
                    channel.basic_ack(tag, multiple)
                else:
                    channel.basic_nack(tag, multiple, requeue)

        session.post(send)

    def defer(self, deferrals: Sequence[tuple[int, float]]) -> None:
        self._republish_delayed(self.inbox.holding(deferrals))

    def _hop_early(self) -> None:
        """Move deliveries that came back from a delay bucket too early to a shorter one."""
        early = self.inbox.take_early()
        if early:
            self._republish_delayed(early)

    def _republish_delayed(self, items: list[tuple[Delivery, float]]) -> None:
        """Publish each delivery (confirmed) to its delay bucket, or its queue when due; ack."""
        if not items:
            return
        wires: list[Wire] = []
        buckets: dict[str, dict[str, Any]] = {}
        now = time.time()
        for delivery, until in items:
            exponent = wire.bucket_for(until - now)
            envelope = delivery.envelope
            if exponent is None:
                wires.append(("", delivery.queue, envelope.body, wire.to_wire(envelope)))
                continue
            bucket = wire.bucket_name(exponent, delivery.queue)
            buckets[bucket] = wire.bucket_arguments(exponent, delivery.queue)
            props = wire.to_wire(envelope, {wire.DUE_HEADER: until})
            wires.append(("", bucket, envelope.body, props))
        for bucket, arguments in buckets.items():
            # Declared every time: declaring restarts the bucket's idle clock (x-expires).
            self._call(partial(ops.declare_bucket_op, bucket, arguments))
        self._send(wires, confirmed=True)
        self._settle_now([d.delivery_tag for d, _ in items], None)

    # -- waiting --------------------------------------------------------------------------
    def wait(self, timeout: float) -> None:
        watched = self.consumers.watch()
        try:
            self.inbox.wait_for(self.inbox.has_ready, timeout)
        finally:
            self.consumers.unwatch(watched)

    async def await_ready(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if not self.inbox.add_waiter(loop, future):
            return
        watched = self.consumers.watch()
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            pass
        finally:
            self.inbox.remove_waiter(loop, future)
            self.consumers.unwatch(watched)

    def wake(self) -> None:
        self.inbox.wake()

    # -- closing --------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        _live.discard(self)
        if self._stale:
            return  # a forked child's copy: the connection is the parent's to close
        private = self.topology.auto_delete_queues()
        if private and self.session.ready.is_set():
            # RabbitMQ deletes an auto-delete queue when its last consumer goes, which a
            # queue never consumed never has; celeriac's contract: when its connection goes.
            main = self.session.main
            for name in private:
                self.session.post(partial(main.run, partial(_delete_queue, name)))
        self.session.close()


def _buckets(queue: str) -> list[str]:
    """The names of every delay bucket ``queue`` may have."""
    return [wire.bucket_name(k, queue) for k in wire.BUCKET_EXPONENTS]


def _delete_queue(name: str, ch: Channel) -> None:
    ch.queue_delete(name)
