"""``app.control.inspect()``: the read-only commands, answered by node (as in Celery).

Each method sends one command with the inspector's destination, timeout, limit and
pattern, and returns ``{hostname: reply}``, or None when no worker replied in time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from celeriac.control.broadcast import Destination, ReplyCallback
from celeriac.control.mailbox import flatten_replies

if TYPE_CHECKING:
    from celeriac.app.base import Celery
    from celeriac.messaging.connection import Connection


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
