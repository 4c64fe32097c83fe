"""The pidbox wire format: where remote-control requests and replies travel, and their shape.

These are Celery's (kombu's ``pidbox``), so Celery clients and workers are on the same wire:

=====================  ================================================================
requests               fanout exchange ``celery.pidbox`` (not durable); every worker's
                       queue ``<hostname>.celery.pidbox`` is bound to it (exclusive,
                       auto-delete, 10 s expiry when unused, 300 s message TTL)
request body           ``{"method", "arguments", "destination": [names] | null,
                       "pattern", "matcher", "ticket", "reply_to": {"exchange",
                       "routing_key"}}`` (``ticket`` and ``reply_to`` only when a reply
                       is wanted)
request headers        ``{"clock": <Lamport clock>, "expires": <epoch seconds> | 0}``
replies                direct exchange ``reply.celery.pidbox`` (not durable), routed by
                       the client's own key to its queue ``<key>.reply.celery.pidbox``
reply body             ``{<hostname>: <reply>}``; headers ``{"ticket", "clock"}``
=====================  ================================================================

``celery`` is the ``control_exchange`` setting. Messages are transient (delivery mode 1) and
serialized with ``task_serializer``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celeriac.messaging.entities import Exchange, Queue

if TYPE_CHECKING:
    from celeriac.app.base import Celery

#: Celery's defaults for ``control_queue_ttl``, ``control_queue_expires``.
QUEUE_TTL = 300.0
QUEUE_EXPIRES = 10.0
#: Remote-control messages are not written to disk by the broker.
TRANSIENT = 1


@dataclass(frozen=True, slots=True)
class Mailbox:
    """The names and queue options of one remote-control namespace (``celery``).

    Attributes:
        namespace: The ``control_exchange`` setting.
        serializer: Serializer of requests and replies (``task_serializer``).
        accept: Content types accepted in requests and replies (``accept_content``).
        queue_ttl: Seconds a request or reply may wait in a queue.
        queue_expires: Seconds an unused queue lives on.
    """

    namespace: str = "celery"
    serializer: str = "json"
    accept: tuple[str, ...] = ("json",)
    queue_ttl: float | None = QUEUE_TTL
    queue_expires: float | None = QUEUE_EXPIRES

    @classmethod
    def for_app(cls, app: Celery) -> Mailbox:
        """The mailbox ``app``'s settings describe (Celery's ``control_*`` settings)."""
        conf = app.conf
        return cls(
            namespace=conf.control_exchange,
            serializer=conf.task_serializer,
            accept=tuple(conf.accept_content),
            queue_ttl=conf.get("control_queue_ttl", QUEUE_TTL),
            queue_expires=conf.get("control_queue_expires", QUEUE_EXPIRES),
        )

    @property
    def exchange(self) -> Exchange:
        """Where requests are published: every worker's queue is bound to it."""
        return Exchange(f"{self.namespace}.pidbox", "fanout", durable=False)

    @property
    def reply_exchange(self) -> Exchange:
        """Where workers publish replies, routed to the asking client's queue."""
        return Exchange(f"reply.{self.namespace}.pidbox", "direct", durable=False)

    def node_queue(self, hostname: str) -> Queue:
        """The queue a worker named ``hostname`` receives requests on."""
        return Queue(
            f"{hostname}.{self.namespace}.pidbox",
            self.exchange,
            durable=False,
            exclusive=True,
            auto_delete=True,
            expires=self.queue_expires,
            message_ttl=self.queue_ttl,
        )

    def reply_queue(self, key: str) -> Queue:
        """The queue a client receives its replies on; ``key`` is its routing key."""
        return Queue(
            f"{key}.{self.reply_exchange.name}",
            self.reply_exchange,
            routing_key=key,
            durable=False,
            exclusive=True,
            auto_delete=True,
            expires=self.queue_expires,
            message_ttl=self.queue_ttl,
        )


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """Where a worker sends its reply."""

    exchange: str
    routing_key: str


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """One remote-control request, as it travels.

    Attributes:
        method: The command name.
        arguments: The command's keyword arguments.
        destination: Node names the request is for; None (or empty) for every node.
        pattern: With ``matcher``, a pattern node names must match (when no destination).
        matcher: ``glob`` or ``pcre``.
        ticket: Identifies the replies to this request; None when no reply is wanted.
        reply_to: Where replies go; None when no reply is wanted.
    """

    method: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    destination: Sequence[str] | None = None
    pattern: str | None = None
    matcher: str | None = None
    ticket: str | None = None
    reply_to: ReplyTo | None = None

    def to_body(self) -> dict[str, Any]:
        """The message body (Celery's keys)."""
        body: dict[str, Any] = {
            "method": self.method,
            "arguments": dict(self.arguments),
            "destination": list(self.destination) if self.destination is not None else None,
            "pattern": self.pattern,
            "matcher": self.matcher,
        }
        if self.ticket is not None and self.reply_to is not None:
            body["ticket"] = self.ticket
            body["reply_to"] = {
                "exchange": self.reply_to.exchange,
                "routing_key": self.reply_to.routing_key,
            }
        return body

    @classmethod
    def from_body(cls, body: Any) -> ControlRequest:
        """Read a received body.

        Raises:
            ValueError: The body is not a request (no method, wrong types).
        """
        if not isinstance(body, Mapping):
            raise ValueError(f"a control request is a mapping, not {type(body).__name__}")
        method = body.get("method")
        if not isinstance(method, str) or not method:
            raise ValueError("a control request needs a method name")
        arguments = body.get("arguments") or {}
        if not isinstance(arguments, Mapping):
            raise ValueError(f"{method}: arguments must be a mapping")
        destination = body.get("destination")
        if destination is not None and not isinstance(destination, list | tuple):
            raise ValueError(f"{method}: destination must be a list of node names")
        reply_to = body.get("reply_to")
        route = None
        if isinstance(reply_to, Mapping) and reply_to.get("exchange") is not None:
            route = ReplyTo(str(reply_to["exchange"]), str(reply_to.get("routing_key") or ""))
        ticket = body.get("ticket")
        return cls(
            method=method,
            arguments={str(k): v for k, v in arguments.items()},
            destination=[str(name) for name in destination] if destination else None,
            pattern=_optional_str(body.get("pattern")),
            matcher=_optional_str(body.get("matcher")),
            ticket=str(ticket) if ticket is not None else None,
            reply_to=route,
        )

    def addressed_to(self, hostname: str) -> bool:
        """Whether the node ``hostname`` should act on this request."""
        if self.destination:
            return hostname in self.destination
        if self.pattern and self.matcher:
            return matches(hostname, self.pattern, self.matcher)
        return True


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def matches(hostname: str, pattern: str, matcher: str) -> bool:
    """kombu's matchers: ``glob`` (shell wildcards) and ``pcre`` (a regular expression that
    must match at the start of the name).

    Raises:
        ValueError: Another matcher name.
    """
    if matcher == "glob":
        return fnmatch.fnmatch(hostname, pattern)
    if matcher == "pcre":
        return re.match(pattern, hostname) is not None
    raise ValueError(f"unknown matcher {matcher!r} (use glob or pcre)")


def flatten_replies(replies: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``[{node: reply}, ...]`` to ``{node: reply, ...}`` (a later duplicate node wins)."""
    nodes: dict[str, Any] = {}
    for reply in replies:
        nodes.update(reply)
    return nodes
