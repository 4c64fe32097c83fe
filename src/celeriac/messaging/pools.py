"""Pools of connections and producers, bounded by ``broker_pool_limit``.

A web process publishing from many threads reuses a few broker sessions instead of opening
one per call. ``acquire`` hands out an idle connection, opens a new one while under the
limit, and otherwise waits (or raises ``LimitExceeded``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from celeriac.exceptions import LimitExceeded
from celeriac.messaging.connection import Connection
from celeriac.messaging.producer import Producer


class PooledConnection:
    """A connection lent by a pool; ``release`` (or leaving the ``with``) gives it back."""

    def __init__(self, pool: ConnectionPool, connection: Connection) -> None:
        self.pool = pool
        self.connection = connection
        self._released = False

    def release(self) -> None:
        """Return the connection to its pool (once; later calls do nothing)."""
        if not self._released:
            self._released = True
            self.pool.release(self.connection)

    def __enter__(self) -> Connection:
        return self.connection

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class ConnectionPool:
    """Up to ``limit`` connections made by ``factory`` (None = no limit)."""

    def __init__(self, factory: Callable[[], Connection], limit: int | None = 10) -> None:
        if limit is not None and limit < 1:
            raise ValueError("a pool limit must be at least 1 (or None for no limit)")
        self.factory = factory
        self.limit = limit
        self._idle: list[Connection] = []
        self._in_use = 0
        self._cond = threading.Condition()
        self._closed = False

    @property
    def in_use(self) -> int:
        """Connections currently lent out."""
        return self._in_use

    def acquire(self, block: bool = True, timeout: float | None = None) -> PooledConnection:
        """Borrow a connection.

        Raises:
            LimitExceeded: All ``limit`` connections are in use and ``block`` is False or
                none came back within ``timeout`` seconds.
        """
        with self._cond:
            if self._closed:
                raise LimitExceeded("the pool is closed")
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._idle and self.limit is not None and self._in_use >= self.limit:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not block or not self._cond.wait(remaining):
                    raise LimitExceeded(
                        f"all {self.limit} pooled connections are in use "
                        "(raise broker_pool_limit or release connections sooner)"
                    )
            self._in_use += 1
            connection = self._idle.pop() if self._idle else None
        if connection is None:
            try:
                connection = self.factory()
            except BaseException:
                with self._cond:
                    self._in_use -= 1
                    self._cond.notify()
                raise
        return PooledConnection(self, connection)

    def release(self, connection: Connection) -> None:
        """Take a connection back; it is closed instead if the pool was closed."""
        with self._cond:
            self._in_use -= 1
            closed = self._closed
            if not closed:
                self._idle.append(connection)
            self._cond.notify()
        if closed:
            connection.close()

    def close(self) -> None:
        """Close the idle connections; lent ones are closed when they come back."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for connection in idle:
            connection.close()

    def __enter__(self) -> ConnectionPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class PooledProducer:
    """A producer on a pooled connection; leaving the ``with`` returns the connection."""

    def __init__(self, lease: PooledConnection, producer: Producer) -> None:
        self.lease = lease
        self.producer = producer

    def release(self) -> None:
        """Give the connection back to its pool."""
        self.lease.release()

    def __enter__(self) -> Producer:
        return self.producer

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class ProducerPool:
    """Producers over a connection pool, made with the same keyword arguments each time."""

    def __init__(self, connections: ConnectionPool, **producer_options: Any) -> None:
        self.connections = connections
        self.producer_options = producer_options

    def acquire(self, block: bool = True, timeout: float | None = None) -> PooledProducer:
        """Borrow a producer (and its connection); see ``ConnectionPool.acquire``."""
        lease = self.connections.acquire(block, timeout)
        try:
            producer = Producer(lease.connection, **self.producer_options)
        except BaseException:
            lease.release()
            raise
        return PooledProducer(lease, producer)
