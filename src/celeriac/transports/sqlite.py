"""The embedded broker (``sqlite:///path/to/broker.db``): celeriac's default, no server needed.

| feature                         | supported                                              |
|---------------------------------|--------------------------------------------------------|
| exchanges                       | direct, fanout, topic, headers (emulated, stored)      |
| priorities                      | 0-255, higher first, FIFO within a priority            |
| TTL, dead-lettering             | per message and per queue; x-death header              |
| delivery limit, max length      | yes                                                    |
| shared between processes        | yes, on one host (one file)                            |
| survives the process            | yes: everything is in the file                         |

At-least-once: a fetched message is leased to the fetching session (``owner``) and deleted
only when acked. Sessions renew a heartbeat from a background thread; when a session's
process is gone (checked by pid on this host) or its heartbeat is older than
``lease_timeout``, any other session takes its leased messages back, marked redelivered. A
long task never loses its message to a timer while its process lives.

Routing happens at publish time, in the publishing transaction, with the exchange emulation
shared by every broker without native exchanges. Waiting consumers sleep on a wake socket
(``wakeup.py``) instead of polling. The storage layout is in ``sqlite_schema.py``.

Transport options: ``lease_timeout`` (seconds, default 30), ``heartbeat_interval``
(default 5), ``lock_timeout`` (default 300).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from celeriac.exceptions import NotFound, OperationalError
from celeriac.messaging import serialization
from celeriac.messaging.entities import Binding, Exchange, Queue
from celeriac.messaging.routing import BindingSpec, route
from celeriac.transports.base import (
    Capabilities,
    Delivery,
    Envelope,
    Outgoing,
    Properties,
    Transport,
)
from celeriac.transports.sqlite_db import Database, path_from_url, process_alive
from celeriac.transports.virtual import DeathReason, QueuePolicy
from celeriac.transports.wakeup import WakeChannel

Connection = Any  # sqlite3.Connection; aliased to keep signatures short
T = TypeVar("T")
logger = logging.getLogger(__name__)
HOSTNAME = socket.gethostname()
RECLAIM_INTERVAL = 1.0
#: The owner of messages returned by ``defer`` until they are due.
DEFERRED = "~deferred"
#: How often a fetching session dead-letters expired messages of every queue.
EXPIRY_INTERVAL = 0.1
_CHUNK = 500

_SELECT_READY = (
    "SELECT id, exchange, routing_key, meta, body, expires_at, delivery_count, redelivered "
    "FROM messages WHERE queue = ? AND owner IS NULL ORDER BY priority DESC, id LIMIT ?"
)
_INSERT = (
    "INSERT INTO messages (queue, priority, exchange, routing_key, meta, body, expires_at, "
    "delivery_count, redelivered) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _chunks(ids: Sequence[int]) -> Iterator[tuple[str, Sequence[int]]]:
    """``(placeholders, ids)`` in chunks small enough for SQLite's parameter limit."""
    for start in range(0, len(ids), _CHUNK):
        part = ids[start : start + _CHUNK]
        yield ",".join("?" * len(part)), part


# Headers are nearly always plain JSON (Celery's are): encode them with the stdlib's C
# encoder, and fall back to the extended-type serializer only when that fails.
_PLAIN_JSON = json.JSONEncoder(separators=(",", ":"))


def _encode_meta(envelope: Envelope) -> str:
    data = [dict(envelope.headers), envelope.properties.to_dict()]
    try:
        return _PLAIN_JSON.encode(data)
    except TypeError:
        return serialization.dumps(data)[2].decode()


def _decode_meta(meta: str, body: bytes) -> Envelope:
    if '"__type__"' in meta:  # extended types (datetime, bytes...) were encoded
        headers, properties = serialization.loads(meta.encode(), "application/json", "utf-8")
    else:
        headers, properties = json.loads(meta)
    return Envelope(body, headers, Properties.from_dict(properties))


