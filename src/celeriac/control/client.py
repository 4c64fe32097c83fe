"""The remote-control client: ``app.control`` and ``app.control.inspect()``, as in Celery.

``Control.broadcast`` publishes one request on the pidbox fanout exchange and, when a reply
is wanted, collects the replies on a queue of its own until ``limit`` replies came (the
number of destinations, when given) or ``timeout`` seconds passed. Each call uses a fresh
reply queue, deleted afterwards, so concurrent calls never read each other's replies.
``abroadcast`` does the same from asyncio code without blocking the loop.

``revoke`` also writes the ids to the durable record in the result backend
(``celeriac.control.revoked``), so workers that start later honour them too.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeriac.control.mailbox import (
    TRANSIENT,
    ControlRequest,
    Mailbox,
    ReplyTo,
    flatten_replies,
)
from celeriac.control.revoked import record_revokes
from celeriac.exceptions import MissingDependency, SerializationError
from celeriac.messaging.consumer import Consumer
from celeriac.messaging.producer import Producer

if TYPE_CHECKING:
    from celeriac.app.base import Celery
    from celeriac.messaging.connection import Connection
    from celeriac.messaging.entities import Queue
    from celeriac.messaging.message import Message

logger = logging.getLogger(__name__)

Reply = dict[str, Any]
"""One node's reply as it travels: ``{hostname: reply}``."""
ReplyCallback = Callable[[Reply], object]
Destination = str | Sequence[str] | None

#: Seconds a broadcast waits for replies when not told.
DEFAULT_TIMEOUT = 1.0
#: Longest wait between two looks at the reply queue. Wake-ups are hints on some
#: transports (SQLite's may miss a reply queue made a moment ago): a short wait keeps a
#: missed one from costing the whole timeout.
REPLY_POLL = 0.05
#: Replies taken at once. A window also makes push transports (RabbitMQ) consume the
#: auto-delete reply queue with one standing consumer for the whole call.
REPLY_PREFETCH = 64
#: Celery's default signal for ``revoke(terminate=True)``.
TERM_SIGNAME = "SIGTERM"


@dataclass(frozen=True, slots=True)
class _Call:
    """One broadcast: the request, and where and how many replies to wait for."""

    request: ControlRequest
    reply_queue: Queue | None
    limit: int | None

    def wants_more(self, replies: int) -> bool:
        return self.limit is None or replies < self.limit


