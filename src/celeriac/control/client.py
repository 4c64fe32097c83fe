"""The remote-control client: ``app.control``, as in Celery (``inspect()`` is in ``inspect``).

Each command is one ``Broadcast`` (``celeriac.control.broadcast``): a request published on
the pidbox fanout exchange and, when asked for, the replies of the workers.

``revoke`` also writes the ids to the durable record in the result backend
(``celeriac.control.revoked``), so workers that start later honour them too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from celeriac.control.broadcast import (
    DEFAULT_TIMEOUT,
    Broadcast,
    Destination,
    Reply,
    ReplyCallback,
)
from celeriac.control.inspect import Inspect
from celeriac.control.mailbox import Mailbox
from celeriac.control.revoked import record_revokes

if TYPE_CHECKING:
    from celeriac.app.base import Celery
    from celeriac.messaging.connection import Connection
    from celeriac.messaging.entities import Queue

logger = logging.getLogger(__name__)

#: Celery's default signal for ``revoke(terminate=True)``.
TERM_SIGNAME = "SIGTERM"


class Control:
    """Broadcast remote-control commands to workers and collect their replies.

    Every command takes ``destination`` (node names; None for all) and the ``broadcast``
    keywords (``reply``, ``timeout``, ``limit``, ``callback``, ``connection``, ``pattern``,
    ``matcher``). Commands return the list of ``{hostname: reply}`` when ``reply`` is true
    (``ping`` always replies), else None.
    """

    def __init__(self, app: Celery) -> None:
        self.app = app

    @property
    def mailbox(self) -> Mailbox:
        """The pidbox names and options of the app's current settings."""
        return Mailbox.for_app(self.app)

    def inspect(
        self,
        destination: Destination = None,
        timeout: float = 1.0,
        callback: ReplyCallback | None = None,
        connection: Connection | None = None,
        limit: int | None = None,
        pattern: str | None = None,
        matcher: str | None = None,
    ) -> Inspect:
        """Read-only commands (``active``, ``stats``...), answered as ``{hostname: reply}``."""
        return Inspect(
            self.app, destination, timeout, callback, connection, limit, pattern, matcher
        )

    # -- broadcasting ---------------------------------------------------------------------
    def broadcast(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        destination: Destination = None,
        connection: Connection | None = None,
        reply: bool = False,
        timeout: float | None = DEFAULT_TIMEOUT,
        limit: int | None = None,
        callback: ReplyCallback | None = None,
        pattern: str | None = None,
        matcher: str | None = None,
        **extra_arguments: Any,
    ) -> list[Reply] | None:
        """Send ``command`` to the workers; with ``reply``, return their replies.

        Args:
            command: The command name (see ``celeriac.control.commands``).
            arguments: The command's keyword arguments (``extra_arguments`` are added).
            destination: Node names; None sends to every worker.
            connection: A broker connection to use (a new one, closed after, when None).
            reply: Wait for replies and return them.
            timeout: Seconds to wait for replies in all (None: one second).
            limit: Stop waiting after this many replies (default: one per destination).
            callback: Called with each reply as it arrives.
            pattern: With ``matcher`` (``glob`` or ``pcre``), address the nodes whose names
                match instead of a destination list.
            matcher: See ``pattern``.

        Raises:
            ValueError: ``destination`` is not a name or a list of names.
            OperationalError: The broker could not be reached.
        """
        call = Broadcast.prepare(
            self.app,
            command,
            {**(arguments or {}), **extra_arguments},
            destination,
            reply,
            timeout,
            limit,
            callback,
            pattern,
            matcher,
        )
        if connection is not None:
            return call.send(connection)
        with self.app.connection() as conn:
            return call.send(conn)

    async def abroadcast(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        destination: Destination = None,
        connection: Connection | None = None,
        reply: bool = False,
        timeout: float | None = DEFAULT_TIMEOUT,
        limit: int | None = None,
        callback: ReplyCallback | None = None,
        pattern: str | None = None,
        matcher: str | None = None,
        **extra_arguments: Any,
    ) -> list[Reply] | None:
        """``broadcast`` for asyncio code: the broker I/O does not block the event loop."""
        call = Broadcast.prepare(
            self.app,
            command,
            {**(arguments or {}), **extra_arguments},
            destination,
            reply,
            timeout,
            limit,
            callback,
            pattern,
            matcher,
        )
        if connection is not None:
            return await call.asend(connection)
        conn = self.app.connection()
        try:
            return await call.asend(conn)
        finally:
            await conn.arun(conn.close)

    # -- commands -------------------------------------------------------------------------
    def ping(
        self, destination: Destination = None, timeout: float = 1.0, **kwargs: Any
    ) -> list[Reply] | None:
        """Ask workers to answer ``{"ok": "pong"}``."""
        return self.broadcast(
            "ping", destination=destination, reply=True, timeout=timeout, **kwargs
        )

    def revoke(
        self,
        task_id: str | Iterable[str],
        destination: Destination = None,
        terminate: bool = False,
        signal: str | int = TERM_SIGNAME,
        **kwargs: Any,
    ) -> list[Reply] | None:
        """Revoke tasks: workers will not run them, now or when they start later.

        With ``terminate``, a worker also stops the task if it is running it, with
        ``signal`` (prefork pool; other pools can only skip tasks not started yet).
        """
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        self._record_revokes(ids)
        arguments: dict[str, Any] = {
            "task_id": task_id if isinstance(task_id, str) else ids,
            "terminate": terminate,
            "signal": signal,
        }
        return self.broadcast("revoke", arguments, destination, **kwargs)

    def _record_revokes(self, ids: list[str]) -> None:
        try:
            record_revokes(self.app.backend, ids)
        except Exception as exc:
            logger.warning(
                "Could not record revoked tasks %s in the result backend (%s: %s): workers "
                "that start later will not know they were revoked",
                ", ".join(ids),
                type(exc).__name__,
                exc,
            )

    def terminate(
        self,
        task_id: str | Iterable[str],
        destination: Destination = None,
        signal: str | int = TERM_SIGNAME,
        **kwargs: Any,
    ) -> list[Reply] | None:
        """``revoke(..., terminate=True)``."""
        return self.revoke(task_id, destination, terminate=True, signal=signal, **kwargs)

    def rate_limit(
        self,
        task_name: str,
        rate_limit: str | float | None,
        destination: Destination = None,
        **kwargs: Any,
    ) -> list[Reply] | None:
        """Set a task type's rate limit on the workers (``"10/s"``; 0 or None: none)."""
        arguments = {"task_name": task_name, "rate_limit": rate_limit}
        return self.broadcast("rate_limit", arguments, destination, **kwargs)

    def time_limit(
        self,
        task_name: str,
        soft: float | None = None,
        hard: float | None = None,
        destination: Destination = None,
        **kwargs: Any,
    ) -> list[Reply] | None:
        """Set a task type's soft and hard time limits (seconds) on the workers."""
        arguments = {"task_name": task_name, "hard": hard, "soft": soft}
        return self.broadcast("time_limit", arguments, destination, **kwargs)

    def shutdown(self, destination: Destination = None, **kwargs: Any) -> list[Reply] | None:
        """Ask workers to shut down (warm: running tasks finish)."""
        return self.broadcast("shutdown", {}, destination, **kwargs)

    def pool_grow(
        self, n: int = 1, destination: Destination = None, **kwargs: Any
    ) -> list[Reply] | None:
        """Grow the workers' pools by ``n`` processes or threads."""
        return self.broadcast("pool_grow", {"n": n}, destination, **kwargs)

    def pool_shrink(
        self, n: int = 1, destination: Destination = None, **kwargs: Any
    ) -> list[Reply] | None:
        """Shrink the workers' pools by ``n`` processes or threads."""
        return self.broadcast("pool_shrink", {"n": n}, destination, **kwargs)

    def add_consumer(
        self,
        queue: str,
        exchange: str | None = None,
        exchange_type: str = "direct",
        routing_key: str | None = None,
        options: dict[str, Any] | None = None,
        destination: Destination = None,
        **kwargs: Any,
    ) -> list[Reply] | None:
        """Make workers consume from ``queue`` too (exchange and key default to its name)."""
        arguments = {
            "queue": queue,
            "exchange": exchange,
            "exchange_type": exchange_type,
            "routing_key": routing_key,
            **(options or {}),
        }
        return self.broadcast("add_consumer", arguments, destination, **kwargs)

    def cancel_consumer(
        self, queue: str, destination: Destination = None, **kwargs: Any
    ) -> list[Reply] | None:
        """Make workers stop consuming from ``queue``."""
        return self.broadcast("cancel_consumer", {"queue": queue}, destination, **kwargs)

    def enable_events(self, destination: Destination = None, **kwargs: Any) -> list[Reply] | None:
        """Make workers send task events."""
        return self.broadcast("enable_events", {}, destination, **kwargs)

    def disable_events(self, destination: Destination = None, **kwargs: Any) -> list[Reply] | None:
        """Make workers stop sending task events."""
        return self.broadcast("disable_events", {}, destination, **kwargs)

    def purge(self, connection: Connection | None = None, queues: Iterable[str] = ()) -> int:
        """Delete the waiting messages of the app's task queues (or of ``queues``).

        Returns:
            How many messages were deleted. There is no undo.
        """
        router = self.app.router
        names = list(queues) or list(router.queues)
        if connection is not None:
            return _purge(connection, [router.queue(name) for name in names])
        with self.app.connection() as conn:
            return _purge(conn, [router.queue(name) for name in names])

    discard_all = purge


def _purge(conn: Connection, queues: list[Queue]) -> int:
    conn.declare(*queues)  # purging a queue the broker does not have fails on some brokers
    return sum(conn.transport.purge(queue.name) for queue in queues)
