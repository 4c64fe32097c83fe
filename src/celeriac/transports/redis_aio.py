"""A Redis connection owned by one event loop, for the consumer calls a worker makes.

The transport's ``Link`` is a blocking connection: from asyncio code its calls go through
the connection's I/O thread, and each round trip then wakes two threads besides Redis (the
I/O thread, then the loop). ``LoopLink`` runs the same scripts on a socket the event loop
reads itself, so a worker's fetch or ack wakes only the loop when Redis answers. On a
machine where waking another thread costs tens of microseconds, that is most of a fetch.

It is used from its loop's thread only. Replies come back in order on one connection, so
each call queues a future that the protocol resolves with the next reply. Nothing here
retries on its own, except what ``Script.idempotent`` allows (as ``Link``): a lost
connection or a reply that does not come within ``socket_timeout`` raises
``redis.ConnectionError``/``redis.TimeoutError`` (the transport's recoverable errors), and
the next call connects afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
import redis

from celeriac.transports.redis_link import Args, Script, packed_call


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect, taken from a redis-py pool's connection arguments."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    connect_timeout: float = 5.0
    timeout: float = 30.0

    @classmethod
    def of_pool(cls, pool: redis.ConnectionPool) -> Endpoint | None:
        """The endpoint a pool's connections go to; None for TLS, which ``LoopLink``
        does not speak (those calls stay on the transport's I/O thread)."""
        if issubclass(pool.connection_class, redis.SSLConnection):
            return None
        kwargs: Mapping[str, Any] = pool.connection_kwargs
        return cls(
            host=str(kwargs.get("host") or "127.0.0.1"),
            port=int(kwargs.get("port") or 6379),
            path=kwargs.get("path"),
            db=int(kwargs.get("db") or 0),
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            connect_timeout=float(kwargs.get("socket_connect_timeout") or 5.0),
            timeout=float(kwargs.get("socket_timeout") or 30.0),
        )


class _Socket:
    """A non-blocking socket the loop watches: each reply resolves the oldest waiter.

    Plain ``add_reader`` on a socket of our own rather than an asyncio transport, so the
    socket can still be closed when its loop has already gone (a connection used inside
    ``asyncio.run`` and closed after it). ``on_push`` sees every reply first and takes the
    ones that answer no command (pub/sub messages); ``on_lost`` hears that it closed.
    """

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        on_push: Callable[[Any], bool] | None = None,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self.sock = sock
        self.loop = loop
        self.on_push = on_push
        self.on_lost = on_lost
        self.reader = hiredis.Reader()
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.unsent = bytearray()
        self.lost: BaseException | None = None
        loop.add_reader(sock.fileno(), self._readable)

    def send(self, command: list[bytes]) -> asyncio.Future[Any]:
        """Write ``command``; the future gets its reply."""
        if self.lost is not None:
            raise self.lost
        waiter: asyncio.Future[Any] = self.loop.create_future()
        self.waiting.append(waiter)
        data = b"".join(command)
        if self.unsent:
            self.unsent += data
            return waiter
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.abort(redis.ConnectionError(f"Error writing to Redis: {exc!r}"))
            return waiter
        if sent < len(data):  # the socket buffer is full: the rest when it drains
            self.unsent += data[sent:]
            self.loop.add_writer(self.sock.fileno(), self._writable)
        return waiter

    def _writable(self) -> None:
        try:
            sent = self.sock.send(self.unsent)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.abort(redis.ConnectionError(f"Error writing to Redis: {exc!r}"))
            return
        del self.unsent[:sent]
        if not self.unsent:
            self.loop.remove_writer(self.sock.fileno())

    def read_ready(self) -> None:
        """Read what the socket holds now, if anything (as the loop would)."""
        self._readable()

    def _readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.abort(redis.ConnectionError(f"Error reading from Redis: {exc!r}"))
            return
        if not data:
            self.abort(redis.ConnectionError("Redis closed the connection"))
            return
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                if self.on_push is not None and self.on_push(reply):
                    continue
                waiter = self.waiting.popleft()
                if not waiter.done():
                    waiter.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # garbage, or a reply unasked for
            self.abort(redis.ConnectionError(f"Redis protocol error: {exc!r}"))

    def abort(self, error: BaseException) -> None:
        """Close the socket; every call waiting on it fails with ``error``."""
        if self.lost is None:
            self.lost = error
            fd = self.sock.fileno()
            if fd >= 0:
                with contextlib.suppress(RuntimeError, ValueError):  # its loop is closed
                    self.loop.remove_reader(fd)
                    self.loop.remove_writer(fd)
            self.sock.close()
            if self.on_lost is not None:
                self.on_lost()
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_exception(self.lost)


async def _connect(
    endpoint: Endpoint,
    loop: asyncio.AbstractEventLoop,
    on_push: Callable[[Any], bool] | None = None,
    on_lost: Callable[[], None] | None = None,
) -> _Socket:
    """A connection to ``endpoint`` read by ``loop``, logged in and named.

    Raises:
        redis.ConnectionError: Redis could not be reached, or refused the login.
        redis.TimeoutError: It did not answer in time.
    """
    try:
        async with asyncio.timeout(endpoint.connect_timeout):
            sock = await _open_socket(endpoint, loop)
    except (OSError, TimeoutError) as exc:
        raise redis.ConnectionError(f"cannot connect to Redis: {exc!r}") from exc
    conn = _Socket(sock, loop, on_push, on_lost)
    await _handshake(endpoint, conn)
    return conn


async def _open_socket(ep: Endpoint, loop: asyncio.AbstractEventLoop) -> socket.socket:
    if ep.path:
        targets: list[tuple[int, Any]] = [(socket.AF_UNIX, ep.path)]
    else:
        infos = await loop.getaddrinfo(ep.host, ep.port, type=socket.SOCK_STREAM)
        targets = [(family, address) for family, _, _, _, address in infos]
    error: OSError = OSError(f"no address for {ep.host}:{ep.port}")
    for family, address in targets:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError):
                raise
            error = exc
            continue
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return sock
    raise error


