"""Connections and channels: a client's session with a broker, in both faces.

``Connection`` is used the same way from plain code and from asyncio code. The synchronous
methods call the transport directly; the ``a``-prefixed ones run the very same transport
calls through ``Connection.arun``, which keeps blocking broker I/O off the event loop by
handing it to the connection's own I/O thread. There is one implementation of each
operation; the faces differ only in how they wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from celeriac.messaging.entities import Exchange, Queue
from celeriac.transports import resolve_transport
from celeriac.transports.base import Transport, WouldBlock
from celeriac.utils.url import mask_password

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from celeriac.messaging.consumer import Consumer
    from celeriac.messaging.consumer import Consumer as ConsumerT
    from celeriac.messaging.pools import ConnectionPool
    from celeriac.messaging.producer import Producer

P = ParamSpec("P")
T = TypeVar("T")

#: Longest single wait on the transport; lets drain loops notice cancellation and deadlines.
MAX_WAIT = 1.0


class Channel:
    """A lightweight handle on a connection's session, owning consumers and their QoS."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.consumers: list[ConsumerT] = []
        self.prefetch_count = 0

    @property
    def transport(self) -> Transport:
        """The connection's transport session (connecting when needed)."""
        return self.connection.transport

    def basic_qos(self, prefetch_count: int) -> None:
        """Limit unacked messages per consumer on this channel (0 = no limit)."""
        if prefetch_count < 0:
            raise ValueError("prefetch_count must not be negative")
        self.prefetch_count = prefetch_count

    def close(self) -> None:
        """Cancel this channel's consumers."""
        for consumer in list(self.consumers):
            consumer.cancel()


class Connection:
    """A session with the broker named by ``url`` (``memory://``, ``sqlite:///file.db``).

    The transport is resolved at once, so a bad URL fails here, but the broker is contacted
    only on first use (or ``connect()``).
    """

    def __init__(self, url: str = "memory://", transport_options: Mapping[str, Any] | None = None):
        self.url = url
        self.transport_options = dict(transport_options or {})
        self.transport_cls = resolve_transport(url)
        self._transport: Transport | None = None
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._declared: dict[tuple[str, str], Exchange | Queue] = {}
        self._default_channel: Channel | None = None
        self.channels: list[Channel] = []

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def transport(self) -> Transport:
        """The transport session, opened on first use."""
        transport = self._transport
        if transport is None:
            with self._lock:
                if self._transport is None:
                    self._transport = self.transport_cls(self.url, self.transport_options)
                transport = self._transport
        return transport

    @property
    def connected(self) -> bool:
        """True while a transport session is open."""
        return self._transport is not None

    def connect(self) -> Connection:
        """Open the session now rather than on first use."""
        _ = self.transport
        return self

    def reset(self) -> None:
        """Drop the session (after a broker error), so the next use reconnects."""
        with self._lock:
            transport, self._transport = self._transport, None
            self._declared.clear()
        if transport is not None:
            with contextlib.suppress(Exception):  # the session is already broken
                transport.close()

    def close(self) -> None:
        """Cancel consumers and end the session; unacked messages go back to the broker."""
        for channel in list(self.channels):
            channel.close()
        with self._lock:
            transport, self._transport = self._transport, None
            self._declared.clear()
            executor, self._executor = self._executor, None
        if transport is not None:
            transport.close()
        if executor is not None:
            executor.shutdown(wait=False)

    release = close

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.arun(self.close)

    def clone(self) -> Connection:
        """A new, unconnected connection to the same broker with the same options."""
        return Connection(self.url, self.transport_options)

    def as_uri(self, include_password: bool = False) -> str:
        """The broker URL; the password masked unless asked for."""
        return self.url if include_password else mask_password(self.url)

    def __repr__(self) -> str:
        return f"<Connection {self.as_uri()} connected={self.connected}>"

    # -- channels and helpers -------------------------------------------------------------
    def channel(self) -> Channel:
        """A new channel on this connection."""
        channel = Channel(self)
        self.channels.append(channel)
        return channel

    @property
    def default_channel(self) -> Channel:
        """The channel producers and consumers use when given the connection itself."""
        if self._default_channel is None:
            self._default_channel = self.channel()
        return self._default_channel

    def Producer(self, **kwargs: Any) -> Producer:
        """A producer on the default channel; see ``Producer`` for the arguments."""
        from celeriac.messaging.producer import Producer

        return Producer(self, **kwargs)

    def Consumer(self, queues: Sequence[Queue] | Queue = (), **kwargs: Any) -> Consumer:
        """A consumer on the default channel; see ``Consumer`` for the arguments."""
        from celeriac.messaging.consumer import Consumer

        return Consumer(self, queues, **kwargs)

    def Pool(self, limit: int | None = 10) -> ConnectionPool:
        """A pool of up to ``limit`` connections like this one."""
        from celeriac.messaging.pools import ConnectionPool

        return ConnectionPool(self.clone, limit=limit)

    # -- declarations ---------------------------------------------------------------------
    def declare(self, *entities: Exchange | Queue) -> None:
        """Declare exchanges and queues (a queue's exchanges too), once per session."""
        for entity in entities:
            key = (type(entity).__name__, entity.name)
            if self._declared.get(key) == entity:
                continue
            if isinstance(entity, Queue):
                for exchange in entity.exchanges():
                    self.transport.declare_exchange(exchange)
                self.transport.declare_queue(entity)
            else:
                self.transport.declare_exchange(entity)
            self._declared[key] = entity

    # -- the asyncio face -----------------------------------------------------------------
    async def arun(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a transport call from asyncio code without blocking the event loop.

        Transports whose operations may block run on this connection's single I/O thread
        (which also keeps them ordered); the others run inline.
        """
        if not self.transport_cls.capabilities.blocking_io:
            return fn(*args, **kwargs)
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(1, thread_name_prefix="celeriac-io")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def arun_quick(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``arun`` for short transport calls: inline when the transport says it will not
        wait (an uncontended SQLite file), on the I/O thread otherwise.

        Only for the transport's own methods: the transport decides what "would wait" is.
        """
        transport = self._transport
        if transport is not None and self.transport_cls.capabilities.blocking_io:
            try:
                return transport.call_nowait(functools.partial(fn, *args, **kwargs))
            except WouldBlock:
                pass
        return await self.arun(fn, *args, **kwargs)

    # -- draining -------------------------------------------------------------------------
    def _active_consumers(self) -> list[ConsumerT]:
        return [c for ch in self.channels for c in ch.consumers if c.capacity() > 0]

    def drain_events(self, timeout: float | None = None) -> None:
        """Deliver ready messages to the consumers' callbacks; wait up to ``timeout`` for some.

        Raises:
            TimeoutError: Nothing arrived within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            delivered = 0
            for consumer in self._active_consumers():
                delivered += consumer.dispatch(consumer.fetch())
            if delivered:
                return
            self.transport.wait(_remaining(deadline))

    async def adrain_events(self, timeout: float | None = None) -> None:
        """``drain_events`` for asyncio code: waits without blocking the event loop."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            delivered = 0
            for consumer in self._active_consumers():
                delivered += consumer.dispatch(await consumer.afetch())
            if delivered:
                return
            await self.transport.await_ready(_remaining(deadline))


def _remaining(deadline: float | None) -> float:
    """Seconds to wait next: capped at ``MAX_WAIT``; TimeoutError once the deadline passed."""
    if deadline is None:
        return MAX_WAIT
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("no message arrived before the timeout")
    return min(remaining, MAX_WAIT)
