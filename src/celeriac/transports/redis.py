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
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

import redis

from celeriac.exceptions import NotFound, OperationalError
from celeriac.messaging import serialization
from celeriac.messaging.entities import Binding, Exchange, Queue
from celeriac.messaging.routing import BindingSpec, route
from celeriac.transports import redis_layout as lua
from celeriac.transports.base import (
    Capabilities,
    Delivery,
    Envelope,
    Outgoing,
    Properties,
    Transport,
)
from celeriac.transports.redis_link import (
    CONNECTION_ERRORS,
    Link,
    RedisSettings,
    Script,
    run_script,
)
from celeriac.transports.redis_session import SessionThread
from celeriac.transports.virtual import DeathReason, QueuePolicy
from celeriac.utils.url import mask_password

logger = logging.getLogger(__name__)

#: How often a fetching session looks for dead sessions.
REAP_INTERVAL = 1.0
#: How often a fetching session dead-letters expired messages of every queue.
SWEEP_INTERVAL = 0.1
#: Dead-letter hops within one call before a message is dropped (a dead-letter cycle).
MAX_DEAD_LETTER_HOPS = 8
#: Failed publish replies reported on close before giving up on the rest.
MAX_OUTSTANDING_ERRORS = 100

_FETCH, _STORE, _ACK = Script.of(lua.FETCH), Script.of(lua.STORE), Script.of(lua.ACK)
_REQUEUE, _DEFER, _RECOVER = Script.of(lua.REQUEUE), Script.of(lua.DEFER), Script.of(lua.RECOVER)
_BEAT, _CLOSE, _TOPOLOGY = Script.of(lua.BEAT), Script.of(lua.CLOSE), Script.of(lua.TOPOLOGY)
_DECLARE_EXCHANGE = Script.of(lua.DECLARE_EXCHANGE)
_DELETE_EXCHANGE = Script.of(lua.DELETE_EXCHANGE)
_DECLARE_QUEUE, _DELETE_QUEUE = Script.of(lua.DECLARE_QUEUE), Script.of(lua.DELETE_QUEUE)
_BIND, _UNBIND = Script.of(lua.BIND), Script.of(lua.UNBIND)
_PURGE, _LENGTH = Script.of(lua.PURGE), Script.of(lua.LENGTH)

# -- payloads: ``[exchange, routing key, headers, properties, expires_at]`` JSON, \n, body --
# Headers are nearly always plain JSON (Celery's are): the stdlib's C encoder first, the
# extended-type serializer only when that fails.
_PLAIN_JSON = json.JSONEncoder(separators=(",", ":"))


def _encode(exchange: str, key: str, envelope: Envelope, expires_at: float | None) -> bytes:
    meta = [exchange, key, dict(envelope.headers), envelope.properties.to_dict(), expires_at]
    try:
        text = _PLAIN_JSON.encode(meta).encode()
    except TypeError:
        text = serialization.dumps(meta)[2]
    return text + b"\n" + envelope.body


def _decode(payload: bytes) -> tuple[str, str, Envelope, float | None]:
    meta, _, body = payload.partition(b"\n")
    if b'"__type__"' in meta:  # extended types (datetime, bytes...) were encoded
        data = serialization.loads(meta, "application/json", "utf-8")
    else:
        data = json.loads(meta)
    exchange, key, headers, properties, expires_at = data
    return exchange, key, Envelope(body, headers, Properties.from_dict(properties)), expires_at


