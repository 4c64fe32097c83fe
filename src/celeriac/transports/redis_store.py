"""The storing half of the Redis transport: payloads, routing, publishing, dead-lettering.

Routing uses the exchange emulation shared with the other brokers (``messaging.routing``)
over a cached copy of the declarations. Every store names the topology version it routed
with, and ``STORE`` refuses a stale one (nothing is stored), so a message never misses a
binding another process made: the route is computed again and the store retried.

A message's payload is ``[exchange, routing key, headers, properties, expires_at]`` as
JSON, a newline, then the body bytes (JSON escapes newlines, so the first one ends it).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from celeriac.exceptions import NotFound, OperationalError
from celeriac.messaging import serialization
from celeriac.messaging.entities import Binding
from celeriac.messaging.routing import BindingSpec, route
from celeriac.transports import redis_layout as lua
from celeriac.transports.base import Envelope, Outgoing, Properties
from celeriac.transports.redis_link import CONNECTION_ERRORS, Link, RedisSettings, Script
from celeriac.transports.virtual import DeathReason, QueuePolicy
from celeriac.utils.url import mask_password

logger = logging.getLogger(__name__)

#: Dead-letter hops within one call before a message is dropped (a dead-letter cycle).
MAX_DEAD_LETTER_HOPS = 8
#: Failed publish replies reported on close before giving up on the rest.
MAX_OUTSTANDING_ERRORS = 100
#: Attempts at a store while the topology keeps changing under it.
MAX_STALE_ROUTES = 10

_STORE, _TOPOLOGY = Script.of(lua.STORE), Script.of(lua.TOPOLOGY, idempotent=True)


# Headers are nearly always plain JSON (Celery's are): the stdlib's C encoder first, the
# extended-type serializer only when that fails. The encoder is made once (what
# ``JSONEncoder.encode`` would make on every call); without a circular-reference check, so
# it is safe to share between threads (a cycle in headers fails with RecursionError).
def _make_plain_json() -> Callable[[Any], str]:
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator: the pure-Python encoder
        return json.JSONEncoder(separators=(",", ":")).encode
    encoder = make(
        None,
        json.JSONEncoder().default,
        json.encoder.encode_basestring_ascii,
        None,
        ":",
        ",",
        False,
        False,
        True,
    )
    return lambda value: "".join(encoder(value, 0))


_encode_plain = _make_plain_json()


def encode_payload(exchange: str, key: str, envelope: Envelope, expires_at: float | None) -> bytes:
    """The stored form of one message copy."""
    headers = envelope.headers
    if type(headers) is not dict:
        headers = dict(headers)
    meta = [exchange, key, headers, envelope.properties.to_dict(), expires_at]
    try:
        text = _encode_plain(meta).encode()
    except (TypeError, RecursionError):
        text = serialization.dumps(meta)[2]
    return text + b"\n" + envelope.body


def decode_payload(payload: bytes) -> tuple[str, str, Envelope, float | None]:
    """``(exchange, routing key, envelope, expires_at)`` of a stored copy."""
    meta, _, body = payload.partition(b"\n")
    if b'"__type__"' in meta:  # extended types (datetime, bytes...) were encoded
        data = serialization.loads(meta, "application/json", "utf-8")
    else:
        data = json.loads(meta)
    exchange, key, headers, properties, expires_at = data
    return exchange, key, Envelope(body, headers, Properties.from_dict(properties)), expires_at


def binding_field(exchange: str, queue: str, binding: Binding) -> str:
    """A binding as stored: the field of the ``bindings`` hash."""
    data = [exchange, queue, binding.routing_key, dict(binding.arguments)]
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def text(value: bytes | str) -> str:
    """A reply item as a str."""
    return value.decode() if isinstance(value, bytes) else value


class Orphanage:
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


orphans = Orphanage()


@dataclass(slots=True)
class Topology:
    """A cached copy of the declarations, valid while ``version`` matches Redis's."""

    version: str = ""
    exchanges: dict[str, str] = field(default_factory=dict)
    bindings: dict[str, list[BindingSpec]] = field(default_factory=dict)
    policies: dict[str, QueuePolicy] = field(default_factory=dict)

    @classmethod
    def parse(cls, reply: list[Any]) -> Topology:
        version, exchanges, queues, bindings = reply
        topo = cls(text(version))
        for i in range(0, len(exchanges), 2):
            topo.exchanges[text(exchanges[i])] = text(exchanges[i + 1])
        for i in range(0, len(queues), 2):
            topo.policies[text(queues[i])] = QueuePolicy.from_json(text(queues[i + 1]))
        for raw in bindings:
            exchange, queue, key, arguments = json.loads(raw)
            topo.bindings.setdefault(exchange, []).append(BindingSpec(queue, key, arguments))
        return topo