@dataclass(slots=True)
class _Topology:
    """A cached copy of the declarations, valid while ``version`` matches the file's."""

    version: int = -1
    exchanges: dict[str, str] = field(default_factory=dict)
    bindings: dict[str, list[BindingSpec]] = field(default_factory=dict)
    policies: dict[str, QueuePolicy] = field(default_factory=dict)


class SQLiteTransport(Transport):
    """A session with the broker file named by the URL."""

    schemes: ClassVar[tuple[str, ...]] = ("sqlite",)
    capabilities: ClassVar[Capabilities] = Capabilities(
        cross_process=True, persistent=True, blocking_io=True
    )
    recoverable_errors: ClassVar[tuple[type[BaseException], ...]] = (OperationalError,)

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        self.path = path_from_url(url)
        self.lease_timeout = float(self.options.get("lease_timeout", 30.0))
        self.heartbeat_interval = float(self.options.get("heartbeat_interval", 5.0))
        self._db = Database(self.path, float(self.options.get("lock_timeout", 300.0)))
        self._db.connection()  # Fail now, with the file's name, if it cannot be used.
        self._wake = WakeChannel(self.path)
        self._wake_pid = os.getpid()
        self._topology = _Topology()
        self._session: str | None = None
        self._session_pid = 0
        self._heartbeat_stop = threading.Event()
        self._next_reclaim = 0.0
        self._next_expiry = 0.0
        self._rotation = 0

    # -- sessions -------------------------------------------------------------------------
    def _session_id(self) -> str:
        """This session's id, registered (with a heartbeat thread) on first use."""
        if self._session is None or self._session_pid != os.getpid():
            session = uuid.uuid4().hex
            # Registered before it is used: a session that owns leases is always listed.
            self._db.write(lambda c: self._register(c, session))
            self._session, self._session_pid = session, os.getpid()
            if self._wake_pid != os.getpid():  # forked: the parent's socket is not ours
                self._wake, self._wake_pid = WakeChannel(self.path), os.getpid()
            self._heartbeat_stop = threading.Event()
            threading.Thread(
                target=self._beat,
                args=(session, self._heartbeat_stop),
                name="celeriac-sqlite-heartbeat",
                daemon=True,
            ).start()
        return self._session

    def _register(self, conn: Connection, session: str) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO sessions (id, pid, hostname, heartbeat) VALUES (?, ?, ?, ?)",
            (session, os.getpid(), HOSTNAME, time.time()),
        )

    def _beat(self, session: str, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_interval):
            try:
                self._db.write(lambda c: self._renew(c, session))
            except Exception:
                logger.warning("SQLite broker heartbeat failed; will retry", exc_info=True)

    def _renew(self, conn: Connection, session: str) -> None:
        cur = conn.execute("UPDATE sessions SET heartbeat = ? WHERE id = ?", (time.time(), session))
        if cur.rowcount == 0:
            logger.warning("This session was taken for dead (leases expired); re-registering")
            self._register(conn, session)

    def _reclaim(self, conn: Connection, now: float) -> bool:
        """Return dead sessions' leases to their queues; True when any came back."""
        self._next_reclaim = now + RECLAIM_INTERVAL
        returned = False
        rows = conn.execute("SELECT id, pid, hostname, heartbeat FROM sessions").fetchall()
        for session, pid, hostname, heartbeat in rows:
            if session == self._session:
                continue
            stale = heartbeat < now - self.lease_timeout
            if stale or (hostname == HOSTNAME and not process_alive(pid)):
                cur = conn.execute(
                    "UPDATE messages SET owner = NULL, redelivered = 1 WHERE owner = ?",
                    (session,),
                )
                returned = returned or cur.rowcount > 0
                self._drop_owned_queues(conn, session)
                conn.execute("DELETE FROM sessions WHERE id = ?", (session,))
        self._expire_unused_queues(conn, now)
        return returned

    def _drop_owned_queues(self, conn: Connection, session: str) -> None:
        owned = conn.execute("SELECT name FROM queues WHERE owner = ?", (session,)).fetchall()
        for (name,) in owned:
            self._delete_queue(conn, name)

    def _expire_unused_queues(self, conn: Connection, now: float) -> None:
        for name, policy in self._fresh_topology(conn).policies.items():
            if policy.expires is None:
                continue
            row = conn.execute("SELECT last_used FROM queues WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] + policy.expires < now:
                self._delete_queue(conn, name)

    # -- topology -------------------------------------------------------------------------
    def _fresh_topology(self, conn: Connection) -> _Topology:
        version = conn.execute("SELECT version FROM topology").fetchone()[0]
        if version == self._topology.version:
            return self._topology
        topo = _Topology(version)
        for name, type_ in conn.execute("SELECT name, type FROM exchanges"):
            topo.exchanges[name] = type_
            topo.bindings[name] = []
        for exchange, queue, key, arguments in conn.execute(
            "SELECT exchange, queue, routing_key, arguments FROM bindings"
        ):
            spec = BindingSpec(queue, key, json.loads(arguments))
            topo.bindings.setdefault(exchange, []).append(spec)
        for name, policy in conn.execute("SELECT name, policy FROM queues"):
            topo.policies[name] = QueuePolicy.from_json(policy)
        self._topology = topo
        return topo

    def _changed(self, conn: Connection) -> None:
        conn.execute("UPDATE topology SET version = version + 1")

    def declare_exchange(self, exchange: Exchange) -> None:
        if not exchange.name:
            return

        def work(conn: Connection) -> None:
            cur = conn.execute(
                "INSERT OR IGNORE INTO exchanges (name, type, durable, auto_delete, arguments) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    exchange.name,
                    exchange.type,
                    exchange.durable,
                    exchange.auto_delete,
                    json.dumps(dict(exchange.arguments)),
                ),
            )
            if cur.rowcount:
                self._changed(conn)

        self._db.write(work)

    def delete_exchange(self, name: str) -> None:
        def work(conn: Connection) -> None:
            conn.execute("DELETE FROM exchanges WHERE name = ?", (name,))
            conn.execute("DELETE FROM bindings WHERE exchange = ?", (name,))
            self._changed(conn)

        self._db.write(work)

    def declare_queue(self, queue: Queue) -> None:
        owner = self._session_id() if (queue.exclusive or queue.auto_delete) else None

        def work(conn: Connection) -> None:
            cur = conn.execute(
                "INSERT OR IGNORE INTO queues (name, policy, owner, last_used) VALUES (?, ?, ?, ?)",
                (queue.name, QueuePolicy.of(queue).to_json(), owner, time.time()),
            )
            changed = cur.rowcount > 0
            for binding in queue.all_bindings():
                changed = self._bind(conn, queue.name, binding) or changed
            if changed:
                self._changed(conn)

        self._db.write(work)

    def delete_queue(self, name: str) -> None:
        self._db.write(lambda conn: self._delete_queue(conn, name))

    def _delete_queue(self, conn: Connection, name: str) -> None:
        conn.execute("DELETE FROM queues WHERE name = ?", (name,))
        conn.execute("DELETE FROM bindings WHERE queue = ?", (name,))
        conn.execute("DELETE FROM messages WHERE queue = ?", (name,))
        self._changed(conn)

    def _bind(self, conn: Connection, queue: str, binding: Binding) -> bool:
        exists = conn.execute(
            "SELECT 1 FROM exchanges WHERE name = ?", (binding.exchange.name,)
        ).fetchone()
        if exists is None:
            raise NotFound(f"cannot bind {queue!r}: no exchange {binding.exchange.name!r}")
        cur = conn.execute(
            "INSERT OR IGNORE INTO bindings (exchange, queue, routing_key, arguments) "
            "VALUES (?, ?, ?, ?)",
            (
                binding.exchange.name,
                queue,
                binding.routing_key,
                json.dumps(dict(binding.arguments), sort_keys=True),
            ),
        )
        return bool(cur.rowcount)

    def bind(self, queue: str, binding: Binding) -> None:
        def work(conn: Connection) -> None:
            if self._bind(conn, queue, binding):
                self._changed(conn)

        self._db.write(work)

    def unbind(self, queue: str, binding: Binding) -> None:
        def work(conn: Connection) -> None:
            conn.execute(
                "DELETE FROM bindings WHERE exchange = ? AND queue = ? AND routing_key = ? "
                "AND arguments = ?",
                (
                    binding.exchange.name,
                    queue,
                    binding.routing_key,
                    json.dumps(dict(binding.arguments), sort_keys=True),
                ),
            )
            self._changed(conn)

        self._db.write(work)

    def queue_length(self, name: str) -> int:
        now = time.time()
        row = self._db.read(
            lambda conn: conn.execute(
                "SELECT COUNT(*) FROM messages WHERE queue = ? "
                "AND (owner IS NULL OR owner = ?) AND (expires_at IS NULL OR expires_at > ?)",
                (name, DEFERRED, now),
            ).fetchone()
        )
        return int(row[0])

    def purge(self, name: str) -> int:
        return int(
            self._db.write(
                lambda conn: (
                    conn.execute(
                        "DELETE FROM messages WHERE queue = ? AND (owner IS NULL OR owner = ?)",
                        (name, DEFERRED),
                    ).rowcount
                )
            )
        )

    # -- publishing -----------------------------------------------------------------------
    def _route(self, topo: _Topology, exchange: str, key: str, headers: Any) -> list[str]:
        if not exchange:
            return [key] if key in topo.policies else []
        type_ = topo.exchanges.get(exchange)
        if type_ is None:
            raise NotFound(f"no exchange {exchange!r} in {self.path} (declare it first)")
        return route(type_, topo.bindings.get(exchange, ()), key, headers)

    def _store(
        self,
        conn: Connection,
        topo: _Topology,
        envelope: Envelope,
        meta: str,
        exchange: str,
        routing_key: str,
        now: float,
    ) -> set[str]:
        """Route and insert one envelope; returns the queues it went to."""
        queues = self._route(topo, exchange, routing_key, envelope.headers)
        rows = []
        for name in queues:
            policy = topo.policies[name]
            rows.append(
                (
                    name,
                    policy.priority_of(envelope.properties),
                    exchange,
                    routing_key,
                    meta,
                    envelope.body,
                    policy.expires_at(envelope.properties, now),
                    0,
                    0,
                )
            )
        conn.executemany(_INSERT, rows)
        return set(queues)

    def publish(self, messages: Sequence[Outgoing]) -> None:
        metas = [_encode_meta(out.envelope) for out in messages]
        now = time.time()

        def work(conn: Connection) -> int:
            topo = self._fresh_topology(conn)
            touched: set[str] = set()
            for out, meta in zip(messages, metas, strict=True):
                touched |= self._store(
                    conn, topo, out.envelope, meta, out.exchange, out.routing_key, now
                )
            for name in touched:
                if topo.policies[name].max_length is not None:
                    self._enforce_max_length(conn, topo, name, now)
            return len(touched)

        if self._db.write(work):
            self._wake.notify()

    def _enforce_max_length(
        self, conn: Connection, topo: _Topology, queue: str, now: float
    ) -> None:
        limit = topo.policies[queue].max_length or 0
        count = conn.execute(
            "SELECT COUNT(*) FROM messages WHERE queue = ? AND owner IS NULL", (queue,)
        ).fetchone()[0]
        if count <= limit:
            return
        oldest = conn.execute(
            "SELECT id, exchange, routing_key, meta, body FROM messages "
            "WHERE queue = ? AND owner IS NULL ORDER BY id LIMIT ?",
            (queue, count - limit),
        ).fetchall()
        self._kill(conn, topo, queue, [(*row, "maxlen") for row in oldest], now)

    def _kill(
        self,
        conn: Connection,
        topo: _Topology,
        queue: str,
        rows: Sequence[tuple[int, str, str, str, bytes, DeathReason]],
        now: float,
    ) -> None:
        """Delete messages of ``queue`` and dead-letter them per its policy."""
        policy = topo.policies.get(queue, QueuePolicy())
        for _id, exchange, key, meta, body, reason in rows:
            target = policy.dead_letter(_decode_meta(meta, body), queue, exchange, key, reason)
            if target is None:
                continue
            dlx, dl_key, envelope = target
            try:
                self._store(conn, topo, envelope, _encode_meta(envelope), dlx, dl_key, now)
            except NotFound:
                logger.warning("dead-letter exchange %r of queue %r does not exist", dlx, queue)
        for marks, ids in _chunks([row[0] for row in rows]):
            conn.execute(f"DELETE FROM messages WHERE id IN ({marks})", ids)

    # -- consuming ------------------------------------------------------------------------
    def fetch(self, queues: Sequence[str], limit: int, ack: Sequence[int] = ()) -> list[Delivery]:
        session = self._session_id()
        self._wake.listen()  # Bound before looking, so no later publish goes unnoticed.
        now = time.time()
        start = self._rotation % max(len(queues), 1)
        self._rotation += 1
        order = [*queues[start:], *queues[:start]]

        def work(conn: Connection) -> tuple[list[Delivery], bool]:
            if ack:
                self._warn_if_lost(len(ack), self._delete_acked(conn, session, ack))
            returned = now >= self._next_reclaim and self._reclaim(conn, now)
            topo = self._fresh_topology(conn)
            if now >= self._next_expiry:
                returned = self._expire(conn, topo, now) or returned
            out: list[Delivery] = []
            for name in order:
                if len(out) >= limit:
                    break
                if name in topo.policies:
                    out.extend(self._take(conn, topo, session, name, limit - len(out), now))
            return out, returned

        deliveries, returned = self._db.write(work)
        if returned:
            self._wake.notify()
        return deliveries

    def _expire(self, conn: Connection, topo: _Topology, now: float) -> bool:
        """Make due deferred messages ready and dead-letter expired ones; True on any."""
        self._next_expiry = now + EXPIRY_INTERVAL
        undeferred = conn.execute(
            f"UPDATE messages SET owner = NULL, not_before = NULL "
            f"WHERE owner = '{DEFERRED}' AND not_before <= ?",
            (now,),
        ).rowcount
        rows = conn.execute(
            "SELECT id, exchange, routing_key, meta, body, queue FROM messages "
            "WHERE expires_at <= ? AND expires_at IS NOT NULL AND owner IS NULL LIMIT 1000",
            (now,),
        ).fetchall()
        for row in rows:
            self._kill(conn, topo, row[5], [(*row[:5], "expired")], now)
        return bool(rows) or undeferred > 0

    def _take(
        self, conn: Connection, topo: _Topology, session: str, queue: str, want: int, now: float
    ) -> list[Delivery]:
        policy = topo.policies[queue]
        taken: list[Delivery] = []
        while len(taken) < want:
            rows = conn.execute(_SELECT_READY, (queue, want - len(taken))).fetchall()
            dying: list[tuple[int, str, str, str, bytes, DeathReason]] = []
            ids: list[int] = []
            for id_, exchange, key, meta, body, expires_at, count, redelivered in rows:
                if expires_at is not None and expires_at <= now:
                    dying.append((id_, exchange, key, meta, body, "expired"))
                elif policy.over_delivery_limit(count):
                    dying.append((id_, exchange, key, meta, body, "delivery_limit"))
                else:
                    ids.append(id_)
                    envelope = _decode_meta(meta, body)
                    taken.append(Delivery(envelope, id_, queue, exchange, key, bool(redelivered)))
            for marks, chunk in _chunks(ids):
                conn.execute(
                    "UPDATE messages SET owner = ?, delivery_count = delivery_count + 1 "
                    f"WHERE id IN ({marks})",
                    (session, *chunk),
                )
            if dying:
                self._kill(conn, topo, queue, dying, now)
            if not dying or len(rows) < want:
                break
        if policy.expires is not None:
            conn.execute("UPDATE queues SET last_used = ? WHERE name = ?", (now, queue))
        return taken

    def ack(self, delivery_tags: Sequence[int]) -> None:
        if not delivery_tags:
            return
        session = self._session_id()
        gone = self._db.write(lambda conn: self._delete_acked(conn, session, delivery_tags))
        self._warn_if_lost(len(delivery_tags), gone)

    @staticmethod
    def _delete_acked(conn: Connection, session: str, tags: Sequence[int]) -> int:
        gone = 0
        for marks, chunk in _chunks(tags):
            cur = conn.execute(
                f"DELETE FROM messages WHERE owner = ? AND id IN ({marks})", (session, *chunk)
            )
            gone += cur.rowcount
        return gone

    @staticmethod
    def _warn_if_lost(acked: int, gone: int) -> None:
        if gone != acked:
            logger.warning(
                "%d acked message(s) were no longer leased to this session (their lease "
                "expired); they will be delivered again",
                acked - gone,
            )

    def reject(self, delivery_tags: Sequence[int], requeue: bool) -> None:
        if not delivery_tags:
            return
        session = self._session_id()
        now = time.time()

        def work(conn: Connection) -> None:
            for marks, chunk in _chunks(delivery_tags):
                if requeue:
                    conn.execute(
                        "UPDATE messages SET owner = NULL, redelivered = 1 "
                        f"WHERE owner = ? AND id IN ({marks})",
                        (session, *chunk),
                    )
                    continue
                rows = conn.execute(
                    "SELECT id, exchange, routing_key, meta, body, queue FROM messages "
                    f"WHERE owner = ? AND id IN ({marks})",
                    (session, *chunk),
                ).fetchall()
                topo = self._fresh_topology(conn)
                for row in rows:
                    self._kill(conn, topo, row[5], [(*row[:5], "rejected")], now)

        self._db.write(work)
        self._wake.notify()

    def defer(self, deferrals: Sequence[tuple[int, float]]) -> None:
        if not deferrals:
            return
        session = self._session_id()
        self._db.write(
            lambda conn: conn.executemany(
                "UPDATE messages SET owner = ?, not_before = ?, "
                "delivery_count = delivery_count - 1 WHERE owner = ? AND id = ?",
                [(DEFERRED, until, session, tag) for tag, until in deferrals],
            )
        )

    def call_nowait(self, fn: Callable[..., T], *args: Any) -> T:
        with self._db.nowait():
            return fn(*args)

    def wait(self, timeout: float) -> None:
        self._wake.wait(timeout)

    async def await_ready(self, timeout: float) -> None:
        await self._wake.await_wake(timeout)

    def wake(self) -> None:
        self._wake.wake_self()

    def close(self) -> None:
        session, self._session = self._session, None
        self._heartbeat_stop.set()
        if session is not None and self._session_pid == os.getpid():

            def work(conn: Connection) -> int:
                cur = conn.execute(
                    "UPDATE messages SET owner = NULL, redelivered = 1 WHERE owner = ?",
                    (session,),
                )
                self._drop_owned_queues(conn, session)
                conn.execute("DELETE FROM sessions WHERE id = ?", (session,))
                return int(cur.rowcount)

            if self._db.write(work):
                self._wake.notify()
        self._wake.close()
        self._db.close()