def _binding_field(exchange: str, queue: str, binding: Binding) -> str:
    data = [exchange, queue, binding.routing_key, dict(binding.arguments)]
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _Orphanage:
    """Unconfirmed publishes of closed sessions, per broker, for the next session to send.

    A producer's retry policy resets its connection after an error; publishes sent but not
    confirmed before that must not vanish with the old session.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._batches: dict[tuple[str, str], list[Sequence[Outgoing]]] = {}
        self.waiting = False

    def give(self, key: tuple[str, str], batches: Sequence[Sequence[Outgoing]]) -> None:
        if batches:
            with self._lock:
                self._batches.setdefault(key, []).extend(batches)
                self.waiting = True

    def take(self, key: tuple[str, str]) -> list[Sequence[Outgoing]]:
        with self._lock:
            batches = self._batches.pop(key, [])
            self.waiting = bool(self._batches)
            return batches


_orphans = _Orphanage()


@dataclass(slots=True)
class _Topology:
    """A cached copy of the declarations, valid while ``version`` matches Redis's."""

    version: str = ""
    exchanges: dict[str, str] = field(default_factory=dict)
    bindings: dict[str, list[BindingSpec]] = field(default_factory=dict)
    policies: dict[str, QueuePolicy] = field(default_factory=dict)

    @classmethod
    def parse(cls, reply: list[Any]) -> _Topology:
        version, exchanges, queues, bindings = reply
        topo = cls(_text(version))
        for i in range(0, len(exchanges), 2):
            topo.exchanges[_text(exchanges[i])] = _text(exchanges[i + 1])
        for i in range(0, len(queues), 2):
            topo.policies[_text(queues[i])] = QueuePolicy.from_json(_text(queues[i + 1]))
        for raw in bindings:
            exchange, queue, key, arguments = json.loads(raw)
            topo.bindings.setdefault(exchange, []).append(BindingSpec(queue, key, arguments))
        return topo


@dataclass(slots=True)
class _Batch:
    """Copies to store (flattened ``STORE`` arguments) and the queues they fill."""

    copies: list[Any] = field(default_factory=list)
    count: int = 0
    limited: dict[str, QueuePolicy] = field(default_factory=dict)

    def limits(self) -> list[Any]:
        args: list[Any] = [len(self.limited)]
        for name, policy in self.limited.items():
            args += [name, policy.max_length, 1 if policy.dead_letter_exchange else 0]
        return args

    @property
    def keeps(self) -> bool:
        """True when queue-length victims will be leased to this session."""
        return any(p.dead_letter_exchange for p in self.limited.values())


@dataclass(frozen=True, slots=True)
class _Dying:
    """A message leased to this session that must be dead-lettered (or dropped)."""

    queue: str
    tag: int
    envelope: Envelope
    exchange: str
    routing_key: str
    reason: DeathReason
    expiring: str | None


@dataclass(frozen=True, slots=True)
class _Held:
    delivery: Delivery
    expiring: str | None  # its member in ``expiring``, to drop when it is settled


