"""The Redis transport's settings and its one command connection.

Every call the transport makes is one Lua script run by ``EVALSHA`` on one connection
(``Link``), so each operation costs one round trip. A publish may also be *sent* without
waiting for its reply (``confirm_publish`` off): its reply is read before the next call, or
when too many are outstanding, and a stale-topology reply re-publishes it then. Replies come
back in order on one connection, so a session always reads its own writes.

Nothing here retries on its own: a lost connection raises ``redis.ConnectionError`` (a
recoverable error, so the producer's retry policy and the worker's fetch loop try again),
and the next call connects afresh. Publishes that were sent but whose replies were lost are
sent again first, on the new connection: at-least-once, never silently dropped.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import hiredis
import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from celeriac.exceptions import ImproperlyConfigured
from celeriac.transports.redis_layout import NAMESPACE

logger = logging.getLogger(__name__)

#: Errors after which a new connection may succeed.
CONNECTION_ERRORS: Final = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
)
#: Unconfirmed publishes outstanding before their replies are read.
MAX_OUTSTANDING = 256
#: How soon the background flusher reads the replies of unconfirmed publishes.
FLUSH_DELAY = 0.01
#: Longest pause between its attempts while Redis is unreachable.
FLUSH_MAX_BACKOFF = 1.0

Args = Sequence[str | bytes | int | float]
ReplyHandler = Callable[[Any], None]


def _seconds(name: str, value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ImproperlyConfigured(
            f"Redis transport option {name}={value!r}: not a number"
        ) from None
    if seconds <= 0:
        raise ImproperlyConfigured(f"Redis transport option {name}={value!r}: must be positive")
    return seconds


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() in ("1", "true", "yes", "on")
    return bool(value)


#: Option names celeriac reads (from the transport options or the URL's query).
OPTIONS: Final = (
    "global_keyprefix",
    "lease_timeout",
    "connection_lost_timeout",
    "heartbeat_interval",
    "confirm_publish",
    "socket_timeout",
)


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """What a ``redis://`` URL and the transport options ask for.

    Attributes:
        url: The URL for redis-py, without celeriac's own query options.
        prefix: Start of every key: ``global_keyprefix`` + ``celeriac:``.
        lease_timeout: Seconds a session whose heartbeat stopped keeps its messages.
        connection_lost_timeout: The same, once its connection to Redis is gone too.
        heartbeat_interval: Seconds between heartbeats.
        confirm_publish: Wait for Redis to store each publish before returning.
        socket_timeout: Seconds a command may take before the connection is dropped.
    """

    url: str
    prefix: str = NAMESPACE
    lease_timeout: float = 30.0
    connection_lost_timeout: float = 10.0
    heartbeat_interval: float = 2.0
    confirm_publish: bool = False
    socket_timeout: float = 30.0

    @classmethod
    def parse(cls, url: str, options: Mapping[str, Any]) -> RedisSettings:
        """Settings from ``url`` (its query may hold options too) and ``options``.

        Raises:
            ImproperlyConfigured: An option has an unusable value.
        """
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        merged: dict[str, Any] = {k: v for k, v in query if k in OPTIONS}
        merged.update({k: v for k, v in options.items() if k in OPTIONS})
        rest = urlencode([(k, v) for k, v in query if k not in OPTIONS])
        settings = cls(
            url=urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment)),
            prefix=str(merged.get("global_keyprefix", "")) + NAMESPACE,
            lease_timeout=_seconds("lease_timeout", merged.get("lease_timeout", 30.0)),
            connection_lost_timeout=_seconds(
                "connection_lost_timeout", merged.get("connection_lost_timeout", 10.0)
            ),
            heartbeat_interval=_seconds(
                "heartbeat_interval", merged.get("heartbeat_interval", 2.0)
            ),
            confirm_publish=_flag(merged.get("confirm_publish", False)),
            socket_timeout=_seconds("socket_timeout", merged.get("socket_timeout", 30.0)),
        )
        if not (
            settings.heartbeat_interval < settings.connection_lost_timeout <= settings.lease_timeout
        ):
            raise ImproperlyConfigured(
                "Redis transport options must satisfy heartbeat_interval < "
                "connection_lost_timeout <= lease_timeout (got "
                f"{settings.heartbeat_interval}, {settings.connection_lost_timeout}, "
                f"{settings.lease_timeout})"
            )
        return settings

    def pool(self) -> redis.ConnectionPool:
        """A connection pool that never retries on its own (callers decide)."""
        pool: redis.ConnectionPool = redis.ConnectionPool.from_url(
            self.url,
            retry=Retry(NoBackoff(), 0),
            socket_timeout=self.socket_timeout,
            socket_connect_timeout=min(self.socket_timeout, 5.0),
            socket_keepalive=True,
            client_name="celeriac",
        )
        return pool


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script and its SHA-1 (what ``EVALSHA`` names it by).

    Attributes:
        idempotent: Running it twice does what running it once does, so a call that
            failed on a broken connection may be run again at once on a new one.
    """

    text: str
    sha: str
    idempotent: bool = False

    @classmethod
    def of(cls, text: str, idempotent: bool = False) -> Script:
        """The script for ``text``."""
        return cls(text, hashlib.sha1(text.encode()).hexdigest(), idempotent)