def _destination(destination: Destination) -> list[str] | None:
    if destination is None:
        return None
    if isinstance(destination, str):
        return [destination]
    if not isinstance(destination, list | tuple):
        raise ValueError(f"destination must be a node name or a list of them, not {destination!r}")
    return [str(name) for name in destination]


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
    def _call(
        self,
        command: str,
        arguments: dict[str, Any] | None,
        destination: Destination,
        reply: bool,
        limit: int | None,
        pattern: str | None,
        matcher: str | None,
    ) -> _Call:
        names = _destination(destination)
        if limit is None and names:
            limit = len(names)
        queue = ticket = route = None
        if reply:
            key = str(uuid.uuid4())
            mailbox = self.mailbox
            queue = mailbox.reply_queue(key)
            ticket = str(uuid.uuid4())
            route = ReplyTo(mailbox.reply_exchange.name, key)
        request = ControlRequest(
            command, dict(arguments or {}), names, pattern, matcher, ticket, route
        )
        return _Call(request, queue, limit)

    def _publish_options(self, timeout: float) -> dict[str, Any]:
        mailbox = self.mailbox
        return {
            "exchange": mailbox.exchange.name,
            "declare": [mailbox.exchange],
            "headers": {
                "clock": self.app.clock.forward(),
                "expires": time.time() + timeout if timeout else 0,
            },
            "serializer": mailbox.serializer,
            "delivery_mode": TRANSIENT,
            "retry": True,
        }

    def _reply_consumer(self, conn: Connection, call: _Call) -> Consumer | None:
        if call.reply_queue is None:
            return None
        return Consumer(
            conn,
            call.reply_queue,
            accept=self.mailbox.accept,
            no_ack=True,
            prefetch_count=REPLY_PREFETCH,
        )

    def _accept(self, message: Message, call: _Call, replies: list[Reply]) -> None:
        """Keep ``message`` when it answers ``call`` (a late reply to another call is not)."""
        clock = message.headers.get("clock")
        if isinstance(clock, int):
            self.app.clock.adjust(clock)
        if message.headers.get("ticket", call.request.ticket) != call.request.ticket:
            return
        try:
            body = message.decode()
        except (SerializationError, MissingDependency) as exc:
            logger.warning("Ignoring a remote-control reply that cannot be decoded: %s", exc)
            return
        if isinstance(body, dict):
            replies.append(body)
        else:
            logger.warning("Ignoring a remote-control reply that is not a mapping: %r", body)

    def broadcast(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        destination: Destination = None,
        connection: Connection | None = None,
        reply: bool = False,
        timeout: float | None = 1.0,
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
        call = self._call(
            command,
            {**(arguments or {}), **extra_arguments},
            destination,
            reply,
            limit,
            pattern,
            matcher,
        )
        timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        if connection is not None:
            return self._broadcast_on(connection, call, timeout, callback)
        with self.app.connection() as conn:
            return self._broadcast_on(conn, call, timeout, callback)

    def _broadcast_on(
        self, conn: Connection, call: _Call, timeout: float, callback: ReplyCallback | None
    ) -> list[Reply] | None:
        consumer = self._reply_consumer(conn, call)
        if consumer is None:
            Producer(conn, auto_declare=False).publish(
                call.request.to_body(), "", **self._publish_options(timeout)
            )
            return None
        consumer.consume()  # the reply queue exists before any worker can answer
        try:
            Producer(conn, auto_declare=False).publish(
                call.request.to_body(), "", **self._publish_options(timeout)
            )
            replies: list[Reply] = []
            deadline = time.monotonic() + timeout
            while call.wants_more(len(replies)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                messages = consumer.fetch()
                for message in messages:
                    self._take(message, call, replies, callback)
                if not messages:
                    conn.transport.wait(min(remaining, REPLY_POLL))
            return replies[: call.limit] if call.limit is not None else replies
        finally:
            consumer.cancel()
            self._drop_reply_queue(conn, call)

    def _take(
        self, message: Message, call: _Call, replies: list[Reply], callback: ReplyCallback | None
    ) -> None:
        before = len(replies)
        self._accept(message, call, replies)
        if callback is not None and len(replies) > before and call.wants_more(before):
            callback(replies[-1])

    @staticmethod
    def _drop_reply_queue(conn: Connection, call: _Call) -> None:
        if call.reply_queue is not None:
            with contextlib.suppress(Exception):  # it expires on its own anyway
                conn.transport.delete_queue(call.reply_queue.name)

    async def abroadcast(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        destination: Destination = None,
        connection: Connection | None = None,
        reply: bool = False,
        timeout: float | None = 1.0,
        limit: int | None = None,
        callback: ReplyCallback | None = None,
        pattern: str | None = None,
        matcher: str | None = None,
        **extra_arguments: Any,
    ) -> list[Reply] | None:
        """``broadcast`` for asyncio code: the broker I/O does not block the event loop."""
        call = self._call(
            command,
            {**(arguments or {}), **extra_arguments},
            destination,
            reply,
            limit,
            pattern,
            matcher,
        )
        timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        if connection is not None:
            return await self._abroadcast_on(connection, call, timeout, callback)
        conn = self.app.connection()
        try:
            return await self._abroadcast_on(conn, call, timeout, callback)
        finally:
            await conn.arun(conn.close)

    async def _abroadcast_on(
        self, conn: Connection, call: _Call, timeout: float, callback: ReplyCallback | None
    ) -> list[Reply] | None:
        consumer = self._reply_consumer(conn, call)
        producer = Producer(conn, auto_declare=False)
        body = call.request.to_body()
        if consumer is None:
            await producer.apublish(body, "", **self._publish_options(timeout))
            return None
        await conn.arun(consumer.consume)
        try:
            await producer.apublish(body, "", **self._publish_options(timeout))
            replies: list[Reply] = []
            deadline = time.monotonic() + timeout
            while call.wants_more(len(replies)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                messages = await consumer.afetch()
                for message in messages:
                    self._take(message, call, replies, callback)
                if not messages:
                    await conn.transport.await_ready(min(remaining, REPLY_POLL))
            return replies[: call.limit] if call.limit is not None else replies
        finally:
            consumer.cancel()
            await conn.arun(self._drop_reply_queue, conn, call)

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


class Inspect:
    """Read-only remote-control commands; each returns ``{hostname: reply}``, or None when
    no worker replied within the timeout."""

    def __init__(
        self,
        app: Celery,
        destination: Destination = None,
        timeout: float = 1.0,
        callback: ReplyCallback | None = None,
        connection: Connection | None = None,
        limit: int | None = None,
        pattern: str | None = None,
        matcher: str | None = None,
    ) -> None:
        self.app = app
        self.destination = destination
        self.timeout = timeout
        self.callback = callback
        self.connection = connection
        self.limit = limit
        self.pattern = pattern
        self.matcher = matcher

    def _options(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "connection": self.connection,
            "reply": True,
            "timeout": self.timeout,
            "limit": self.limit,
            "callback": self.callback,
            "pattern": self.pattern,
            "matcher": self.matcher,
        }

    def request(self, command: str, **arguments: Any) -> dict[str, Any] | None:
        """Send any command and gather the replies by node."""
        replies = self.app.control.broadcast(command, arguments, **self._options())
        return flatten_replies(replies) if replies else None

    _request = request  # Celery's name

    async def arequest(self, command: str, **arguments: Any) -> dict[str, Any] | None:
        """``request`` for asyncio code."""
        replies = await self.app.control.abroadcast(command, arguments, **self._options())
        return flatten_replies(replies) if replies else None

    def ping(self, destination: Destination = None) -> dict[str, Any] | None:
        """``{hostname: {"ok": "pong"}}`` for every worker that answered."""
        if destination:
            self.destination = destination
        return self.request("ping")

    def active(self, safe: bool | None = None) -> dict[str, Any] | None:
        """The tasks each worker is running (``safe``: argument reprs, not values)."""
        return self.request("active", safe=bool(safe))

    def reserved(self, safe: bool | None = None) -> dict[str, Any] | None:
        """Tasks received and waiting for a pool slot (or their rate limit)."""
        return self.request("reserved")

    def scheduled(self, safe: bool | None = None) -> dict[str, Any] | None:
        """Tasks held for their ETA: ``[{"eta", "priority", "request"}]``."""
        return self.request("scheduled")

    def stats(self) -> dict[str, Any] | None:
        """Statistics: ``total``, ``pid``, ``uptime``, ``pool``, ``broker``, ``rusage``..."""
        return self.request("stats")

    def revoked(self) -> dict[str, Any] | None:
        """The ids each worker holds as revoked."""
        return self.request("revoked")

    def registered(self, *taskinfoitems: str) -> dict[str, Any] | None:
        """Registered task names, with ``taskinfoitems`` attributes (``rate_limit``...)."""
        return self.request("registered", taskinfoitems=list(taskinfoitems))

    registered_tasks = registered

    def active_queues(self) -> dict[str, Any] | None:
        """The queues each worker consumes from, with their exchanges and options."""
        return self.request("active_queues")

    def query_task(self, *ids: str | Sequence[str]) -> dict[str, Any] | None:
        """``{hostname: {task_id: [state, info]}}`` for the given ids each worker holds."""
        flat: list[str] = []
        for item in ids:
            flat.extend([item] if isinstance(item, str) else item)
        return self.request("query_task", ids=flat)

    def conf(self, with_defaults: bool = False) -> dict[str, Any] | None:
        """Each worker's configuration (secrets masked); every setting with defaults."""
        return self.request("conf", with_defaults=with_defaults)

    def report(self) -> dict[str, Any] | None:
        """Each worker's software and settings, for bug reports: ``{"ok": text}``."""
        return self.request("report")

    def clock(self) -> dict[str, Any] | None:
        """Each worker's logical clock: ``{"clock": n}``."""
        return self.request("clock")

    def hello(self, from_node: str, revoked: Any = None) -> dict[str, Any] | None:
        """What a starting worker asks the others: their revoked ids and clocks."""
        return self.request("hello", from_node=from_node, revoked=revoked)
