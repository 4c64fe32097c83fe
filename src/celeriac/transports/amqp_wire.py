"""What the ``amqp://`` transport puts on the wire, as pure functions.

- Connection parameters from a kombu-style URL (``amqp://user:pass@host:5672//`` is the
  virtual host ``/``; ``amqps://`` turns TLS on).
- ``Envelope`` <-> AMQP basic properties. Units follow kombu: ``expiration`` is in seconds
  here and a string of milliseconds on the wire. AMQP's ``timestamp`` holds whole seconds,
  so a fractional one also travels in the private header ``x-celeriac-ts`` (removed again
  on receipt).
- Queue arguments: EXACTLY what a ``Queue`` asks for (a queue declared with other
  arguments is a 406 channel error, and Celery declares ``celery`` with none).
- Delay buckets, the broker-side store of deferred messages, one queue per target queue and
  power-of-two delay (``celeriac.delay.<ms>.<queue>``). RabbitMQ expires messages only at
  the head of a queue, so each bucket has ONE queue-level TTL (``x-message-ttl``): its
  messages leave in order, each exactly one TTL after it entered, dead-lettered back to
  the target queue through the default exchange. ``x-expires`` removes an idle bucket.
  A message deferred by more than one bucket's TTL carries its due time in
  ``x-celeriac-due`` and the transport moves it on through smaller buckets until it is due.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import pika

from celeriac.exceptions import ImproperlyConfigured
from celeriac.messaging.entities import Queue
from celeriac.transports import amqp_codec as codec
from celeriac.transports.base import Envelope, Properties

#: Private headers: when a deferred message is due, and a fractional timestamp.
DUE_HEADER = "x-celeriac-due"
TS_HEADER = "x-celeriac-ts"
#: Prefix of the delay bucket queues.
DELAY_PREFIX = "celeriac.delay."
#: Bucket TTLs are 2**k milliseconds for k in this range (1 ms to about 397 days).
BUCKET_EXPONENTS = range(36)
#: An idle bucket queue goes this long after its last message could have left it.
BUCKET_IDLE_MS = 60_000

_QUEUE_TYPES = ("classic", "quorum")

codec.install()


def connection_parameters(url: str, options: Mapping[str, Any]) -> pika.ConnectionParameters:
    """Connection parameters for ``url`` (kombu's URL form) and the transport options.

    Options used: ``heartbeat`` (seconds, default 60), ``connect_timeout`` (seconds,
    default 4), ``ssl`` (True, or an ``ssl.SSLContext``; implied by ``amqps://``).
    """
    parts = urlsplit(url)
    secure = parts.scheme.lower() == "amqps" or bool(options.get("ssl"))
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    ssl_options = None
    if secure:
        context = options.get("ssl")
        if not isinstance(context, ssl.SSLContext):
            context = ssl.create_default_context()
        ssl_options = pika.SSLOptions(context, parts.hostname or "localhost")
    return pika.ConnectionParameters(
        host=parts.hostname or "localhost",
        port=parts.port or (5671 if secure else 5672),
        virtual_host=unquote(path) or "/",
        credentials=pika.PlainCredentials(
            unquote(parts.username or "guest"), unquote(parts.password or "guest")
        ),
        heartbeat=int(options.get("heartbeat", 60)),
        blocked_connection_timeout=float(options.get("blocked_connection_timeout", 300)),
        socket_timeout=float(options.get("connect_timeout", 4)),
        connection_attempts=1,
        ssl_options=ssl_options,
        client_properties={"product": "celeriac"},
    )


# -- messages ---------------------------------------------------------------------------------
def to_wire(envelope: Envelope, extra: Mapping[str, Any] | None = None) -> pika.BasicProperties:
    """The AMQP properties (application headers included) that carry ``envelope``."""
    p = envelope.properties
    headers = dict(envelope.headers)
    if extra:
        headers.update(extra)
    timestamp = None
    if p.timestamp is not None:
        timestamp = int(p.timestamp)
        if timestamp != p.timestamp:
            headers[TS_HEADER] = float(p.timestamp)
    return codec.WireProperties(
        content_type=p.content_type,
        content_encoding=p.content_encoding,
        headers=headers,
        delivery_mode=2 if p.delivery_mode == 2 else 1,
        priority=p.priority,
        correlation_id=p.correlation_id,
        reply_to=p.reply_to,
        expiration=None if p.expiration is None else str(max(0, round(p.expiration * 1000))),
        message_id=p.message_id,
        timestamp=timestamp,
    )


def from_wire(props: pika.BasicProperties, body: bytes) -> tuple[Envelope, float | None]:
    """The envelope a delivery carries, and its due time when it came from a delay bucket."""
    # Our own decoder made this dict for this message alone (amqp_codec): no copy needed.
    headers: dict[str, Any] = cast(dict[str, Any], props.headers) if props.headers else {}
    timestamp: float | None = props.timestamp
    exact = headers.pop(TS_HEADER, None)
    if isinstance(exact, float):
        timestamp = exact
    due = headers.pop(DUE_HEADER, None)
    if due is not None:
        _forget_delay_deaths(headers)
    expiration = None if props.expiration is None else int(props.expiration) / 1000
    properties = Properties(
        content_type=props.content_type,
        content_encoding=props.content_encoding,
        correlation_id=props.correlation_id,
        reply_to=props.reply_to,
        delivery_mode=props.delivery_mode or 1,
        priority=props.priority,
        expiration=expiration,
        message_id=props.message_id,
        timestamp=timestamp,
    )
    return Envelope(body, headers, properties), float(due) if due is not None else None


def _forget_delay_deaths(headers: dict[str, Any]) -> None:
    """Drop the ``x-death`` records that passing through delay buckets left behind."""
    deaths = headers.get("x-death")
    if isinstance(deaths, list):
        kept = [d for d in deaths if not str(d.get("queue", "")).startswith(DELAY_PREFIX)]
        if kept:
            headers["x-death"] = kept
        else:
            del headers["x-death"]
    for key in ("x-first-death-queue", "x-last-death-queue"):
        if str(headers.get(key, "")).startswith(DELAY_PREFIX):
            base = key.rsplit("-", 1)[0]
            for suffix in ("queue", "reason", "exchange"):
                headers.pop(f"{base}-{suffix}", None)


# -- queues -----------------------------------------------------------------------------------
def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def queue_arguments(queue: Queue, queue_type: str | None = None) -> dict[str, Any]:
    """The ``x-`` arguments for ``queue``: exactly what it asks for, nothing more.

    ``delivery_limit`` needs a quorum queue (RabbitMQ counts deliveries only there), so it
    implies ``x-queue-type: quorum``; ``queue_type`` (a transport option) asks for quorum
    queues for every durable, shared queue.

    Raises:
        ImproperlyConfigured: The queue asks for what a quorum queue cannot be.
    """
    args: dict[str, Any] = {}
    if queue.max_priority is not None:
        args["x-max-priority"] = queue.max_priority
    if queue.message_ttl is not None:
        args["x-message-ttl"] = _ms(queue.message_ttl)
    if queue.expires is not None:
        args["x-expires"] = max(1, _ms(queue.expires))
    if queue.dead_letter_exchange is not None:
        args["x-dead-letter-exchange"] = queue.dead_letter_exchange
    if queue.dead_letter_routing_key is not None:
        args["x-dead-letter-routing-key"] = queue.dead_letter_routing_key
    if queue.max_length is not None:
        args["x-max-length"] = queue.max_length
    shared = queue.durable and not queue.exclusive and not queue.auto_delete
    if queue_type not in (None, *_QUEUE_TYPES):
        raise ImproperlyConfigured(f"queue_type must be one of {_QUEUE_TYPES}, not {queue_type!r}")
    quorum = queue.delivery_limit is not None or (queue_type == "quorum" and shared)
    if quorum:
        if not shared:
            raise ImproperlyConfigured(
                f"Queue {queue.name!r}: delivery_limit needs a RabbitMQ quorum queue, which "
                "must be durable, not exclusive and not auto_delete"
            )
        if queue.max_priority is not None:
            raise ImproperlyConfigured(
                f"Queue {queue.name!r}: RabbitMQ quorum queues (needed for delivery_limit or "
                "queue_type='quorum') do not take max_priority"
            )
        args["x-queue-type"] = "quorum"
        if queue.delivery_limit is not None:
            args["x-delivery-limit"] = queue.delivery_limit
    return args


# -- delay buckets ----------------------------------------------------------------------------
def bucket_for(delay: float) -> int | None:
    """The exponent of the longest bucket not longer than ``delay`` seconds (None: < 1 ms)."""
    ms = int(delay * 1000)
    if ms < 1:
        return None
    return min(ms.bit_length() - 1, BUCKET_EXPONENTS[-1])


def bucket_name(exponent: int, target: str) -> str:
    """The delay bucket queue of ``target`` with a TTL of ``2**exponent`` ms."""
    return f"{DELAY_PREFIX}{2**exponent}.{target}"


def bucket_arguments(exponent: int, target: str) -> dict[str, Any]:
    """Arguments of a delay bucket: one TTL, dead-lettered to ``target``, gone when idle."""
    ttl = 2**exponent
    return {
        "x-message-ttl": ttl,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": target,
        "x-expires": ttl + BUCKET_IDLE_MS,
    }