def packed_call(script: Script, args: Args) -> list[bytes]:
    """The ``EVALSHA`` command for ``script``, in Redis's wire format.

    hiredis packs the arguments as redis-py would (which uses it too), without redis-py's
    per-argument Python pass: a publish sends one of these per message.
    """
    command: Any = ("EVALSHA", script.sha, 0, *args)  # (hiredis types a 1-tuple here)
    return [hiredis.pack_command(command)]


def run_script(client: redis.Redis, script: Script, args: Args) -> Any:
    """Run ``script`` through a redis-py client (loading it when Redis lacks it)."""
    try:
        return client.evalsha(script.sha, 0, *args)
    except NoScriptError:
        client.script_load(script.text)
        return client.evalsha(script.sha, 0, *args)


@dataclass(slots=True)
class _Outstanding:
    script: Script
    args: Args
    on_reply: ReplyHandler
    context: Any  # what the sender needs to send it again elsewhere


class Link:
    """One connection to Redis running scripts, safe to share between threads."""

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self._pool = pool
        self._conn: Any = None
        self._pid = os.getpid()
        self._lock = threading.RLock()
        #: Sent, reply not read yet (in order).
        self._outstanding: deque[_Outstanding] = deque()
        self._handling = False
        self._backoff = 0.0
        #: Replied to, reply not handled yet.
        self._replied: list[tuple[_Outstanding, Any]] = []
        #: Sent on a connection that was lost before the reply came: to send again.
        self._unconfirmed: list[_Outstanding] = []

    @property
    def pool(self) -> redis.ConnectionPool:
        """Where this link's connection comes from (the server's address and options)."""
        return self._pool

    def _connection(self) -> Any:
        if self._pid != os.getpid():
            # A forked child must not share its parent's socket or its pending replies.
            self._pid = os.getpid()
            self._conn = None
            self._outstanding.clear()
            self._replied.clear()
            self._unconfirmed.clear()
        if self._conn is None:
            self._conn = self._pool.get_connection()
        return self._conn

    def call(self, script: Script, args: Args) -> Any:
        """Run ``script`` and return its reply (after reading any outstanding ones)."""
        with self._lock:
            try:
                if self._handling:
                    # Called from a reply handler: keep the wire clear, but leave later
                    # replies to the loop that is handling them, in order.
                    self._read_outstanding()
                else:
                    self.flush()
            except CONNECTION_ERRORS as exc:
                # What was outstanding is kept, to send again; this call goes on, on a
                # new connection (and fails too if Redis is really gone).
                logger.debug("reading publish replies failed (%s); will send again", exc)
            return self._run(script, args)

    def send(self, script: Script, args: Args, on_reply: ReplyHandler, context: Any = None) -> None:
        """Send ``script`` now; ``on_reply`` gets its reply later (before the next call).

        ``context`` is kept with it, for ``forget_unconfirmed``.
        """
        with self._lock:
            if self._unconfirmed or self._replied:
                self.flush()
            try:
                self._connection().send_packed_command(packed_call(script, args))
            except CONNECTION_ERRORS:
                self._lost()
                raise
            self._outstanding.append(_Outstanding(script, args, on_reply, context))
            _flusher.schedule(self, FLUSH_DELAY)
            if len(self._outstanding) >= MAX_OUTSTANDING:
                try:
                    self.flush()
                except CONNECTION_ERRORS as exc:
                    # This one was sent: it is kept, and sent again by the next call.
                    logger.debug("reading publish replies failed (%s); will send again", exc)

    def flush(self) -> None:
        """Handle every outstanding reply, re-sending first what a lost connection left.

        Raises:
            redis.ConnectionError: The connection failed (what is unconfirmed is kept).
        """
        with self._lock:
            self._read_outstanding()
            # Each item leaves its list before its handler runs: a handler may call back
            # in (a stale topology re-publishes) and must not meet its own item again.
            if self._handling:
                return
            self._handling = True
            try:
                while self._replied or self._unconfirmed:
                    if self._replied:
                        item, reply = self._replied.pop(0)
                        if isinstance(reply, NoScriptError):
                            reply = self._rerun(item)
                        elif isinstance(reply, Exception):
                            raise reply
                    else:
                        item = self._unconfirmed.pop(0)
                        reply = self._rerun(item)
                    item.on_reply(reply)
            finally:
                self._handling = False

    def _read_outstanding(self) -> None:
        """Read every reply on the wire, before anything sends another command."""
        while self._outstanding:
            item = self._outstanding.popleft()
            try:
                reply = self._connection().read_response()
            except redis.exceptions.ResponseError as exc:
                reply = exc
            except CONNECTION_ERRORS:
                self._unconfirmed.insert(0, item)
                self._lost()
                raise
            self._replied.append((item, reply))

    def _rerun(self, item: _Outstanding) -> Any:
        try:
            return self._run(item.script, item.args)
        except CONNECTION_ERRORS:
            self._unconfirmed.insert(0, item)
            raise

    def _run(self, script: Script, args: Args) -> Any:
        try:
            return self._run_once(script, args)
        except CONNECTION_ERRORS:
            self._lost()
            if not script.idempotent:
                raise
        # A connection Redis closed (it restarted) fails its first command: go again once.
        try:
            return self._run_once(script, args)
        except CONNECTION_ERRORS:
            self._lost()
            raise

    def _run_once(self, script: Script, args: Args) -> Any:
        conn = self._connection()
        try:
            conn.send_packed_command(packed_call(script, args))
            return conn.read_response()
        except NoScriptError:
            # Redis restarted (or flushed its script cache): load it and go again.
            conn.send_command("SCRIPT", "LOAD", script.text)
            conn.read_response()
            conn.send_command("EVALSHA", script.sha, 0, *args)
            return conn.read_response()

    def _lost(self) -> None:
        """The connection broke: outstanding publishes become unconfirmed, to send again."""
        self._unconfirmed.extend(self._outstanding)
        self._outstanding.clear()
        if self._unconfirmed:
            _flusher.schedule(self, FLUSH_DELAY)
        if self._conn is not None:
            self._conn.disconnect()

    def forget_unconfirmed(self) -> list[Any]:
        """Give up on publishes whose outcome is unknown; returns their contexts."""
        with self._lock:
            items = [*self._outstanding, *(item for item, _ in self._replied), *self._unconfirmed]
            self._outstanding.clear()
            self._replied.clear()
            self._unconfirmed.clear()
            if items and self._conn is not None:
                self._conn.disconnect()  # replies may still be on their way
            return [item.context for item in items]

    @property
    def unconfirmed(self) -> int:
        """Publishes sent whose outcome is not known yet."""
        return len(self._outstanding) + len(self._replied) + len(self._unconfirmed)

    def flush_later(self) -> None:
        """The flusher's turn: confirm what is outstanding, or try again later."""
        with self._lock:
            try:
                self.flush()
                self._backoff = 0.0
            except CONNECTION_ERRORS as exc:
                self._backoff = min(max(self._backoff * 2, FLUSH_DELAY), FLUSH_MAX_BACKOFF)
                logger.debug("confirming publishes failed (%s); trying again", exc)
            except Exception:  # a publish failed on the server: say so, go on with the rest
                logger.exception("A publish to Redis failed")
            if self.unconfirmed:
                _flusher.schedule(self, self._backoff or FLUSH_DELAY)

    def close(self) -> None:
        """Drop the connection (call ``flush`` first to keep outstanding publishes)."""
        _flusher.cancel(self)
        with self._lock:
            if self._conn is not None:
                self._conn.disconnect()
                self._pool.release(self._conn)
                self._conn = None
            self._pool.disconnect()


class _Flusher:
    """One daemon thread reading the replies of every link's unconfirmed publishes.

    A publish that is not confirmed returns at once; its reply must still be read soon,
    even if the publisher makes no further call: a stale-topology reply means the message
    is to be routed again, and a lost connection means it is to be sent again once Redis
    is back.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[Link, float] = {}
        self._thread: threading.Thread | None = None
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        # The child has no flusher thread, and the parent's links are not its own.
        self._cond = threading.Condition()
        self._due = {}
        self._thread = None

    def schedule(self, link: Link, delay: float) -> None:
        with self._cond:
            if link not in self._due:
                self._due[link] = time.monotonic() + delay
                self._cond.notify()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="celeriac-redis-flusher", daemon=True
                )
                self._thread.start()

    def cancel(self, link: Link) -> None:
        with self._cond:
            self._due.pop(link, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._due:
                    self._cond.wait()
                link, when = min(self._due.items(), key=lambda item: item[1])
                wait = when - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                del self._due[link]
            link.flush_later()


_flusher = _Flusher()
