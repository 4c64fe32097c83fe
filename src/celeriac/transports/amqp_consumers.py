"""How an ``amqp://`` session takes messages from its queues: pushed, got, or watched.

- A queue whose consumer told its window (``Transport.qos``) has a ``basic.consume`` with
  that prefetch: the broker pushes up to the window and the deliveries wait in the inbox.
  A new window means a new consumer (RabbitMQ fixes a consumer's prefetch when it starts);
  deliveries still held from the old one stay valid.
- Any other queue is read with ``basic.get``, which takes exactly what was asked for
  (``GetJob``: several queues in turn, one round trip per message).
- While a pull consumer waits, its queues are watched by prefetch-1 consumers, cancelled
  when the wait ends; what they received waits in the inbox for the next fetch.

RabbitMQ deletes an auto-delete queue when its last consumer is cancelled, but celeriac's
contract deletes it when the connection that declared it closes. So on an auto-delete queue
no consumer of ours may be the last to go while the session lives: its watcher stands
(kept after the wait, until the queue is deleted or the connection closes), a new window's
consumer starts before the old one is cancelled, and a push consumer hands over to a
standing watcher when the window goes. A standing watcher holds at most one message, which
the next fetch takes like any other.

Consumer tags and what they consume are network-thread state; windows are read by the
caller's thread too, under a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import pika
from pika.channel import Channel

from celeriac.transports.amqp_inbox import Inbox
from celeriac.transports.amqp_session import Done, Session
from celeriac.transports.base import Delivery

Settle = Callable[[list[int], "bool | None"], None]
IsAutoDelete = Callable[[str], bool]


class Consumers:
    """The consumers of one session, and its ``basic.get`` in progress."""

    def __init__(
        self, session: Session, inbox: Inbox, settle: Settle, auto_delete: IsAutoDelete
    ) -> None:
        self.session = session
        self.inbox = inbox
        self.settle = settle
        self.auto_delete = auto_delete
        self._lock = threading.Lock()
        self._windows: dict[str, int] = {}
        self._push: dict[str, str] = {}  # queue -> consumer tag
        self._watchers: dict[str, str] = {}  # queue -> consumer tag
        self._tags: dict[str, tuple[str, bool]] = {}  # tag -> (queue, push?), to cancel-ok
        self._watch_next: set[str] = set()
        self._get_job: GetJob | None = None

    # -- caller's thread ------------------------------------------------------------------
    def window(self, queue: str) -> int:
        with self._lock:
            return self._windows.get(queue, 0)

    def set_window(self, queue: str, window: int) -> None:
        """Consume ``queue`` with this window from now on (0: with ``basic.get``)."""
        with self._lock:
            if self._windows.get(queue, 0) == window:
                return
            if window > 0:
                self._windows[queue] = window
            else:
                del self._windows[queue]
        if window > 0:
            self.session.post(partial(self._restart, queue, window))
        else:
            self.session.post(partial(self._stop, queue))

    def forget(self, queue: str) -> None:
        """``queue`` was deleted (the broker cancelled its consumers)."""
        with self._lock:
            self._windows.pop(queue, None)

        def drop() -> None:
            for tag in (self._push.pop(queue, None), self._watchers.pop(queue, None)):
                if tag is not None:
                    self._tags.pop(tag, None)

        self.session.post(drop)

    def get_op(self, queues: list[str], count: int) -> Callable[[Channel, Done], None]:
        """The channel operation that gets up to ``count`` messages from ``queues``."""
        with self._lock:
            self._watch_next.update(queues)

        def op(ch: Channel, done: Done) -> None:
            self._get_job = GetJob(self, ch, queues, count, done)
            self._get_job.next()

        return op

    def watch(self) -> list[str]:
        """Watch the queues last read with ``basic.get`` (until ``unwatch``)."""
        with self._lock:
            queues = [q for q in self._watch_next if q not in self._windows]
            self._watch_next.clear()
        main = self.session.main
        for name in queues:
            self.session.post(partial(main.run, partial(self._watch, name)))
        return queues

    def unwatch(self, queues: list[str]) -> None:
        """Stop watching ``queues``, except auto-delete ones (their watchers stand)."""

        def stop() -> None:
            for name in queues:
                if self.auto_delete(name):
                    continue
                tag = self._watchers.pop(name, None)
                if tag is not None:
                    self._cancel(tag)

        if queues:
            self.session.post(stop)

    # -- network thread -------------------------------------------------------------------
    def restore(self) -> None:
        """Consume again on a new main channel."""
        main = self.session.main
        main.run(self._hook)
        with self._lock:
            windows = dict(self._windows)
        for queue, window in windows.items():
            main.run(partial(self._consume, queue, window, True))

    def void(self) -> None:
        """The main channel is gone, and its consumers with it."""
        self._push.clear()
        self._watchers.clear()
        self._tags.clear()
        self._get_job = None

    def _hook(self, ch: Channel) -> None:
        """Take a new main channel's ``basic.get-empty`` answers and deliveries.

        pika rejects (requeue) what a consumer receives after its ``basic.cancel`` went out
        and before the broker's ``cancel-ok``. Those deliveries are valid and ours: rejected,
        they would come back marked redelivered and out of order, and every window change
        or end of a wait would bounce a few. So deliveries to a consumer of ours go to
        ``_on_message`` until its ``cancel-ok``; pika handles any other.
        """
        ch.add_callback(self._on_get_empty, [pika.spec.Basic.GetEmpty], False)
        pika_deliver = ch._on_deliver  # type: ignore[attr-defined]

        def on_deliver(method_frame: Any, header_frame: Any, body: bytes) -> None:
            if method_frame.method.consumer_tag in self._tags:
                self._on_message(ch, method_frame.method, header_frame.properties, body)
            else:
                pika_deliver(method_frame, header_frame, body)

        ch._on_deliver = on_deliver  # type: ignore[attr-defined]

    def _consume(self, queue: str, prefetch: int, push: bool, ch: Channel) -> None:
        ch.basic_qos(prefetch_count=prefetch)  # RabbitMQ: for the consumers started next
        tag = ch.basic_consume(queue, self._on_message)
        self._tags[tag] = (queue, push)
        (self._push if push else self._watchers)[queue] = tag

    def _watch(self, queue: str, ch: Channel) -> None:
        if queue not in self._watchers and queue not in self._push:
            self._consume(queue, 1, False, ch)

    def _restart(self, queue: str, prefetch: int) -> None:
        """Consume ``queue`` with a new window: the new consumer starts before the old goes
        (deliveries the old one made stay valid), and a watcher is no longer needed."""
        old = self._push.pop(queue, None)
        if self.session.ready.is_set():
            self.session.main.run(partial(self._consume, queue, prefetch, True))
        for tag in (old, self._watchers.pop(queue, None)):
            if tag is not None:
                self._cancel(tag)

    def _stop(self, queue: str) -> None:
        """Cancel the push consumer of ``queue``; what it buffered goes back to the queue."""
        tag = self._push.pop(queue, None)
        if tag is None:
            return
        if self.auto_delete(queue) and self.session.ready.is_set():
            self.session.main.run(partial(self._watch, queue))  # so the queue stays
        self._cancel(tag)
        returned = self.inbox.take_buffer(queue)
        if returned:
            self.settle([d.delivery_tag for d in returned], True)

    def _cancel(self, tag: str) -> None:
        def forget(frame: Any) -> None:
            # pika calls the first waiting callback on any cancel-ok of the channel, so
            # forget the consumer the frame names, which is not always ``tag``.
            self._tags.pop(frame.method.consumer_tag, None)

        self.session.main.run(lambda ch: ch.basic_cancel(tag, callback=forget))

    def _on_message(self, _ch: Channel, method: Any, properties: Any, body: bytes) -> None:
        entry = self._tags.get(method.consumer_tag)
        if entry is None:
            return
        queue, push = entry
        delivery = self.inbox.register(self.session.epoch, queue, method, properties, body)
        if delivery is None:
            return
        if push and self.window(queue) == 0:
            # A late delivery to a push consumer cancelled since: nobody asked for it.
            self.settle([delivery.delivery_tag], True)
            return
        self.inbox.buffer(delivery)

    def _on_get_empty(self, _frame: Any) -> None:
        if self._get_job is not None:
            self._get_job.empty()


class GetJob:
    """``basic.get`` from several queues in turn until ``count`` messages or all are empty."""

    def __init__(
        self, consumers: Consumers, ch: Channel, queues: Sequence[str], count: int, done: Done
    ) -> None:
        self.consumers = consumers
        self.ch = ch
        self.live = list(queues)
        self.count = count
        self.done = done
        self.got: list[Delivery] = []
        self.turn = 0
        self.current = ""

    def next(self) -> None:
        if len(self.got) >= self.count or not self.live:
            self.consumers._get_job = None
            self.done(self.got)
            return
        self.current = self.live[self.turn % len(self.live)]
        self.turn += 1
        self.ch.basic_get(self.current, self._got)

    def _got(self, _ch: Channel, method: Any, properties: Any, body: bytes) -> None:
        consumers = self.consumers
        epoch = consumers.session.epoch
        delivery = consumers.inbox.register(epoch, self.current, method, properties, body)
        if delivery is not None:
            self.got.append(delivery)
        self.next()

    def empty(self) -> None:
        self.live.remove(self.current)
        self.turn -= 1
        self.next()
