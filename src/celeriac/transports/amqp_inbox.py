"""Deliveries an ``amqp://`` session holds: leased to it, and not yet settled.

The network thread ``register``s each delivery (from a consumer or ``basic.get``); the
consumer's thread ``take``s buffered ones and settles them. One condition variable guards
it all, and wakes whoever waits for a delivery (threads in ``wait_for``, asyncio waiters
through their loop).

Delivery tags given out carry the epoch of the main channel they came from
(``epoch << 64 | AMQP tag``): after the channel or connection is lost its deliveries are void
(the broker gives them to someone else) and settling them must not touch the new channel,
whose tags start again at 1.

``settle_plan`` turns a set of tags into as few frames as is safe: one ``multiple=True``
frame settles every unsettled delivery up to its tag, so it may cover the run of settled
tags at the head of the outstanding ones, and nothing beyond.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pika

from celeriac.transports import amqp_wire as wire
from celeriac.transports.base import Delivery

TAG_BITS = 64
TAG_MASK = (1 << TAG_BITS) - 1
#: A delivery due later than this (seconds) has come back from a delay bucket too early.
EARLY = 0.001


class Inbox:
    """Leased deliveries: buffered (not yet fetched), held by the consumer, or early."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.epoch = 0
        self._buffers: defaultdict[str, deque[Delivery]] = defaultdict(deque)
        self._outstanding: dict[int, Delivery] = {}  # AMQP tag -> delivery, in tag order
        self._early: list[tuple[Delivery, float]] = []
        self._leased: defaultdict[str, int] = defaultdict(int)
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._turn = 0

    # -- network thread -------------------------------------------------------------------
    def register(
        self, epoch: int, queue: str, method: Any, properties: pika.BasicProperties, body: bytes
    ) -> Delivery | None:
        """Record a delivery as leased; None when void (old epoch) or early (parked)."""
        envelope, due = wire.from_wire(properties, body)
        tag: int = method.delivery_tag
        delivery = Delivery(
            envelope,
            (epoch << TAG_BITS) | tag,
            queue,
            method.exchange,
            method.routing_key,
            method.redelivered,
        )
        with self.cond:
            if epoch != self.epoch:
                return None
            self._outstanding[tag] = delivery
            self._leased[queue] += 1
            if due is not None and due - time.time() > EARLY:
                self._early.append((delivery, due))
                self._notify()
                return None
        return delivery

    def buffer(self, delivery: Delivery) -> None:
        """Keep ``delivery`` for the next ``take`` of its queue."""
        with self.cond:
            self._buffers[delivery.queue].append(delivery)
            self._notify()

    def void(self, epoch: int) -> None:
        """The main channel of ``epoch`` is gone, and every delivery it made with it."""
        with self.cond:
            self.epoch = epoch + 1
            self._buffers.clear()
            self._outstanding.clear()
            self._early.clear()
            self._leased.clear()
            self._notify()

    def _notify(self) -> None:
        self.cond.notify_all()
        waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            loop.call_soon_threadsafe(_resolve, future)

    def wake(self) -> None:
        with self.cond:
            self._notify()

    # -- consumer side --------------------------------------------------------------------
    def has_buffered(self, queues: Iterable[str]) -> bool:
        with self.cond:
            return any(self._buffers.get(q) for q in queues)

    def has_early(self) -> bool:
        return bool(self._early)

    def has_ready(self) -> bool:
        """Something to hand over (or to move on): a buffered or an early delivery."""
        return bool(self._early) or any(self._buffers.values())

    def buffered(self, queues: Iterable[str]) -> int:
        return sum(len(self._buffers.get(q, ())) for q in queues)

    def credit(self, queue: str, window: int) -> int:
        """How many more deliveries the broker may push to ``queue``'s consumer."""
        with self.cond:
            return window - self._leased[queue]

    def take(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        """Up to ``limit`` buffered deliveries, from the queues in turn."""
        got: list[Delivery] = []
        with self.cond:
            live = [self._buffers[q] for q in queues if self._buffers.get(q)]
            self._turn += 1
            while live and len(got) < limit:
                start = self._turn % len(live)
                for buffer in live[start:] + live[:start]:
                    if len(got) >= limit:
                        break
                    got.append(buffer.popleft())
                    if not buffer:
                        live.remove(buffer)
        return got

    def take_buffer(self, queue: str) -> list[Delivery]:
        """Every buffered delivery of ``queue`` (its consumer is going)."""
        with self.cond:
            return list(self._buffers.pop(queue, ()))

    def take_early(self, queue: str | None = None) -> list[tuple[Delivery, float]]:
        """The early deliveries (of ``queue``, or all), with when each is due."""
        kept: list[tuple[Delivery, float]] = []
        taken: list[tuple[Delivery, float]] = []
        with self.cond:
            for entry in self._early:
                (taken if queue is None or entry[0].queue == queue else kept).append(entry)
            self._early = kept
        return taken

    def holding(self, tags: Iterable[tuple[int, float]]) -> list[tuple[Delivery, float]]:
        """The deliveries of this epoch among ``tags`` (pairs of tag and a time)."""
        with self.cond:
            out = self._outstanding
            return [
                (out[tag & TAG_MASK], until)
                for tag, until in tags
                if tag >> TAG_BITS == self.epoch and tag & TAG_MASK in out
            ]

    def settle_plan(self, delivery_tags: Iterable[int]) -> tuple[int, list[tuple[int, bool]]]:
        """Forget the deliveries of ``delivery_tags``; the frames that settle them.

        Returns the epoch and ``(AMQP tag, multiple)`` pairs; tags of an older epoch or
        unknown here are left out.
        """
        with self.cond:
            epoch, out = self.epoch, self._outstanding
            tags = {t & TAG_MASK for t in delivery_tags if t >> TAG_BITS == epoch}
            tags &= out.keys()
            if not tags:
                return epoch, []
            head = 0
            for tag in out:  # oldest first: the run of settled tags at the head
                if tag not in tags:
                    break
                head = tag
            for tag in tags:
                self._leased[out.pop(tag).queue] -= 1
        frames = [(head, True)] if head else []
        frames += [(t, False) for t in sorted(t for t in tags if t > head)]
        return epoch, frames

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def add_waiter(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> bool:
        """Wake ``future`` on the next delivery; False (and no waiting) if one is here."""
        with self.cond:
            if self.has_ready():
                return False
            self._waiters.append((loop, future))
            return True

    def remove_waiter(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
        with self.cond:
            if (loop, future) in self._waiters:
                self._waiters.remove((loop, future))


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