@dataclass(slots=True)
class Batch:
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
class Dying:
    """A message leased to this session that must be dead-lettered (or dropped)."""

    queue: str
    tag: int
    envelope: Envelope
    exchange: str
    routing_key: str
    reason: DeathReason
    expiring: str | None


class Store:
    """Routes and stores messages for one transport session.

    Args:
        link: The session's command connection.
        settings: The transport's settings.
        session: The session id; ``session(True)`` registers one if there is none yet
            (needed when stored messages may be leased to it), ``session(False)`` gives
            '' then.
        lease_lost: Called when a store that removes leased messages fails midway (the
            session then checks its leases).
        lock: Held while dead-lettering (the transport's lease lock).
    """

    def __init__(
        self,
        link: Link,
        settings: RedisSettings,
        session: Callable[[bool], str],
        lease_lost: Callable[[], None],
        lock: threading.RLock,
    ) -> None:
        self._link = link
        self._settings = settings
        self._p = settings.prefix
        self._session = session
        self._lease_lost = lease_lost
        self._lock = lock
        self._orphan_key = (settings.url, settings.prefix)
        self.topology = Topology()

    def lease_args(self) -> list[str]:
        """``grace, lease`` as the scripts that register a session take them."""
        s = self._settings
        return [repr(s.connection_lost_timeout), repr(s.lease_timeout)]

    # -- topology -------------------------------------------------------------------------
    def current(self) -> Topology:
        """The cached topology, loaded when there is none."""
        if not self.topology.version:
            self.topology = Topology.parse(self._link.call(_TOPOLOGY, [self._p]))
        return self.topology

    def forget(self) -> None:
        """Drop the cached topology (it changed)."""
        self.topology = Topology()

    def policy(self, queue: str) -> QueuePolicy:
        """``queue``'s policy (looked up again if the cache does not know the queue)."""
        policy = self.current().policies.get(queue)
        if policy is None:
            self.forget()
            policy = self.current().policies.get(queue, QueuePolicy())
        return policy

    def route(self, topo: Topology, exchange: str, key: str, headers: Any) -> list[str]:
        """The queues a message goes to (the default exchange '' names its queue).

        Raises:
            NotFound: ``exchange`` is not declared (in ``topo``).
        """
        if not exchange:
            return [key] if key in topo.policies else []
        type_ = topo.exchanges.get(exchange)
        if type_ is None:
            raise NotFound(f"no exchange {exchange!r} on {mask_password(self._settings.url)}")
        return route(type_, topo.bindings.get(exchange, ()), key, headers)

    @staticmethod
    def _add_copies(
        batch: Batch,
        topo: Topology,
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
                payload = encode_payload(out.exchange, out.routing_key, out.envelope, expires)
                payloads[expires] = payload
            expiry = "" if expires is None else repr(expires)
            batch.copies += (origin, name, policy.priority_of(properties), payload, expiry)
            batch.count += 1
            if policy.max_length is not None:
                batch.limited[name] = policy

    def _batch_of(self, messages: Sequence[Outgoing], topo: Topology) -> Batch:
        now = time.time()
        routes = [
            (out, self.route(topo, out.exchange, out.routing_key, out.envelope.headers))
            for out in messages
        ]  # every route before any copy: a batch naming a missing exchange stores nothing
        batch = Batch()
        for out, queues in routes:
            self._add_copies(batch, topo, 0, queues, out, now)
        return batch

    def _store_args(self, topo: Topology, batch: Batch, kills: Sequence[Dying]) -> list[Any]:
        session = self._session(batch.keeps)
        members = [d.expiring for d in kills if d.expiring]
        return [
            self._p,
            session,
            *self.lease_args(),
            topo.version,
            len(kills),
            *[d.tag for d in kills],
            len(members),
            *members,
            batch.count,
            *batch.copies,
            *batch.limits(),
        ]

    def store(self, build: Callable[[Topology], Batch], kills: Sequence[Dying] = ()) -> list[Dying]:
        """Store what ``build`` makes of the current topology (retried while it changes).

        Returns the queue-length victims now leased here, to dead-letter.
        """
        fresh = False
        for _ in range(MAX_STALE_ROUTES):
            fresh = fresh or not self.topology.version
            topo = self.current()
            try:
                batch = build(topo)
            except NotFound:
                if fresh:
                    raise
                self.topology = Topology()  # maybe declared since we looked: look again
                continue
            reply = self._link.call(_STORE, self._store_args(topo, batch, kills))
            if reply != -1:
                return self._victims(reply)
            self.topology = Topology()
        raise OperationalError("the Redis broker's bindings kept changing during a store")

    def _victims(self, reply: list[Any]) -> list[Dying]:
        return [self.dying(reply, i, "maxlen") for i in range(0, len(reply), 3)]

    def dying(self, flat: list[Any], i: int, reason: DeathReason) -> Dying:
        """The message at ``flat[i:i + 3]`` (queue, id, payload) of a reply, to kill."""
        queue, tag, payload = text(flat[i]), int(flat[i + 1]), flat[i + 2]
        exchange, key, envelope, expires_at = decode_payload(payload)
        expiring = f"{tag}|{queue}" if expires_at is not None else None
        return Dying(queue, tag, envelope, exchange, key, reason, expiring)

    def publish(self, messages: Sequence[Outgoing]) -> None:
        """Route and store ``messages``; unless ``confirm_publish``, without waiting."""
        if orphans.waiting:
            self._adopt_orphans()
        build = partial(self._batch_of, messages)
        topo = self.current()
        exchanges = topo.exchanges
        if self._settings.confirm_publish or any(
            out.exchange and out.exchange not in exchanges for out in messages
        ):
            # Confirmed, or an exchange we do not know: look again synchronously (and
            # raise NotFound if it is really missing).
            self.dead_letter(self.store(build))
            return

        def on_reply(reply: Any) -> None:
            # -1: routed with stale bindings, nothing was stored: route again.
            self.dead_letter(self.store(build) if reply == -1 else self._victims(reply))

        self._link.send(_STORE, self._store_args(topo, build(topo), ()), on_reply, messages)

    def _adopt_orphans(self) -> None:
        """Send again what a closed session to this broker could not confirm."""
        batches = orphans.take(self._orphan_key)
        for i, messages in enumerate(batches):
            try:
                self.publish(messages)
            except BaseException:
                orphans.give(self._orphan_key, batches[i:])
                raise

    def dead_letter(self, dying: list[Dying]) -> None:
        """Remove ``dying`` (leased here) and store their dead-letter copies, atomically."""
        if not dying:
            return
        with self._lock:
            try:
                for _ in range(MAX_DEAD_LETTER_HOPS):
                    dying = self.store(partial(self._dead_letter_batch, dying), dying)
                    if not dying:
                        return
                logger.warning(
                    "%d message(s) kept being dead-lettered (a cycle?); dropping them",
                    len(dying),
                )
                self.store(lambda _topo: Batch(), dying)
            except CONNECTION_ERRORS:
                self._lease_lost()  # they stay leased here until the session checks
                raise

    def _dead_letter_batch(self, dying: list[Dying], topo: Topology) -> Batch:
        batch = Batch()
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
                queues = self.route(topo, dlx, key, envelope.headers)
            except NotFound:
                logger.warning("dead-letter exchange %r of queue %r does not exist", dlx, d.queue)
                continue
            self._add_copies(batch, topo, origin, queues, Outgoing(envelope, dlx, key), now)
        return batch

    def flush_on_close(self) -> None:
        """Confirm outstanding publishes; hand what cannot be confirmed to the next session."""
        for _ in range(MAX_OUTSTANDING_ERRORS):
            try:
                self._link.flush()
                return
            except CONNECTION_ERRORS as exc:
                batches = self._link.forget_unconfirmed()
                orphans.give(self._orphan_key, batches)
                logger.warning(
                    "%d publish(es) to %s were not confirmed before closing (%r); the next "
                    "connection to it in this process sends them again",
                    len(batches),
                    mask_password(self._settings.url),
                    exc,
                )
                return
            except Exception:  # one publish failed (its reply was an error): go on
                logger.exception("A publish to %s failed", mask_password(self._settings.url))
