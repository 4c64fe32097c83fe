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
the queues with short-lived prefetch-1 consumers. Acks go out in batches, one
``multiple=True`` frame for the longest run of settled tags at the head of the channel.

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
import threading
import time
import weakref
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from functools import partial
from typing import Any, ClassVar, TypeVar

import pika
from pika.channel import Channel

from celeriac.exceptions import NotFound
from celeriac.messaging.entities import Binding, Exchange, Queue
from celeriac.transports import amqp_wire as wire
from celeriac.transports.amqp_session import Done, Session, SessionChannel
from celeriac.transports.base import Capabilities, Delivery, Outgoing, Transport, WouldBlock

T = TypeVar("T")

#: Most commands (publishes, acks) queued for the network thread before publishing waits.
MAX_QUEUED_COMMANDS = 5_000
#: Longest wait for deliveries the broker said are on their way (``fetch``).
ARRIVAL_WAIT = 0.5
#: Longest wait for a confirm or another broker answer before the outcome counts as unknown.
CALL_TIMEOUT = 30.0
_TAG_BITS = 64
_TAG_MASK = (1 << _TAG_BITS) - 1

_live: weakref.WeakSet[AMQPTransport] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    """Close live sessions at interpreter exit so queued publishes reach the broker."""
    for transport in list(_live):
        transport.close()


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
        self.queue_type: str | None = self.options.get("queue_type")
        self._cond = threading.Condition()
        self._local = threading.local()
        self._epoch = 0
        self._buffers: defaultdict[str, deque[Delivery]] = defaultdict(deque)
        self._outstanding: dict[int, Delivery] = {}  # AMQP tag -> delivery, in tag order
        self._early: list[tuple[Delivery, float]] = []
        self._leased: defaultdict[str, int] = defaultdict(int)
        self._windows: dict[str, int] = {}
        self._consumer_of: dict[str, str] = {}  # queue -> consumer tag (push consumers)
        self._queue_of: dict[str, tuple[str, bool]] = {}  # tag -> (queue, push?), to cancel-ok
        self._watchers: dict[str, str] = {}  # queue -> consumer tag (prefetch-1 watchers)
        self._watch_next: set[str] = set()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._rr = 0
        self._exchanges: dict[str, Exchange] = {}
        self._queues: dict[str, Queue] = {}
        self._bindings: dict[tuple[str, str, str, str], tuple[str, Binding]] = {}
        self._known_exchanges: set[str] = {""}
        self._get_job: _GetJob | None = None
        self._closed = False
        params = wire.connection_parameters(url, self.options)
        self.session = Session(params, self)
        self.session.start(float(self.options.get("connect_timeout", 4)) + 1)
        _live.add(self)

    # -- session callbacks (network thread) -------------------------------------------------
    def deliver(
        self, epoch: int, queue: str, method: Any, properties: pika.BasicProperties, body: bytes
    ) -> None:
        delivery = self._register(epoch, queue, method, properties, body)
        if delivery is not None:
            with self._cond:
                self._buffers[queue].append(delivery)
                self._notify()

    def _register(
        self, epoch: int, queue: str, method: Any, properties: pika.BasicProperties, body: bytes
    ) -> Delivery | None:
        """Record a delivery as leased; None when it is early (parked for a hop)."""
        envelope, due = wire.from_wire(properties, body)
        tag: int = method.delivery_tag
        delivery = Delivery(
            envelope,
            (epoch << _TAG_BITS) | tag,
            queue,
            method.exchange,
            method.routing_key,
            method.redelivered,
        )
        with self._cond:
            if epoch != self._epoch:
                return None
            self._outstanding[tag] = delivery
            self._leased[queue] += 1
            if due is not None and due - time.time() > 0.001:
                self._early.append((delivery, due))
                self._notify()
                return None
        return delivery

    def _notify(self) -> None:
        self._cond.notify_all()
        waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            loop.call_soon_threadsafe(_resolve, future)

    def lost(self, epoch: int) -> None:
        with self._cond:
            self._epoch = epoch + 1
            self._buffers.clear()
            self._outstanding.clear()
            self._early.clear()
            self._leased.clear()
            self._consumer_of.clear()
            self._queue_of.clear()
            self._watchers.clear()
            self._get_job = None
            self._notify()

    def restore(self, session: Session) -> None:
        """Declare again what this session declared, then consume again (network thread)."""
        main = session.main
        main.run(lambda ch: ch.add_callback(self._on_get_empty, [pika.spec.Basic.GetEmpty], False))
        with self._cond:
            exchanges = list(self._exchanges.values())
            queues = list(self._queues.values())
            bindings = list(self._bindings.values())
            windows = dict(self._windows)
        for exchange in exchanges:
            main.run(partial(self._declare_exchange_op, exchange=exchange, done=None))
        for queue in queues:
            main.run(partial(self._declare_queue_op, queue=queue, done=None))
        for queue_name, binding in bindings:
            main.run(partial(self._bind_op, queue=queue_name, binding=binding, done=None))
        for queue_name, window in windows.items():
            main.run(partial(self._consume_op, queue=queue_name, prefetch=window, watcher=False))

    # -- topology ---------------------------------------------------------------------------
    def _call(
        self, op: Callable[[Channel, Done], None], channel: SessionChannel | None = None
    ) -> Any:
        return self.session.call(channel or self.session.main, op, CALL_TIMEOUT)

    def _declare_exchange_op(self, ch: Channel, exchange: Exchange, done: Done | None) -> None:
        ch.exchange_declare(
            exchange.name,
            exchange_type=exchange.type,
            durable=exchange.durable,
            auto_delete=exchange.auto_delete,
            arguments=dict(exchange.arguments) or None,
            callback=done,
        )

    def declare_exchange(self, exchange: Exchange) -> None:
        if not exchange.name or exchange.name.startswith("amq."):
            self._check_exchanges([exchange.name])
            return
        self._call(lambda ch, done: self._declare_exchange_op(ch, exchange, done))
        with self._cond:
            self._exchanges[exchange.name] = exchange
            self._known_exchanges.add(exchange.name)

    def delete_exchange(self, name: str) -> None:
        self._call(lambda ch, done: ch.exchange_delete(name, callback=done))
        with self._cond:
            self._exchanges.pop(name, None)
            self._known_exchanges.discard(name)
            for key in [k for k in self._bindings if k[1] == name]:
                del self._bindings[key]

    def _declare_queue_op(self, ch: Channel, queue: Queue, done: Done | None) -> None:
        bindings = queue.all_bindings()
        ch.queue_declare(
            queue.name,
            durable=queue.durable,
            exclusive=queue.exclusive,
            auto_delete=queue.auto_delete,
            arguments=wire.queue_arguments(queue, self.queue_type) or None,
            callback=None if bindings else done,
        )
        for i, binding in enumerate(bindings):
            self._bind_op(ch, queue.name, binding, done if i == len(bindings) - 1 else None)

    def declare_queue(self, queue: Queue) -> None:
        wire.queue_arguments(queue, self.queue_type)  # fail early on an impossible queue
        self._call(lambda ch, done: self._declare_queue_op(ch, queue, done))
        with self._cond:
            self._queues[queue.name] = queue

    def delete_queue(self, name: str) -> None:
        self._delete_queues([name, *self._bucket_names(name)])
        with self._cond:
            self._queues.pop(name, None)
            self._windows.pop(name, None)
            self._consumer_of.pop(name, None)
            for key in [k for k in self._bindings if k[0] == name]:
                del self._bindings[key]

    @staticmethod
    def _bucket_names(name: str) -> list[str]:
        return [wire.bucket_name(k, name) for k in wire.BUCKET_EXPONENTS]

    def _delete_queues(self, names: list[str]) -> int:
        """Delete queues (missing ones too: not an error); returns how many messages went."""
        counts: list[int] = []

        def op(ch: Channel, done: Done) -> None:
            # pika sends each after the previous answer; only the last one needs waiting for.
            for i, name in enumerate(names):

                def deleted(frame: Any, last: bool = i == len(names) - 1) -> None:
                    counts.append(frame.method.message_count)
                    if last:
                        done(sum(counts))

                ch.queue_delete(name, callback=deleted)

        return int(self._call(op))

    def _bind_op(self, ch: Channel, queue: str, binding: Binding, done: Done | None) -> None:
        ch.queue_bind(
            queue,
            binding.exchange.name,
            routing_key=binding.routing_key,
            arguments=dict(binding.arguments) or None,
            callback=done,
        )

    def _binding_key(self, queue: str, binding: Binding) -> tuple[str, str, str, str]:
        return (
            queue,
            binding.exchange.name,
            binding.routing_key,
            repr(sorted(binding.arguments.items())),
        )

    def bind(self, queue: str, binding: Binding) -> None:
        self._call(lambda ch, done: self._bind_op(ch, queue, binding, done))
        with self._cond:
            self._bindings[self._binding_key(queue, binding)] = (queue, binding)

    def unbind(self, queue: str, binding: Binding) -> None:
        self._call(
            lambda ch, done: ch.queue_unbind(
                queue,
                binding.exchange.name,
                routing_key=binding.routing_key,
                arguments=dict(binding.arguments) or None,
                callback=done,
            )
        )
        with self._cond:
            self._bindings.pop(self._binding_key(queue, binding), None)

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
        self._call(
            lambda ch, done: main.when_confirmed(partial(_passive_exchange, "amq.direct", ch, done))
        )
        # A queue we did not declare may not exist, and a 404 must not close the main channel.
        channel = main if name in self._queues else self.session.probe
        return int(self._call(partial(_passive_queue, name), channel))

    def purge(self, name: str) -> int:
        count = int(
            self._call(
                lambda ch, done: ch.queue_purge(
                    name, callback=lambda f: done(f.method.message_count)
                ),
                self.session.main if name in self._queues else self.session.probe,
            )
        )
        with self._cond:
            parked = [d for d, _due in self._early if d.queue == name]
            self._early = [(d, due) for d, due in self._early if d.queue != name]
        self.ack([d.delivery_tag for d in parked])
        return count + self._delete_queues(self._bucket_names(name)) + len(parked)

    # -- publishing ---------------------------------------------------------------------------
    def _check_exchanges(self, names: Iterable[str]) -> None:
        """Raise NotFound unless every exchange in ``names`` exists (checked once each)."""
        for name in set(names) - self._known_exchanges:
            self._call(
                partial(_passive_exchange, name),
                self.session.probe,
            )
            with self._cond:
                self._known_exchanges.add(name)

    def publish(self, messages: Sequence[Outgoing]) -> None:
        if not messages:
            return
        self._check_exchanges(m.exchange for m in messages)
        wires = [
            (m.exchange, m.routing_key, m.envelope.body, wire.to_wire(m.envelope)) for m in messages
        ]
        self._send(self.session.main, wires, confirmed=self.confirm_publish)

    def _send(
        self,
        channel: SessionChannel,
        wires: list[tuple[str, str, bytes, pika.BasicProperties]],
        confirmed: bool,
    ) -> None:
        """Publish on the network thread; with ``confirmed``, wait for the broker's confirms.

        Raises:
            ConnectionError: Not connected, or the outcome of a confirmed publish is unknown.
        """
        session = self.session
        if not session.ready.is_set():
            session.wait_ready()
        # Backpressure without a lock on this path: the queue of commands is the measure.
        if session.backlog() > MAX_QUEUED_COMMANDS:
            deadline = time.monotonic() + CALL_TIMEOUT
            while session.backlog() > MAX_QUEUED_COMMANDS // 2 and time.monotonic() < deadline:
                time.sleep(0.001)
        future: Future[None] | None = Future() if confirmed else None
        count = len(wires)

        def run(ch: Channel) -> None:
            channel.published(count, future)
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

    # -- consuming ----------------------------------------------------------------------------
    def qos(self, queues: Sequence[str], prefetch_count: int) -> None:
        """Consume ``queues`` with this window (push), or stop doing so (0: ``basic.get``)."""
        for name in queues:
            with self._cond:
                if self._windows.get(name, 0) == prefetch_count:
                    continue
                if prefetch_count > 0:
                    self._windows[name] = prefetch_count
                else:
                    del self._windows[name]
            if prefetch_count > 0:
                if name not in self._queues:
                    self._ready_count(name)  # NotFound now, not a closed main channel later
                self.session.post(partial(self._restart_consumer, name, prefetch_count))
            else:
                self.session.post(partial(self._stop_consumer, name))

    def _consume_op(self, ch: Channel, queue: str, prefetch: int, watcher: bool) -> None:
        ch.basic_qos(prefetch_count=prefetch)
        tag = ch.basic_consume(queue, self._on_message)
        with self._cond:
            self._queue_of[tag] = (queue, not watcher)
            (self._watchers if watcher else self._consumer_of)[queue] = tag

    def _restart_consumer(self, queue: str, prefetch: int) -> None:
        self._stop_consumer(queue, requeue=False)
        if self.session.ready.is_set():
            self.session.main.run(lambda ch: self._consume_op(ch, queue, prefetch, watcher=False))

    def _stop_consumer(self, queue: str, requeue: bool = True) -> None:
        """Cancel the push consumer of ``queue``; what it buffered goes back to the queue."""
        with self._cond:
            tag = self._consumer_of.pop(queue, None)
            returned = list(self._buffers.pop(queue, ())) if requeue else []
        if tag is None:
            return
        self._cancel(tag)
        if returned:
            self._settle_now([d.delivery_tag for d in returned], requeue=True)

    def _cancel(self, tag: str) -> None:
        def forget(_frame: Any) -> None:
            self._queue_of.pop(tag, None)

        self.session.main.run(lambda ch: ch.basic_cancel(tag, callback=forget))

    def _on_message(self, _ch: Channel, method: Any, properties: Any, body: bytes) -> None:
        entry = self._queue_of.get(method.consumer_tag)
        if entry is None:
            return
        queue = entry[0]
        delivery = self._register(self.session.epoch, queue, method, properties, body)
        if delivery is None:
            return
        if entry[1] and queue not in self._windows:
            # A late delivery to a push consumer cancelled since: nobody asked for it.
            self._settle_now([delivery.delivery_tag], requeue=True)
            return
        with self._cond:
            self._buffers[queue].append(delivery)
            self._notify()

    def _take(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        """Up to ``limit`` buffered deliveries, taking from the queues in turn."""
        got: list[Delivery] = []
        with self._cond:
            live = [self._buffers[q] for q in queues if self._buffers.get(q)]
            self._rr += 1
            while live and len(got) < limit:
                for buffer in list(live[self._rr % len(live) :] + live[: self._rr % len(live)]):
                    if len(got) >= limit:
                        break
                    got.append(buffer.popleft())
                    if not buffer:
                        live.remove(buffer)
        return got

    def call_nowait(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` inline when it will not wait: fetches served from the buffer, settles."""
        self._local.nowait = True
        try:
            return fn(*args)
        finally:
            self._local.nowait = False

    def fetch(self, queues: Sequence[str], limit: int, ack: Sequence[int] = ()) -> list[Delivery]:
        if getattr(self._local, "nowait", False):
            with self._cond:
                if self._early or not any(self._buffers.get(q) for q in queues):
                    raise WouldBlock
        if ack:
            self.ack(ack)
        if self._early:
            self._hop_early()
        got = self._take(queues, limit)
        if got or limit <= 0:
            return got
        self.session.wait_ready()
        push = [q for q in queues if q in self._windows]
        pull = [q for q in queues if q not in self._windows]
        if push:
            got = self._await_pushed(push, limit)
        if pull and len(got) < limit:
            got += self._get(pull, limit - len(got))
        return got

    def _await_pushed(self, queues: list[str], limit: int) -> list[Delivery]:
        """Wait for the deliveries the broker is about to push (it said how many are ready)."""
        expected = 0
        for name in queues:
            ready = self._ready_count(name)
            with self._cond:
                credit = self._windows.get(name, 0) - self._leased[name]
            expected += max(0, min(ready, credit))
        want = min(limit, expected)
        if want:
            with self._cond:
                self._cond.wait_for(
                    lambda: sum(len(self._buffers.get(q, ())) for q in queues) >= want,
                    ARRIVAL_WAIT,
                )
        return self._take(queues, limit)

    def _get(self, queues: list[str], count: int) -> list[Delivery]:
        """``basic.get`` up to ``count`` messages, from the queues in turn."""
        for name in queues:
            if name not in self._queues:
                self._ready_count(name)  # NotFound now, not a closed main channel
        with self._cond:
            self._watch_next.update(queues)

        def op(ch: Channel, done: Done) -> None:
            job = _GetJob(self, ch, queues, count, done)
            self._get_job = job
            job.next()

        got: list[Delivery] = self._call(op)
        return got

    def _on_get_empty(self, _frame: Any) -> None:
        job = self._get_job
        if job is not None:
            job.empty()

    # -- settling -----------------------------------------------------------------------------
    def ack(self, delivery_tags: Sequence[int]) -> None:
        self._settle_now(delivery_tags, requeue=None)

    def reject(self, delivery_tags: Sequence[int], requeue: bool) -> None:
        self._settle_now(delivery_tags, requeue=requeue)

    def _settle_now(self, delivery_tags: Iterable[int], requeue: bool | None) -> None:
        """Ack (``requeue`` None) or nack deliveries, with as few frames as is safe.

        One ``multiple=True`` frame settles the run of tags at the head of the channel's
        unsettled ones; the others go one by one. Tags of a lost channel are dropped: the
        broker gives those messages to someone else.
        """
        with self._cond:
            epoch = self._epoch
            tags = {t & _TAG_MASK for t in delivery_tags if t >> _TAG_BITS == epoch}
            tags &= self._outstanding.keys()
            if not tags:
                return
            head = 0
            for tag in self._outstanding:
                if tag not in tags:
                    break
                head = tag
            for tag in tags:
                self._leased[self._outstanding.pop(tag).queue] -= 1
        rest = sorted(t for t in tags if t > head)

        def send() -> None:
            if self.session.epoch != epoch or not self.session.ready.is_set():
                return
            channel = self.session.main.channel
            if channel is None or not channel.is_open:
                return
            for tag, multiple in ([(head, True)] if head else []) + [(t, False) for t in rest]:
                if requeue is None:
                    channel.basic_ack(tag, multiple)
                else:
                    channel.basic_nack(tag, multiple, requeue)

        self.session.post(send)

    def defer(self, deferrals: Sequence[tuple[int, float]]) -> None:
        with self._cond:
            epoch = self._epoch
            items = [
                (self._outstanding[tag & _TAG_MASK], until)
                for tag, until in deferrals
                if tag >> _TAG_BITS == epoch and tag & _TAG_MASK in self._outstanding
            ]
        self._republish_delayed(items)

    def _hop_early(self) -> None:
        """Move deliveries that came back from a delay bucket too early to a shorter one."""
        with self._cond:
            early, self._early = self._early, []
        self._republish_delayed(early)

    def _republish_delayed(self, items: list[tuple[Delivery, float]]) -> None:
        """Publish each delivery (confirmed) to its delay bucket, or its queue when due; ack."""
        if not items:
            return
        wires: list[tuple[str, str, bytes, pika.BasicProperties]] = []
        buckets: dict[str, tuple[int, str]] = {}
        now = time.time()
        for delivery, until in items:
            exponent = wire.bucket_for(until - now)
            envelope = delivery.envelope
            if exponent is None:
                wires.append(("", delivery.queue, envelope.body, wire.to_wire(envelope)))
                continue
            bucket = wire.bucket_name(exponent, delivery.queue)
            buckets[bucket] = (exponent, delivery.queue)
            props = wire.to_wire(envelope, {wire.DUE_HEADER: until})
            wires.append(("", bucket, envelope.body, props))
        for bucket, (exponent, target) in buckets.items():
            # Declared every time: declaring restarts the bucket's idle clock (x-expires).
            self._call(partial(_declare_bucket, bucket, wire.bucket_arguments(exponent, target)))
        self._send(self.session.main, wires, confirmed=True)
        self._settle_now([d.delivery_tag for d, _ in items], requeue=None)

    # -- waiting ------------------------------------------------------------------------------
    def _has_ready(self) -> bool:
        return bool(self._early) or any(self._buffers.values())

    def _watch(self) -> list[str]:
        """Start prefetch-1 consumers on the queues last fetched with ``basic.get``."""
        with self._cond:
            queues = [
                q for q in self._watch_next if q not in self._watchers and q not in self._windows
            ]
            self._watch_next.clear()
        main = self.session.main
        for name in queues:
            op = partial(self._consume_op, queue=name, prefetch=1, watcher=True)
            self.session.post(partial(main.run, op))
        return queues

    def _unwatch(self, queues: list[str]) -> None:
        def stop() -> None:
            for name in queues:
                with self._cond:
                    tag = self._watchers.pop(name, None)
                if tag is not None:
                    self._cancel(tag)

        self.session.post(stop)

    def wait(self, timeout: float) -> None:
        watched = self._watch()
        try:
            with self._cond:
                self._cond.wait_for(self._has_ready, timeout)
        finally:
            self._unwatch(watched)

    async def await_ready(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._cond:
            if self._has_ready():
                return
            self._waiters.append((loop, future))
        watched = self._watch()
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            pass
        finally:
            with self._cond:
                if (loop, future) in self._waiters:
                    self._waiters.remove((loop, future))
            self._unwatch(watched)

    def wake(self) -> None:
        with self._cond:
            self._notify()

    # -- closing ------------------------------------------------------------------------------
    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            private = [q.name for q in self._queues.values() if q.auto_delete]
        _live.discard(self)
        if private and self.session.ready.is_set():
            # RabbitMQ deletes an auto-delete queue when its last consumer goes, which a
            # queue never consumed never has; celeriac's contract: when its connection goes.
            main = self.session.main
            for name in private:
                self.session.post(partial(main.run, partial(_delete_queue, name)))
        self.session.close()


def _passive_exchange(name: str, ch: Channel, done: Done) -> None:
    ch.exchange_declare(name, passive=True, callback=done)


def _passive_queue(name: str, ch: Channel, done: Done) -> None:
    ch.queue_declare(name, passive=True, callback=lambda frame: done(frame.method.message_count))


def _declare_bucket(name: str, arguments: dict[str, Any], ch: Channel, done: Done) -> None:
    ch.queue_declare(name, durable=True, arguments=arguments, callback=done)


def _delete_queue(name: str, ch: Channel) -> None:
    ch.queue_delete(name)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _GetJob:
    """``basic.get`` from several queues in turn until ``count`` messages or all are empty."""

    def __init__(
        self, transport: AMQPTransport, ch: Channel, queues: list[str], count: int, done: Done
    ) -> None:
        self.transport = transport
        self.ch = ch
        self.live = list(queues)
        self.count = count
        self.done = done
        self.got: list[Delivery] = []
        self.turn = 0
        self.current = ""

    def next(self) -> None:
        if len(self.got) >= self.count or not self.live:
            self.transport._get_job = None
            self.done(self.got)
            return
        self.current = self.live[self.turn % len(self.live)]
        self.turn += 1
        self.ch.basic_get(self.current, self._got)

    def _got(self, _ch: Channel, method: Any, properties: Any, body: bytes) -> None:
        epoch = self.transport.session.epoch
        delivery = self.transport._register(epoch, self.current, method, properties, body)
        if delivery is not None:
            self.got.append(delivery)
        self.next()

    def empty(self) -> None:
        self.live.remove(self.current)
        self.turn -= 1
        self.next()