async def _handshake(ep: Endpoint, conn: _Socket) -> None:
    """Log in, choose the database and name the client, in one round trip."""
    commands: list[tuple[Any, ...]] = []
    if ep.password is not None:
        commands.append(("AUTH", *([ep.username] if ep.username else []), ep.password))
    if ep.db:
        commands.append(("SELECT", ep.db))
    commands.append(("CLIENT", "SETNAME", "celeriac"))
    waiters = [conn.send(_pack(*c)) for c in commands]
    try:
        async with asyncio.timeout(ep.connect_timeout):
            replies = await asyncio.gather(*waiters)
    except TimeoutError as exc:
        conn.abort(redis.TimeoutError("Redis did not answer the handshake"))
        raise redis.TimeoutError("Redis did not answer the handshake") from exc
    except BaseException:
        conn.abort(redis.ConnectionError("the handshake failed"))
        raise
    for command, reply in zip(commands, replies, strict=True):
        if isinstance(reply, hiredis.ReplyError):
            conn.abort(redis.ConnectionError(str(reply)))
            raise redis.ConnectionError(f"Redis refused {command[0]}: {reply}")


class LoopLink:
    """One Redis connection read by the event loop that made it; call from that loop only."""

    def __init__(self, endpoint: Endpoint, loop: asyncio.AbstractEventLoop) -> None:
        self.endpoint = endpoint
        self.loop = loop
        self._socket: _Socket | None = None
        self._connecting = asyncio.Lock()

    async def call(self, script: Script, args: Args) -> Any:
        """Run ``script`` with ``args`` and return its reply.

        Raises:
            redis.ConnectionError: The connection failed (a non-idempotent script's
                outcome is then unknown).
            redis.TimeoutError: No reply within the socket timeout (the connection is
                dropped: a late reply cannot be told from the next one).
            redis.ResponseError: The script failed.
        """
        try:
            return await self._call_once(script, args)
        except (redis.ConnectionError, redis.TimeoutError):
            if not script.idempotent:
                raise
        # A connection Redis closed (it restarted) fails its first command: go again once.
        return await self._call_once(script, args)

    async def _call_once(self, script: Script, args: Args) -> Any:
        reply = await self._request(packed_call(script, args))
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            # Redis restarted (or flushed its script cache): load it and go again.
            await self._request(_pack("SCRIPT", "LOAD", script.text))
            reply = await self._request(packed_call(script, args))
        if isinstance(reply, hiredis.ReplyError):
            raise redis.ResponseError(str(reply))
        return reply

    async def _request(self, command: list[bytes]) -> Any:
        conn = self._socket
        if conn is None or conn.lost is not None:
            conn = await self._connect()
        waiter = conn.send(command)
        timer = self.loop.call_later(self.endpoint.timeout, self._expire, conn, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()

    @staticmethod
    def _expire(conn: _Socket, waiter: asyncio.Future[Any]) -> None:
        if not waiter.done():
            conn.abort(redis.TimeoutError("Redis did not answer within the socket timeout"))

    async def _connect(self) -> _Socket:
        async with self._connecting:
            if self._socket is None or self._socket.lost is not None:
                self._socket = await _connect(self.endpoint, self.loop)
            return self._socket

    def close(self) -> None:
        """Drop the connection (on the loop's thread; see ``close_from_any_thread``)."""
        conn, self._socket = self._socket, None
        if conn is not None:
            conn.abort(redis.ConnectionError("the connection was closed"))

    def close_from_any_thread(self) -> None:
        """``close`` on the loop's thread while it runs; at once if it no longer runs."""
        loop = self.loop
        if loop.is_running() and not _on_thread_of(loop):
            with contextlib.suppress(RuntimeError):  # it closed in between
                loop.call_soon_threadsafe(self.close)
                return
        with contextlib.suppress(RuntimeError):  # waiters of a closed loop: no one waits
            self.close()


class LoopSubscriber:
    """Pub/sub channels read by the event loop: ``generation`` moves on with every message
    on them, and when the connection is lost (messages may have been missed then)."""

    def __init__(self, endpoint: Endpoint, loop: asyncio.AbstractEventLoop) -> None:
        self.endpoint = endpoint
        self.loop = loop
        self.generation = 0
        self._socket: _Socket | None = None
        self._confirmed: set[bytes] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._connecting = asyncio.Lock()

    def watching(self, channels: Sequence[str]) -> bool:
        """True when Redis confirmed a subscription to every channel on a live connection."""
        conn = self._socket
        if conn is None or conn.lost is not None:
            return False
        return all(c.encode() in self._confirmed for c in channels)

    async def subscribe(self, channels: Sequence[str]) -> None:
        """Subscribe to ``channels`` and return once Redis confirmed each.

        Raises:
            redis.ConnectionError: Redis could not be reached.
            redis.TimeoutError: The confirmations did not come within the socket timeout.
        """
        async with self._connecting:
            if self._socket is None or self._socket.lost is not None:
                self._confirmed.clear()
                self._socket = await _connect(
                    self.endpoint, self.loop, self._pushed, self._connection_lost
                )
            conn = self._socket
        missing = [c.encode() for c in channels if c.encode() not in self._confirmed]
        if not missing:
            return
        # One channel per SUBSCRIBE: each is then answered by exactly one confirmation.
        waiters = [conn.send(_pack("SUBSCRIBE", channel)) for channel in missing]
        try:
            async with asyncio.timeout(self.endpoint.timeout):
                await asyncio.gather(*waiters)
        except TimeoutError as exc:
            conn.abort(redis.TimeoutError("Redis did not confirm the subscriptions"))
            raise redis.TimeoutError("Redis did not confirm the subscriptions") from exc
        if conn.lost is None:
            self._confirmed.update(missing)

    def poll(self) -> None:
        """Take in what already arrived (wake-ups Redis sent that the loop has not read
        yet), without waiting."""
        conn = self._socket
        if conn is not None and conn.lost is None:
            conn.read_ready()

    def _pushed(self, reply: Any) -> bool:
        if isinstance(reply, list) and reply and reply[0] == b"message":
            self.bump()
            return True
        return False

    def _connection_lost(self) -> None:
        self._confirmed.clear()
        self.bump()

    def bump(self) -> None:
        """Move ``generation`` on and wake every waiter (on the loop's thread)."""
        self.generation += 1
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_change(self, seen: int, timeout: float) -> None:
        """Return once ``generation`` differs from ``seen``, or after ``timeout``."""
        if self.generation != seen:
            return
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._waiters.append(waiter)
        timer = self.loop.call_later(timeout, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def bump_from_any_thread(self) -> None:
        """``bump`` on the loop's thread (for a shutdown asked from elsewhere)."""
        if _on_thread_of(self.loop):
            self.bump()
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: no one waits
            self.loop.call_soon_threadsafe(self.bump)

    def close(self) -> None:
        """Drop the connection (on the loop's thread; see ``close_from_any_thread``)."""
        conn, self._socket = self._socket, None
        if conn is not None:
            conn.on_lost = None
            conn.abort(redis.ConnectionError("the connection was closed"))
        self._confirmed.clear()

    def close_from_any_thread(self) -> None:
        """``close`` on the loop's thread while it runs; at once if it no longer runs."""
        loop = self.loop
        if loop.is_running() and not _on_thread_of(loop):
            with contextlib.suppress(RuntimeError):  # it closed in between
                loop.call_soon_threadsafe(self.close)
                return
        with contextlib.suppress(RuntimeError):  # waiters of a closed loop: no one waits
            self.close()


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _pack(*args: Any) -> list[bytes]:
    return [hiredis.pack_command(args)]


def _on_thread_of(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
