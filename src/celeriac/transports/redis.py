"""The Redis broker (``redis://[:password@]host:port/db``, ``rediss://`` for TLS).

| feature                         | supported                                              |
|---------------------------------|--------------------------------------------------------|
| exchanges                       | direct, fanout, topic, headers (emulated, stored)      |
| priorities                      | 0-255, higher first, FIFO within a priority            |
| TTL, dead-lettering             | per message and per queue; x-death header              |
| delivery limit, max length      | yes (max length drops from the head, as RabbitMQ)      |
| ETA (``defer``)                 | per-queue sorted set, ready when due                   |
| shared between processes        | yes, across hosts                                      |
| survives the process            | yes; a Redis restart too with AOF or RDB persistence   |
| queue ``expires``               | no (exclusive/auto-delete queues go with their session)|

At-least-once without a visibility timeout: a fetch moves messages into the session's lease
atomically (a Lua script), an ack deletes them. Sessions keep a heartbeat from a background
thread; a dead session's messages return to their queues marked redelivered, and a live
session's messages never do, however long its tasks run. Waiting consumers sleep on Redis
pub/sub until a queue they consume gets messages. The key layout and the scripts are in
``redis_layout.py``; each operation is one script, one round trip.

Transport options (also accepted in the URL's query): ``global_keyprefix`` (prefix of every
key, to share a database between applications), ``lease_timeout`` (default 30 s),
``connection_lost_timeout`` (10 s: how soon a session whose connections closed, e.g. a
killed process, loses its messages), ``heartbeat_interval`` (2 s), ``confirm_publish``
(default off: a publish returns once sent and its reply is checked on the next call; on:
once Redis stored it), ``socket_timeout`` (30 s).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import redis

from celeriac.exceptions import NotFound
from celeriac.messaging.entities import Binding, Exchange, Queue
from celeriac.transports import redis_layout as lua
from celeriac.transports.base import Capabilities, Delivery, Outgoing, Transport
from celeriac.transports.redis_aio import Endpoint, LoopLink, LoopSubscriber
from celeriac.transports.redis_link import (
    CONNECTION_ERRORS,
    Link,
    RedisSettings,
    Script,
    run_script,
)
from celeriac.transports.redis_session import SessionThread
from celeriac.transports.redis_store import (
    Dying,
    Store,
    binding_field,
    decode_payload,
    text,
)
from celeriac.transports.virtual import DeathReason, QueuePolicy
from celeriac.utils.url import mask_password

logger = logging.getLogger(__name__)

#: How often a fetching session looks for dead sessions.
REAP_INTERVAL = 1.0
#: How often a fetching session dead-letters expired messages of every queue.
SWEEP_INTERVAL = 0.1

_FETCH, _ACK = Script.of(lua.FETCH), Script.of(lua.ACK, idempotent=True)
_REQUEUE, _DEFER, _RECOVER = (
    Script.of(lua.REQUEUE, idempotent=True),
    Script.of(lua.DEFER, idempotent=True),
    Script.of(lua.RECOVER, idempotent=True),
)
_BEAT, _CLOSE = Script.of(lua.BEAT, idempotent=True), Script.of(lua.CLOSE, idempotent=True)
_DECLARE_EXCHANGE = Script.of(lua.DECLARE_EXCHANGE, idempotent=True)
_DELETE_EXCHANGE = Script.of(lua.DELETE_EXCHANGE, idempotent=True)
_DECLARE_QUEUE, _DELETE_QUEUE = (
    Script.of(lua.DECLARE_QUEUE, idempotent=True),
    Script.of(lua.DELETE_QUEUE, idempotent=True),
)
_BIND, _UNBIND = Script.of(lua.BIND, idempotent=True), Script.of(lua.UNBIND, idempotent=True)
_PURGE, _LENGTH = Script.of(lua.PURGE), Script.of(lua.LENGTH, idempotent=True)

T = TypeVar("T")


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking transport call off the event loop (the rare, slow paths)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(fn, *args))


@dataclass(frozen=True, slots=True)
class _Held:
    """A delivery this session holds, and its member in ``expiring`` (None: no TTL)."""

    delivery: Delivery
    expiring: str | None

    def dying(self, tag: int, reason: DeathReason) -> Dying:
        d = self.delivery
        return Dying(d.queue, tag, d.envelope, d.exchange, d.routing_key, reason, self.expiring)


class RedisTransport(Transport):
    """A session with the Redis server named by the URL."""

    schemes: ClassVar[tuple[str, ...]] = ("redis", "rediss")
    capabilities: ClassVar[Capabilities] = Capabilities(
        cross_process=True, persistent=True, blocking_io=True, async_consume=True
    )
    recoverable_errors: ClassVar[tuple[type[BaseException], ...]] = CONNECTION_ERRORS

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        self.settings = RedisSettings.parse(url, self.options)
        self._p = self.settings.prefix
        self._link = Link(self.settings.pool())
        self._ops = threading.RLock()  # fetch/settle/recover see one consistent ``_held``
        self._store = Store(self._link, self.settings, self._session_id, self._lost, self._ops)
        self._session: str | None = None
        self._session_pid = 0
        self._thread: SessionThread | None = None
        self._held: dict[int, _Held] = {}
        self._maybe_acked: set[int] = set()
        self._unsure = False
        self._seen = 0
        self._next_due: float | None = None
        self._next_reap = 0.0
        self._next_sweep = 0.0
        self._rotation = 0
        #: The connections ``afetch``/``aack``/``await_ready`` use, read by the loop that
        #: made them: scripts, and the wake-up channels.
        self._loop_link: LoopLink | None = None
        self._loop_sub: LoopSubscriber | None = None
        self._loop_link_pid = 0
        self._loop_seen = 0
        #: The queues a loop fetch last found empty, and the wake-up generation then.
        self._empty: tuple[frozenset[str], int] | None = None

    def __repr__(self) -> str:
        return f"<RedisTransport {mask_password(self.url)}>"

    # -- sessions -------------------------------------------------------------------------
    def _session_id(self, create: bool) -> str:
        if create:
            return self._ensure_session()
        return self._session or ""

    def _lost(self) -> None:
        """A call that changes leases failed midway: check them before the next fetch."""
        self._unsure = True

    def _ensure_session(self) -> str:
        """This session's id, registered, with its heartbeat thread running."""
        pid = os.getpid()
        if self._session is not None and self._session_pid == pid:
            return self._session
        with self._ops:
            if self._session is None or self._session_pid != pid:
                self._held.clear()  # a forked child holds nothing of its parent's
                session = uuid.uuid4().hex
                thread = SessionThread(
                    self.settings.pool(),
                    f"{self._p}alive:{session}",
                    lambda client: self._beat(session, client),
                    self.settings.heartbeat_interval,
                )
                try:
                    thread.start(self.settings.socket_timeout)
                    self._link.call(_BEAT, [self._p, session, *self._store.lease_args()])
                except BaseException:
                    thread.stop()
                    raise
                self._thread, self._session, self._session_pid = thread, session, pid
            return self._session

    def _beat(self, session: str, client: redis.Redis) -> bool:
        return bool(run_script(client, _BEAT, [self._p, session, *self._store.lease_args()]))

    # -- topology -------------------------------------------------------------------------
    def _change(self, script: Script, args: list[Any]) -> str:
        """Run a script that changes the topology; our cached copy is stale after it."""
        try:
            return text(self._link.call(script, [self._p, *args]) or "")
        finally:
            self._store.forget()

    def declare_exchange(self, exchange: Exchange) -> None:
        if exchange.name:
            self._change(_DECLARE_EXCHANGE, [exchange.name, exchange.type])

    def delete_exchange(self, name: str) -> None:
        self._change(_DELETE_EXCHANGE, [name])

    def declare_queue(self, queue: Queue) -> None:
        owner = self._ensure_session() if (queue.exclusive or queue.auto_delete) else ""
        pairs: list[str] = []
        for binding in queue.all_bindings():
            name = binding.exchange.name
            pairs += [name, binding_field(name, queue.name, binding)]
        policy = QueuePolicy.of(queue).to_json()
        args = [owner, *self._store.lease_args(), queue.name, policy, *pairs]
        missing = self._change(_DECLARE_QUEUE, args)
        if missing:
            raise NotFound(f"cannot bind {queue.name!r}: no exchange {missing!r}")

    def delete_queue(self, name: str) -> None:
        self._change(_DELETE_QUEUE, [name])

    def bind(self, queue: str, binding: Binding) -> None:
        name = binding.exchange.name
        if self._change(_BIND, [name, binding_field(name, queue, binding)]):
            raise NotFound(f"cannot bind {queue!r}: no exchange {name!r}")

    def unbind(self, queue: str, binding: Binding) -> None:
        name = binding.exchange.name
        self._change(_UNBIND, [binding_field(name, queue, binding)])

    def queue_length(self, name: str) -> int:
        return int(self._link.call(_LENGTH, [self._p, name]))

    def purge(self, name: str) -> int:
        return int(self._link.call(_PURGE, [self._p, name]))

    # -- storing --------------------------------------------------------------------------
    def publish(self, messages: Sequence[Outgoing]) -> None:
        self._store.publish(messages)

    # -- consuming ------------------------------------------------------------------------
    def fetch(self, queues: Sequence[str], limit: int, ack: Sequence[int] = ()) -> list[Delivery]:
        session = self._ensure_session()
        thread = self._thread
        assert thread is not None
        # Subscribed before looking, so no later publish goes unnoticed.
        thread.watch(self._wake_channels(queues), self.settings.socket_timeout)
        self._seen = thread.generation
        order = self._rotated(queues)
        with self._ops:
            if self._unsure:
                self._recover(session)
            out: list[Delivery] = []
            acks = list(ack)
            for _ in range(3):  # again only when dying messages took the room
                got, died = self._fetch_once(session, order, limit - len(out), acks)
                out += got
                acks = []
                if not died or len(out) >= limit:
                    break
            return out

    def _wake_channels(self, queues: Sequence[str]) -> list[str]:
        return [f"{self._p}wake:{q}" for q in queues]

    def _rotated(self, queues: Sequence[str]) -> list[str]:
        """``queues`` starting one further each call, so none is always served last."""
        start = self._rotation % max(len(queues), 1)
        self._rotation += 1
        return [*queues[start:], *queues[:start]]

    def _fetch_once(
        self, session: str, queues: list[str], limit: int, acks: list[int]
    ) -> tuple[list[Delivery], bool]:
        now, args, popped = self._fetch_request(session, queues, limit, acks)
        try:
            reply = self._link.call(_FETCH, args)
        except CONNECTION_ERRORS:
            self._failed(acks, popped)
            raise
        deliveries, dying = self._fetched(reply, now)
        self._dead_letter_quietly(dying)
        return deliveries, bool(dying)

    def _fetch_request(
        self, session: str, queues: list[str], limit: int, acks: list[int]
    ) -> tuple[float, list[Any], dict[int, _Held]]:
        """``FETCH``'s arguments, the time they were made and the deliveries they settle
        (taken out of ``_held``: ``_failed`` puts them back). Call under ``_ops``."""
        now = time.time()
        reap, sweep = now >= self._next_reap, now >= self._next_sweep
        if reap:
            self._next_reap = now + REAP_INTERVAL
        if sweep:
            self._next_sweep = now + SWEEP_INTERVAL
        popped = self._take_held(acks)
        ids, members = self._settle_args(acks, popped)
        args = [
            self._p,
            session,
            *self._store.lease_args(),
            repr(now),
            limit,
            int(reap),
            int(sweep),
            *ids,
            *members,
            len(queues),
            *queues,
        ]
        return now, args, popped

    def _fetched(self, reply: list[Any], now: float) -> tuple[list[Delivery], list[Dying]]:
        """The deliveries of a ``FETCH`` reply, and the messages it found dying (to
        dead-letter). Call under ``_ops``."""
        taken, swept, lost, next_due = reply
        self._warn_if_lost(lost)
        self._next_due = float(next_due) if next_due else None
        dying = [self._store.dying(swept, i, "expired") for i in range(0, len(swept), 3)]
        try:
            deliveries = self._deliveries(taken, now, dying)
        except BaseException:
            self._unsure = True  # leased in Redis, unknown here: ``_recover`` returns them
            raise
        return deliveries, dying

    def _dead_letter_quietly(self, dying: list[Dying]) -> None:
        try:
            self._store.dead_letter(dying)
        except CONNECTION_ERRORS as exc:  # they stay leased; ``_recover`` returns them
            logger.warning("Could not dead-letter %d message(s) yet: %r", len(dying), exc)

    def _deliveries(self, taken: list[Any], now: float, dying: list[Dying]) -> list[Delivery]:
        """Deliveries from a ``FETCH`` reply; expired or over-delivered ones go to ``dying``."""
        deliveries: list[Delivery] = []
        held: dict[int, _Held] = {}
        for i in range(0, len(taken), 4):
            queue, tag, count = text(taken[i]), int(taken[i + 1]), int(taken[i + 2])
            exchange, key, envelope, expires_at = decode_payload(taken[i + 3])
            expiring = f"{tag}|{queue}" if expires_at is not None else None
            reason: DeathReason | None = None
            if expires_at is not None and expires_at <= now:
                reason = "expired"
            elif self._store.policy(queue).over_delivery_limit(count):
                reason = "delivery_limit"
            if reason is not None:
                dying.append(Dying(queue, tag, envelope, exchange, key, reason, expiring))
            else:
                delivery = Delivery(envelope, tag, queue, exchange, key, count > 0)
                held[tag] = _Held(delivery, expiring)
                deliveries.append(delivery)
        self._held.update(held)  # all or none: a failure above leaves them to ``_recover``
        return deliveries

    def _take_held(self, tags: Sequence[int]) -> dict[int, _Held]:
        """Forget deliveries being settled (``_failed`` puts them back)."""
        popped: dict[int, _Held] = {}
        for tag in tags:
            held = self._held.pop(tag, None)
            if held is not None:
                popped[tag] = held
        return popped

    @staticmethod
    def _settle_args(tags: Sequence[int], popped: Mapping[int, _Held]) -> tuple[list[Any], ...]:
        """Counted lists of ids and of their ``expiring`` members (``ACK``'s arguments)."""
        members = [h.expiring for h in popped.values() if h.expiring]
        return [len(tags), *tags], [len(members), *members]

    def _failed(self, tags: Sequence[int], popped: Mapping[int, _Held]) -> None:
        """A settling call's outcome is unknown: keep its deliveries, check the lease later."""
        self._held.update(popped)
        self._maybe_acked.update(tags)
        self._unsure = True

    def _recover(self, session: str) -> None:
        """Return messages leased here that this process never heard of (lost replies)."""
        returned = self._link.call(_RECOVER, [self._p, session, *self._held])
        self._unsure = False
        self._empty = None  # (what went back may be ready again)
        if returned:
            logger.warning(
                "%d message(s) fetched when the Redis connection broke went back to their "
                "queues, marked redelivered",
                returned,
            )

    def _warn_if_lost(self, lost: Sequence[bytes]) -> None:
        gone = [tag for tag in map(int, lost) if tag not in self._maybe_acked]
        self._maybe_acked.clear()
        if gone:
            logger.warning(
                "%d acked message(s) were no longer leased to this session (it was taken "
                "for dead); they will be delivered again",
                len(gone),
            )

    def ack(self, delivery_tags: Sequence[int]) -> None:
        if not delivery_tags:
            return
        with self._ops:
            popped = self._take_held(delivery_tags)
            ids, members = self._settle_args(delivery_tags, popped)
            try:
                lost = self._link.call(_ACK, [self._p, self._session or "", *ids, *members])
            except CONNECTION_ERRORS:
                self._failed(delivery_tags, popped)
                raise
            self._warn_if_lost(lost)

    def reject(self, delivery_tags: Sequence[int], requeue: bool) -> None:
        if not delivery_tags:
            return
        with self._ops:
            popped = self._take_held(delivery_tags)
            try:
                if requeue:
                    self._link.call(_REQUEUE, [self._p, self._session or "", *delivery_tags])
                    return
                self._store.dead_letter(
                    [held.dying(tag, "rejected") for tag, held in popped.items()]
                )
            except CONNECTION_ERRORS:
                self._failed((), popped)
                raise

    def defer(self, deferrals: Sequence[tuple[int, float]]) -> None:
        if not deferrals:
            return
        with self._ops:
            popped = self._take_held([tag for tag, _ in deferrals])
            args: list[Any] = [self._p, self._session or ""]
            for tag, until in deferrals:
                args += [tag, repr(until)]
            try:
                self._link.call(_DEFER, args)
            except CONNECTION_ERRORS:
                self._failed((), popped)
                raise

    # -- consuming from an event loop ----------------------------------------------------
    # The same operations on a connection the running loop reads itself (``LoopLink``):
    # no I/O thread between the loop and Redis. ``_ops`` is held only between awaits.
    # What blocks (registering the session, subscribing, recovering after a failed call,
    # dead-lettering) still happens in a thread, through the synchronous twins.

    def _loop_connection(self) -> LoopLink | None:
        """This loop's connection; None over TLS (then the calls go through a thread)."""
        loop = asyncio.get_running_loop()
        link, pid = self._loop_link, os.getpid()
        if link is None or link.loop is not loop or self._loop_link_pid != pid:
            self._drop_loop_connections()
            endpoint = Endpoint.of_pool(self._link.pool)
            if endpoint is None:
                return None
            link = LoopLink(endpoint, loop)
            self._loop_link, self._loop_link_pid = link, pid
            self._loop_sub = LoopSubscriber(endpoint, loop)
        return link

    def _drop_loop_connections(self) -> None:
        link, sub = self._loop_link, self._loop_sub
        self._loop_link = self._loop_sub = None
        if self._loop_link_pid == os.getpid():  # (a forked child leaves its parent's alone)
            if link is not None:
                link.close_from_any_thread()
            if sub is not None:
                sub.close_from_any_thread()

    def _loop_subscriber(self) -> LoopSubscriber | None:
        """The wake-up subscriber of the running loop, if ``afetch`` made one."""
        sub = self._loop_sub
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        if sub is None or sub.loop is not loop or self._loop_link_pid != os.getpid():
            return None
        return sub

    async def afetch(
        self, queues: Sequence[str], limit: int, ack: Sequence[int] = ()
    ) -> list[Delivery]:
        link = self._loop_connection()
        sub = self._loop_sub
        if link is None or sub is None:  # TLS: the blocking twin, in a thread
            return await _in_thread(self.fetch, queues, limit, ack)
        session = self._session
        if session is None or self._thread is None or self._session_pid != os.getpid():
            session = await _in_thread(self._ensure_session)
        if self._unsure:
            await _in_thread(self._recover_if_unsure, session)
        # Subscribed before looking, so no later publish goes unnoticed.
        wake = self._wake_channels(queues)
        if not sub.watching(wake):
            await sub.subscribe(wake)
        if self._empty is not None:
            sub.poll()  # wake-ups already received count (the loop may not have run yet)
        self._loop_seen = generation = sub.generation
        if self._still_empty(queues, generation):
            if ack:
                await self.aack(ack)
            return []
        order = self._rotated(queues)
        out: list[Delivery] = []
        acks = list(ack)
        for _ in range(3):  # again only when dying messages took the room
            wanted = limit - len(out)
            got, died = await self._afetch_once(link, session, order, wanted, acks)
            out += got
            acks = []
            if not died or len(out) >= limit:
                break
        short = not died and len(got) < wanted
        self._empty = (frozenset(queues), generation) if short else None
        return out

    def _still_empty(self, queues: Sequence[str], generation: int) -> bool:
        """True when a fetch found ``queues`` empty and nothing woke them since: no
        message was published to them, none is due, and no sweep or reap is due (so
        this fetch may be skipped: an idle worker then costs Redis nothing)."""
        empty = self._empty
        if empty is None or empty[1] != generation or empty[0] != frozenset(queues):
            return False
        now = time.time()
        if now >= self._next_reap or now >= self._next_sweep:
            return False
        return self._next_due is None or self._next_due > now

    def _recover_if_unsure(self, session: str) -> None:
        with self._ops:
            if self._unsure:
                self._recover(session)

    async def _afetch_once(
        self, link: LoopLink, session: str, queues: list[str], limit: int, acks: list[int]
    ) -> tuple[list[Delivery], bool]:
        with self._ops:
            now, args, popped = self._fetch_request(session, queues, limit, acks)
        try:
            reply = await link.call(_FETCH, args)
        except BaseException:
            # Unknown outcome (a lost connection, or this task cancelled while waiting):
            # the next fetch checks the lease first.
            with self._ops:
                self._failed(acks, popped)
            raise
        with self._ops:
            deliveries, dying = self._fetched(reply, now)
        if dying:
            await _in_thread(self._dead_letter_quietly, dying)
        return deliveries, bool(dying)

    async def aack(self, delivery_tags: Sequence[int]) -> None:
        if not delivery_tags:
            return
        link = self._loop_connection()
        if link is None:
            await _in_thread(self.ack, delivery_tags)
            return
        with self._ops:
            popped = self._take_held(delivery_tags)
            ids, members = self._settle_args(delivery_tags, popped)
        try:
            lost = await link.call(_ACK, [self._p, self._session or "", *ids, *members])
        except BaseException:
            with self._ops:
                self._failed(delivery_tags, popped)
            raise
        with self._ops:
            self._warn_if_lost(lost)

    # -- waiting --------------------------------------------------------------------------
    def _wait_time(self, timeout: float) -> float:
        due = self._next_due
        if due is not None:
            # Not below a sweep period: an expired message is only collected that often.
            timeout = min(timeout, max(due - time.time(), SWEEP_INTERVAL / 2))
        return max(timeout, 0.0)

    def wait(self, timeout: float) -> None:
        thread = self._thread
        if thread is None:  # nothing consumed yet: nothing to wait for
            time.sleep(self._wait_time(timeout))
            return
        thread.wait(self._seen, self._wait_time(timeout))
        self._seen = thread.generation

    async def await_ready(self, timeout: float) -> None:
        sub = self._loop_subscriber()
        if sub is not None and sub.watching(()):
            # The loop's own subscription (``afetch`` subscribed before looking).
            await sub.wait_change(self._loop_seen, self._wait_time(timeout))
            self._loop_seen = sub.generation
            return
        thread = self._thread
        if thread is None:
            await asyncio.sleep(self._wait_time(timeout))
            return
        await thread.await_change(self._seen, self._wait_time(timeout))
        self._seen = thread.generation

    def wake(self) -> None:
        if self._thread is not None:
            self._thread.bump()
        sub = self._loop_sub
        if sub is not None:
            sub.bump_from_any_thread()

    def close(self) -> None:
        with self._ops:
            thread, self._thread = self._thread, None
            session, self._session = self._session, None
            if thread is not None:
                thread.stop()
            self._store.flush_on_close()
            if session is not None and self._session_pid == os.getpid():
                try:
                    self._link.call(_CLOSE, [self._p, session])
                except CONNECTION_ERRORS as exc:
                    logger.warning(
                        "Could not end the Redis session on %s (%r); its %d unacked "
                        "message(s) return to their queues when its lease runs out",
                        mask_password(self.url),
                        exc,
                        len(self._held),
                    )
            self._held.clear()
            self._link.close()
            self._drop_loop_connections()
