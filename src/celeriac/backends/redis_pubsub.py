"""Waiting on Redis pub/sub: one listener thread per backend serves every waiter.

The Redis result backend publishes each stored value on the key's own name (as Celery
does). A :class:`Listener` keeps one subscriber connection and one thread; waiters, from any
thread or event loop, :meth:`Listener.watch` the keys they wait on and are woken when one
is published, instead of polling.

How a waiter never misses a state:

1. it registers its interest (a :class:`Ticket`) and waits until the listener confirms the
   subscription of every key it watches (Redis acknowledged the SUBSCRIBE);
2. only then does it read the keys: anything stored before the read is seen by the read,
   anything stored after it is published to a confirmed subscription and wakes the ticket.

When the subscriber connection is lost, the listener reconnects with a growing pause,
subscribes again to every key still watched, and wakes every ticket once the subscriptions
are confirmed, so each waiter re-reads what may have been stored while no one listened.

A published message carries the stored value: the ticket keeps it (``Ticket.take``), so a
waiter woken with a final state needs no further read. A client that sends a task and will
wait for it can ``expect`` its key first (as Celery's result consumer subscribes when a
task is sent): the subscription is then made while the task travels and runs, and a final
value published before anyone waits is kept for the waiter that comes.

The subscriber connection is a plain socket read with ``hiredis`` by the listener thread. A
thread that needs a new key subscribes by writing on it directly (under the listener's
lock, as the listener thread writes), saving a wake-up of the listener thread; over TLS, a
socket pair wakes that thread to do it. (redis-py's ``PubSub`` is not safe to write from
one thread while another blocks reading it.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import hiredis

logger = logging.getLogger(__name__)

#: Seconds without traffic after which the listener PINGs the server.
PING_INTERVAL = 5.0
#: Longest pause between two reconnection attempts.
MAX_BACKOFF = 2.0
#: Keys subscribed ahead of a wait (``Listener.expect``), and final values kept for waiters
#: still to come: at most this many of each; the oldest are dropped first.
MAX_EXPECTED = 10_000

_CERT_REQS = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
    "cert_none": ssl.CERT_NONE,
    "cert_optional": ssl.CERT_OPTIONAL,
    "cert_required": ssl.CERT_REQUIRED,
}


@dataclass(frozen=True, slots=True)
class ServerAddress:
    """Where and how to connect the subscriber (taken from redis-py's parsed URL)."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None
    connect_timeout: float = 5.0

    @classmethod
    def from_pool_kwargs(cls, kwargs: Mapping[str, Any], tls: bool) -> ServerAddress:
        """From ``redis.ConnectionPool.connection_kwargs`` (``tls`` for ``rediss://``)."""
        return cls(
            host=str(kwargs.get("host") or "127.0.0.1"),
            port=int(kwargs.get("port") or 6379),
            path=kwargs.get("path"),
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            tls=_tls_context(kwargs) if tls else None,
            connect_timeout=float(kwargs.get("socket_connect_timeout") or 5.0),
        )


def _tls_context(kwargs: Mapping[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=kwargs.get("ssl_ca_certs"))
    reqs = kwargs.get("ssl_cert_reqs", "required")
    if isinstance(reqs, str):
        reqs = _CERT_REQS.get(reqs.lower(), ssl.CERT_REQUIRED)
    if reqs == ssl.CERT_NONE or not kwargs.get("ssl_check_hostname", True):
        context.check_hostname = False
    context.verify_mode = reqs
    if kwargs.get("ssl_certfile"):
        context.load_cert_chain(kwargs["ssl_certfile"], kwargs.get("ssl_keyfile"))
    return context


def _command(*args: str | bytes) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class SubscriberConnection:
    """A connection in subscribe mode: send commands, read replies as they come."""

    def __init__(self, address: ServerAddress) -> None:
        self.address = address
        self.reader = hiredis.Reader()
        self.sock = self._open()
        #: Other threads may write on it while the listener thread reads (plain TCP only).
        self.shared_writes = address.tls is None
        try:
            self._authenticate()
        except BaseException:
            self.close()
            raise

    def _open(self) -> socket.socket:
        addr = self.address
        if addr.path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(addr.connect_timeout)
            sock.connect(addr.path)
        else:
            sock = socket.create_connection((addr.host, addr.port), addr.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if addr.tls is not None:
            sock = addr.tls.wrap_socket(sock, server_hostname=addr.host)
        sock.settimeout(addr.connect_timeout)  # bounds a read of a half-arrived TLS record
        return sock

    def _authenticate(self) -> None:
        addr = self.address
        if addr.password is None:
            return
        user = (addr.username,) if addr.username else ()
        self.send("AUTH", *user, addr.password)
        reply = self.read_one()
        if reply != b"OK":
            raise ConnectionError(f"Redis refused the subscriber's AUTH: {reply!r}")

    def send(self, *args: str | bytes) -> None:
        self.sock.sendall(_command(*args))

    def fileno(self) -> int:
        return self.sock.fileno()

    def replies(self) -> list[Any]:
        """Every complete reply already received (never waits)."""
        out = []
        while (reply := self.reader.gets()) is not False:
            if isinstance(reply, hiredis.ReplyError):
                raise ConnectionError(f"Redis error on the subscriber connection: {reply}")
            out.append(reply)
        return out

    def receive(self) -> None:
        """Read what the socket has (call when it is readable); raise when it closed."""
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("Redis closed the subscriber connection")
        self.reader.feed(data)
        pending = getattr(self.sock, "pending", None)  # TLS: decrypted bytes already held
        while pending is not None and pending() > 0:
            self.reader.feed(self.sock.recv(65536))

    def read_one(self) -> Any:
        while True:
            replies = self.replies()
            if replies:
                return replies[0]
            self.receive()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Ticket:
    """One waiter's interest in some keys, woken when one of them is published.

    A ticket belongs to a thread (``loop`` None) or to an event loop; ``subscribed`` turns
    True once every key is subscribed on the live connection.
    """

    __slots__ = ("_event", "keys", "loop", "published", "subscribed")

    def __init__(self, keys: Iterable[str], loop: asyncio.AbstractEventLoop | None) -> None:
        self.keys = tuple(keys)
        self.loop = loop
        self.subscribed = False
        #: The latest value published on each key, not taken yet.
        self.published: dict[str, bytes] = {}
        self._event: threading.Event | asyncio.Event = (
            threading.Event() if loop is None else asyncio.Event()
        )

    def take(self, key: str) -> bytes | None:
        """The value last published on ``key`` since the last take (None: none)."""
        return self.published.pop(key, None)

    def fire(self, key: str | None = None, value: bytes | None = None) -> None:
        """Wake the waiter (from any thread), with the value published on ``key`` if any."""
        if key is not None and value is not None:
            self.published[key] = value
        if self.loop is None:
            self._event.set()
        else:
            with contextlib.suppress(RuntimeError):  # That loop is closed: no one waits.
                self.loop.call_soon_threadsafe(self._event.set)

    def clear(self) -> None:
        self._event.clear()

    def wait(self, timeout: float) -> bool:
        """Block until fired or ``timeout``; True when fired (thread tickets)."""
        event = self._event
        assert isinstance(event, threading.Event)
        return event.wait(max(timeout, 0.0))

    async def await_fired(self, timeout: float) -> bool:
        """``wait`` for a ticket of the running event loop."""
        event = self._event
        assert isinstance(event, asyncio.Event)
        try:
            await asyncio.wait_for(event.wait(), max(timeout, 0.0))
        except TimeoutError:
            return False
        return True


class Listener:
    """One subscriber connection and thread, serving every waiter of one backend.

    The thread starts with the first ``watch`` and ends with ``close``.
    """

    def __init__(
        self, address: ServerAddress, final: Callable[[bytes], bool] = lambda _value: False
    ) -> None:
        self.address = address
        self._final = final
        self._lock = threading.Lock()
        self._tickets: dict[str, set[Ticket]] = {}
        #: Keys subscribed ahead of a wait, until a final value comes (``expect``).
        self._expected: dict[str, None] = {}
        #: Final values published on expected keys that no ticket watched yet.
        self._outcomes: dict[str, bytes] = {}
        self._conn: SubscriberConnection | None = None  # the live connection
        # State of the live connection, kept by the thread under the lock:
        self._sent: set[str] = set()  # keys SUBSCRIBEd (acknowledged or not)
        self._acks_due: dict[str, int] = {}  # SUBSCRIBE acknowledgements still to come
        self._confirmed: set[str] = set()  # keys subscribed for certain
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread: threading.Thread | None = None
        self._closed = False
        #: Connections made so far (the first one and each reconnection).
        self.connections = 0

    # -- the waiters' side ------------------------------------------------------------------
    def watch(self, keys: Iterable[str], loop: asyncio.AbstractEventLoop | None = None) -> Ticket:
        """Register a waiter on ``keys``; call ``unwatch`` when done with the ticket."""
        ticket = Ticket(keys, loop)
        with self._lock:
            if self._closed:
                raise RuntimeError("the result backend is closed")
            for key in ticket.keys:
                self._tickets.setdefault(key, set()).add(ticket)
                outcome = self._outcomes.pop(key, None)
                if outcome is not None:
                    ticket.published[key] = outcome
            ticket.subscribed = all(key in self._confirmed for key in ticket.keys)
            wake = not self._subscribe_now(ticket.keys)
            self._start_thread()
        if wake:
            self._wake()
        return ticket

    def expect(self, key: str) -> None:
        """Subscribe to ``key`` now, ahead of a wait on it (a task was just sent).

        The subscription lasts until a final value is published on it (kept for the
        waiter that comes) or ``MAX_EXPECTED`` newer keys are expected.
        """
        with self._lock:
            if self._closed or key in self._expected or key in self._tickets:
                return
            self._expected[key] = None
            if len(self._expected) > MAX_EXPECTED:
                del self._expected[next(iter(self._expected))]  # unsubscribed next turn
            wake = not self._subscribe_now([key])
            self._start_thread()
        if wake:
            self._wake()

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="celeriac-redis-results", daemon=True
            )
            self._thread.start()

    def _subscribe_now(self, keys: Iterable[str]) -> bool:
        """SUBSCRIBE to the keys not subscribed yet, from this thread; False when the
        listener thread must do it (no live connection, or TLS). Call under the lock."""
        new = [key for key in keys if key not in self._sent]
        if not new:
            return True
        conn = self._conn
        if conn is None or not conn.shared_writes:
            return False
        for key in new:
            self._acks_due[key] = self._acks_due.get(key, 0) + 1
        self._sent.update(new)
        try:
            conn.send("SUBSCRIBE", *new)
        except OSError:
            return False  # the listener thread finds the connection broken and starts over
        return True

    def unwatch(self, ticket: Ticket) -> None:
        """Forget a ticket; keys no one watches are unsubscribed at the thread's next turn."""
        with self._lock:
            for key in ticket.keys:
                waiters = self._tickets.get(key)
                if waiters is not None:
                    waiters.discard(ticket)
                    if not waiters:
                        del self._tickets[key]

    def close(self) -> None:
        """Stop the thread and close the connection; waiting tickets are woken."""
        with self._lock:
            self._closed = True
            thread = self._thread
            tickets = {t for waiters in self._tickets.values() for t in waiters}
        self._wake()
        for ticket in tickets:
            ticket.fire()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # Full (a wake-up is pending anyway) or closed.
            self._wake_w.send(b"\0")

    # -- the thread -------------------------------------------------------------------------
    def _run(self) -> None:
        pause = 0.05
        while not self._closed:
            try:
                conn = SubscriberConnection(self.address)
            except (OSError, ConnectionError) as exc:
                logger.warning("Cannot reach Redis for result notifications (%s); retrying", exc)
                self._sleep(pause)
                pause = min(pause * 2, MAX_BACKOFF)
                continue
            self.connections += 1
            try:
                self._serve(conn)
                pause = 0.05
            except (OSError, ConnectionError) as exc:
                if not self._closed:
                    logger.warning("Lost the Redis result notifications (%s); reconnecting", exc)
                pause = 0.05
            except Exception:
                # Not a network failure (a bug, a protocol error): start afresh, not too fast.
                logger.exception("Redis result notifications failed; reconnecting")
                self._sleep(pause)
                pause = min(pause * 2, MAX_BACKOFF)
            finally:
                with self._lock:
                    self._conn = None
                conn.close()
                with self._lock:
                    self._sent.clear()
                    self._acks_due.clear()
                    self._confirmed.clear()
                    for waiters in self._tickets.values():
                        for ticket in waiters:
                            ticket.subscribed = False

    def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(OSError, ValueError):
            select.select([self._wake_r], [], [], seconds)
            self._drain_wake()

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass

    def _serve(self, conn: SubscriberConnection) -> None:
        with self._lock:
            self._conn = conn
        last_traffic = time.monotonic()
        ping_sent = False
        while not self._closed:
            for reply in conn.replies():
                self._handle(reply)
            self._reconcile(conn)  # (after handling: a final value ends an expectation)
            conn_fd, wake_fd = conn.fileno(), self._wake_r.fileno()
            readable, _, _ = select.select([conn_fd, wake_fd], [], [], PING_INTERVAL)
            if wake_fd in readable:
                self._drain_wake()
            if conn_fd in readable:
                conn.receive()
                last_traffic, ping_sent = time.monotonic(), False
            elif time.monotonic() - last_traffic >= PING_INTERVAL:
                if ping_sent:
                    raise ConnectionError("Redis did not answer a PING")
                with self._lock:
                    conn.send("PING")
                ping_sent = True
                last_traffic = time.monotonic()

    def _reconcile(self, conn: SubscriberConnection) -> None:
        """Subscribe to newly watched keys and unsubscribe from keys no one watches."""
        with self._lock:
            wanted = set(self._tickets).union(self._expected)
            subscribe = wanted - self._sent
            unsubscribe = self._sent - wanted
            for key in subscribe:
                self._acks_due[key] = self._acks_due.get(key, 0) + 1
            self._sent = wanted
            self._confirmed -= unsubscribe
            # Written under the lock: other threads subscribe on this socket too.
            if subscribe:
                conn.send("SUBSCRIBE", *subscribe)
            if unsubscribe:
                conn.send("UNSUBSCRIBE", *unsubscribe)

    def _handle(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 2:
            return
        kind, channel = reply[0], reply[1]
        if kind == b"message" and len(reply) > 2:
            self._fire(channel.decode(), reply[2])
        elif kind == b"subscribe":
            self._confirm(channel.decode())

    def _fire(self, key: str, value: bytes) -> None:
        with self._lock:
            tickets = list(self._tickets.get(key, ()))
            if key in self._expected and self._is_final(value):
                del self._expected[key]  # unsubscribed at the next turn, unless watched
                if not tickets:
                    self._outcomes[key] = value
                    if len(self._outcomes) > MAX_EXPECTED:
                        del self._outcomes[next(iter(self._outcomes))]
        for ticket in tickets:
            ticket.fire(key, value)

    def _is_final(self, value: bytes) -> bool:
        try:
            return self._final(value)
        except Exception:  # a value the backend cannot read: not one to keep
            return False

    def _confirm(self, key: str) -> None:
        with self._lock:
            due = self._acks_due.get(key, 0) - 1
            if due > 0:
                self._acks_due[key] = due
                return
            self._acks_due.pop(key, None)
            if key not in self._sent:
                return
            self._confirmed.add(key)
            ready = [
                ticket
                for ticket in self._tickets.get(key, ())
                if all(k in self._confirmed for k in ticket.keys)
            ]
            for ticket in ready:
                ticket.subscribed = True
        for ticket in ready:
            ticket.fire()