class RedisTransport(Transport):
    """A session with the Redis server named by the URL."""

    schemes: ClassVar[tuple[str, ...]] = ("redis", "rediss")
    capabilities: ClassVar[Capabilities] = Capabilities(
        cross_process=True, persistent=True, blocking_io=True
    )
    recoverable_errors: ClassVar[tuple[type[BaseException], ...]] = CONNECTION_ERRORS

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        self.settings = RedisSettings.parse(url, self.options)
        self._p = self.settings.prefix
        self._orphan_key = (self.settings.url, self._p)
        self._link = Link(self.settings.pool())
        self._topology = _Topology()
        self._ops = threading.RLock()  # fetch/settle/recover see one consistent ``_held``
        self._session: str | None = None
        self._session_pid = 0
        self._thread: SessionThread | None = None
        self._registered = False
        self._held: dict[int, _Held] = {}
        self._maybe_acked: set[int] = set()
        self._unsure = False
        self._seen = 0
        self._next_due: float | None = None
        self._next_reap = 0.0
        self._next_sweep = 0.0
        self._rotation = 0

    def __repr__(self) -> str:
        return f"<RedisTransport {mask_password(self.url)}>"

    # -- sessions -------------------------------------------------------------------------
    def _lease_args(self) -> list[Any]:
        s = self.settings
        return [repr(s.connection_lost_timeout), repr(s.lease_timeout)]

    def _ensure_session(self) -> str:
        """This session's id; its heartbeat thread runs once this returns."""
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
                    partial(self._beat, session),
                    self.settings.heartbeat_interval,
                )
                try:
                    thread.start(self.settings.socket_timeout)
                except BaseException:
                    thread.stop()
                    raise
                self._thread, self._session, self._session_pid = thread, session, pid
                self._registered = False
            return self._session

    def _beat(self, session: str, client: redis.Redis) -> bool:
        known = run_script(client, _BEAT, [self._p, session, *self._lease_args()])
        return bool(known) or not self._registered

    # -- topology -------------------------------------------------------------------------
    def _topology_now(self) -> _Topology:
        if not self._topology.version:
            self._topology = _Topology.parse(self._link.call(_TOPOLOGY, [self._p]))
        return self._topology

    def _policy(self, queue: str) -> QueuePolicy:
        policy = self._topology_now().policies.get(queue)
        if policy is None:
            self._topology = _Topology()
            policy = self._topology_now().policies.get(queue, QueuePolicy())
        return policy

    def _change(self, script: Script, args: list[Any]) -> str:
        """Run a script that changes the topology; our cached copy is stale after it."""
        try:
            return _text(self._link.call(script, [self._p, *args]) or "")
        finally:
            self._topology = _Topology()

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
            pairs += [name, _binding_field(name, queue.name, binding)]
        policy = QueuePolicy.of(queue).to_json()
        args = [owner, *self._lease_args(), queue.name, policy, *pairs]
        missing = self._change(_DECLARE_QUEUE, args)
        if missing:
            raise NotFound(f"cannot bind {queue.name!r}: no exchange {missing!r}")
        if owner:
            self._registered = True

    def delete_queue(self, name: str) -> None:
        self._change(_DELETE_QUEUE, [name])

    def bind(self, queue: str, binding: Binding) -> None:
        name = binding.exchange.name
        field_ = _binding_field(name, queue, binding)
        if self._change(_BIND, [name, field_]):
            raise NotFound(f"cannot bind {queue!r}: no exchange {name!r}")

    def unbind(self, queue: str, binding: Binding) -> None:
        name = binding.exchange.name
        self._change(_UNBIND, [_binding_field(name, queue, binding)])

    def queue_length(self, name: str) -> int:
        return int(self._link.call(_LENGTH, [self._p, name]))

    def purge(self, name: str) -> int:
        return int(self._link.call(_PURGE, [self._p, name]))

    # -- storing --------------------------------------------------------------------------
    def _route(self, topo: _Topology, exchange: str, key: str, headers: Any) -> list[str]:
        if not exchange:
            return [key] if key in topo.policies else []
        type_ = topo.exchanges.get(exchange)
        if type_ is None:
            raise NotFound(f"no exchange {exchange!r} on {mask_password(self.url)}")
        return route(type_, topo.bindings.get(exchange, ()), key, headers)

    @staticmethod
    def _add_copies(
        batch: _Batch,
        topo: _Topology,
        origin: int,
        queues: list[str],
        out: Outgoing,
        now: float,
    ) -> None:
        payloads: dict[float | None, bytes] = {}
        properties = out.envelope.properties
        for name in queues:
            policy = topo.policies[name]
            expires = policy.expires_at(properties, now)
            payload = payloads.get(expires)
            if payload is None:
                payload = _encode(out.exchange, out.routing_key, out.envelope, expires)
                payloads[expires] = payload
            expiry = "" if expires is None else repr(expires)
            batch.copies += (origin, name, policy.priority_of(properties), payload, expiry)
            batch.count += 1
            if policy.max_length is not None:
                batch.limited[name] = policy

    def _batch_of(self, messages: Sequence[Outgoing], topo: _Topology) -> _Batch:
        now = time.time()
        routes = [
            (out, self._route(topo, out.exchange, out.routing_key, out.envelope.headers))
            for out in messages
        ]  # every route before any copy: a batch naming a missing exchange stores nothing
        batch = _Batch()
        for out, queues in routes:
            self._add_copies(batch, topo, 0, queues, out, now)
        return batch

    def _store_args(self, topo: _Topology, batch: _Batch, kills: Sequence[_Dying]) -> list[Any]:
        if batch.keeps:
            self._ensure_session()
        members = [d.expiring for d in kills if d.expiring]
        return [
            self._p,
            self._session or "",
            *self._lease_args(),
            topo.version,
            len(kills),
            *[d.tag for d in kills],
            len(members),
            *members,
            batch.count,
            *batch.copies,
            *batch.limits(),
        ]

    def _store(
        self, build: Callable[[_Topology], _Batch], kills: Sequence[_Dying] = ()
    ) -> list[_Dying]:
        """Store what ``build`` makes of the current topology (retried while it changes).

        Returns the queue-length victims now leased here, to dead-letter.
        """
        fresh = False
        for _ in range(10):
            fresh = fresh or not self._topology.version
            topo = self._topology_now()
            try:
                batch = build(topo)
            except NotFound:
                if fresh:
                    raise
                self._topology = _Topology()  # maybe declared since we looked: look again
                continue
            reply = self._link.call(_STORE, self._store_args(topo, batch, kills))
            if reply != -1:
                return self._victims(reply)
            self._topology = _Topology()
        raise OperationalError("the Redis broker's bindings kept changing during a publish")

    def _victims(self, reply: list[Any]) -> list[_Dying]:
        if reply:
            self._registered = True  # ``STORE`` registered the session that leases them
        return [self._dying(reply, i, "maxlen") for i in range(0, len(reply), 3)]

    def _dying(self, flat: list[Any], i: int, reason: DeathReason) -> _Dying:
        queue, tag, payload = _text(flat[i]), int(flat[i + 1]), flat[i + 2]
        exchange, key, envelope, expires_at = _decode(payload)
        expiring = f"{tag}|{queue}" if expires_at is not None else None
        return _Dying(queue, tag, envelope, exchange, key, reason, expiring)

    def publish(self, messages: Sequence[Outgoing]) -> None:
        if _orphans.waiting:
            self._adopt_orphans()
        build = partial(self._batch_of, messages)
        topo = self._topology_now()
        exchanges = topo.exchanges
        if self.settings.confirm_publish or any(
            out.exchange and out.exchange not in exchanges for out in messages
        ):
            # Confirmed, or an exchange we do not know: look again synchronously (and
            # raise NotFound if it is really missing).
            self._dead_letter(self._store(build))
            return

        def on_reply(reply: Any) -> None:
            # -1: routed with stale bindings, nothing was stored: route again.
            self._dead_letter(self._store(build) if reply == -1 else self._victims(reply))

        self._link.send(_STORE, self._store_args(topo, build(topo), ()), on_reply, messages)

    def _adopt_orphans(self) -> None:
        """Send again what a closed session to this broker could not confirm."""
        batches = _orphans.take(self._orphan_key)
        for i, messages in enumerate(batches):
            try:
                self.publish(messages)
            except BaseException:
                _orphans.give(self._orphan_key, batches[i:])
                raise

    def _dead_letter(self, dying: list[_Dying]) -> None:
        """Remove ``dying`` (leased here) and store their dead-letter copies, atomically."""
        if not dying:
            return
        with self._ops:
            try:
                for _ in range(MAX_DEAD_LETTER_HOPS):
                    dying = self._store(partial(self._dead_letter_batch, dying), dying)
                    if not dying:
                        return
                logger.warning(
                    "%d message(s) kept being dead-lettered (a cycle?); dropping them",
                    len(dying),
                )
                self._store(lambda _topo: _Batch(), dying)
            except CONNECTION_ERRORS:
                self._unsure = True  # they stay leased here: ``_recover`` returns them
                raise

    def _dead_letter_batch(self, dying: list[_Dying], topo: _Topology) -> _Batch:
        batch = _Batch()
        now = time.time()
        for origin, d in enumerate(dying, 1):
            policy = topo.policies.get(d.queue)
            target = policy and policy.dead_letter(
                d.envelope, d.queue, d.exchange, d.routing_key, d.reason
            )
            if not target:
                continue
            dlx, key, envelope = target
            try:
                queues = self._route(topo, dlx, key, envelope.headers)
            except NotFound:
                logger.warning("dead-letter exchange %r of queue %r does not exist", dlx, d.queue)
                continue
            self._add_copies(batch, topo, origin, queues, Outgoing(envelope, dlx, key), now)
        return batch

    # -- consuming ------------------------------------------------------------------------
    def fetch(self, queues: Sequence[str], limit: int, ack: Sequence[int] = ()) -> list[Delivery]:
        session = self._ensure_session()
        thread = self._thread
        assert thread is not None
        # Subscribed before looking, so no later publish goes unnoticed.
        thread.watch([f"{self._p}wake:{q}" for q in queues], self.settings.socket_timeout)
        self._seen = thread.generation
        start = self._rotation % max(len(queues), 1)
        self._rotation += 1
        order = [*queues[start:], *queues[:start]]
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

    def _fetch_once(
        self, session: str, queues: list[str], limit: int, acks: list[int]
    ) -> tuple[list[Delivery], bool]:
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
            *self._lease_args(),
            repr(now),
            limit,
            int(reap),
            int(sweep),
            *ids,
            *members,
            len(queues),
            *queues,
        ]
        try:
            taken, swept, lost, next_due = self._link.call(_FETCH, args)
        except CONNECTION_ERRORS:
            self._failed(acks, popped)
            raise
        self._registered = True
        self._warn_if_lost(lost)
        self._next_due = float(next_due) if next_due else None
        deliveries: list[Delivery] = []
        dying = [self._dying(swept, i, "expired") for i in range(0, len(swept), 3)]
        for i in range(0, len(taken), 4):
            queue, tag, count = _text(taken[i]), int(taken[i + 1]), int(taken[i + 2])
            exchange, key, envelope, expires_at = _decode(taken[i + 3])
            expiring = f"{tag}|{queue}" if expires_at is not None else None
            reason: DeathReason | None = None
            if expires_at is not None and expires_at <= now:
                reason = "expired"
            elif self._policy(queue).over_delivery_limit(count):
                reason = "delivery_limit"
            if reason is not None:
                dying.append(_Dying(queue, tag, envelope, exchange, key, reason, expiring))
                continue
            delivery = Delivery(envelope, tag, queue, exchange, key, count > 0)
            self._held[tag] = _Held(delivery, expiring)
            deliveries.append(delivery)
        self._dead_letter(dying)
        return deliveries, bool(dying)

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
                self._dead_letter(
                    [
                        _Dying(
                            d.queue,
                            tag,
                            d.envelope,
                            d.exchange,
                            d.routing_key,
                            "rejected",
                            held.expiring,
                        )
                        for tag, held in popped.items()
                        for d in (held.delivery,)
                    ]
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
        thread = self._thread
        if thread is None:
            await asyncio.sleep(self._wait_time(timeout))
            return
        await thread.await_change(self._seen, self._wait_time(timeout))
        self._seen = thread.generation

    def wake(self) -> None:
        if self._thread is not None:
            self._thread.bump()

    def close(self) -> None:
        with self._ops:
            thread, self._thread = self._thread, None
            session, self._session = self._session, None
            if thread is not None:
                thread.stop()
            self._flush_on_close()
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

    def _flush_on_close(self) -> None:
        """Confirm outstanding publishes; hand what cannot be confirmed to the next session."""
        for _ in range(MAX_OUTSTANDING_ERRORS):
            try:
                self._link.flush()
                return
            except CONNECTION_ERRORS as exc:
                batches = self._link.forget_unconfirmed()
                _orphans.give(self._orphan_key, batches)
                logger.warning(
                    "%d publish(es) to %s were not confirmed before closing (%r); the next "
                    "connection to it in this process sends them again",
                    len(batches),
                    mask_password(self.url),
                    exc,
                )
                return
            except Exception:  # one publish failed (its reply was an error): go on
                logger.exception("A publish to %s failed", mask_password(self.url))
