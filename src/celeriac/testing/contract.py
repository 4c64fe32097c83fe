"""The transport contract: what every celeriac transport does, as a pytest suite.

Subclass ``TransportContract`` in a test module and give it a ``broker_url`` fixture; every
test then runs against your transport::

    import uuid

    import pytest

    from celeriac.testing.contract import TransportContract


    class TestMyTransport(TransportContract):
        @pytest.fixture
        def broker_url(self) -> str:
            return f"mybroker://127.0.0.1:7000/{uuid.uuid4().hex}"

The tests use the public messaging API (``Connection``, ``Producer``, ``Consumer``,
``Message``) and reach for the transport only where that API has no word for what they check
(queue lengths, bindings, purging). Every queue and exchange gets a fresh uuid-suffixed name,
so one broker URL may serve the whole suite, and what a test declared is deleted after it.
Tests of a feature the transport does not claim in its ``capabilities`` are skipped.

Durations are short (TTLs of 0.05 s) so the suite stays fast on an in-process broker; a
transport's clock must be good to a few tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import bz2
import json
import logging
import lzma
import pickle
import random
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from celeriac.exceptions import ContentDisallowed, MessageStateError, NotFound
from celeriac.messaging import Binding, Connection, Exchange, Message, Queue
from celeriac.transports import resolve_transport
from celeriac.transports.base import Transport

__all__ = [
    "Sandbox",
    "TransportContract",
    "bodies",
    "dead_letter",
    "lengths",
    "put",
    "take",
    "take_one",
    "take_ready",
]

#: Longest wait for a message that should arrive; only a failing test waits this long.
ARRIVAL_TIMEOUT = 2.0
#: How soon a waiting drain must hand over a message published meanwhile.
PROMPT = 1.0
#: Time to live of messages meant to expire during a test.
TTL = 0.05
#: Sleep that outlasts ``TTL`` with a margin for a slow clock.
PAST_TTL = 0.15


class Sandbox:
    """Fresh connections to the broker under test and unique names, cleaned up afterwards.

    Attributes:
        url: The broker URL.
        transport_cls: The transport class the URL resolves to.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.transport_cls: type[Transport] = resolve_transport(url)
        self._connections: list[Connection] = []
        self._names: list[str] = []

    def connect(self) -> Connection:
        """A new connection to the broker, closed when the test ends."""
        conn = Connection(self.url)
        self._connections.append(conn)
        return conn

    def name(self, prefix: str) -> str:
        """A queue or exchange name no other test uses."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self._names.append(name)
        return name

    def requires(self, *features: str) -> None:
        """Skip the test unless the transport claims every one of ``features``."""
        missing = [f for f in features if not getattr(self.transport_cls.capabilities, f)]
        if missing:
            pytest.skip(f"{self.transport_cls.__name__} does not implement {', '.join(missing)}")

    def dead_letter_queue(self) -> tuple[str, Queue]:
        """A fresh dead-letter exchange name and the queue it routes everything to."""
        exchange = Exchange(self.name("dlx"), type="fanout")
        return exchange.name, Queue(self.name("dlq"), exchange)

    def close(self) -> None:
        """Close every connection, then delete what the test may have declared."""
        used = any(conn.connected for conn in self._connections)
        for conn in reversed(self._connections):
            conn.close()
        if used and self._names:
            with Connection(self.url) as conn:
                for name in self._names:
                    conn.transport.delete_queue(name)
                    conn.transport.delete_exchange(name)


def take(
    conn: Connection,
    queue: Queue,
    count: int = 1,
    timeout: float = ARRIVAL_TIMEOUT,
    no_ack: bool = False,
) -> list[Message]:
    """Up to ``count`` messages from ``queue``, left unsettled, waiting up to ``timeout``."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    with conn.Consumer(queue, prefetch_count=0, no_ack=no_ack) as consumer:
        while True:
            got += consumer.fetch(count - len(got))
            left = deadline - time.monotonic()
            if len(got) >= count or left <= 0:
                return got
            conn.transport.wait(min(left, 0.05))


def take_one(conn: Connection, queue: Queue) -> Message:
    """The one message ``queue`` should deliver, left unsettled; fails if none arrives."""
    got = take(conn, queue)
    assert got, f"no message arrived in {queue.name!r} within {ARRIVAL_TIMEOUT}s"
    return got[0]


def take_ready(conn: Connection, queue: Queue) -> list[Message]:
    """Every message ``queue`` has ready now, left unsettled (no waiting)."""
    got: list[Message] = []
    with conn.Consumer(queue, prefetch_count=0) as consumer:
        while batch := consumer.fetch():
            got += batch
    return got


def bodies(messages: list[Message]) -> list[Any]:
    """The decoded bodies of ``messages``."""
    return [message.decode() for message in messages]


def put(conn: Connection, queue: Queue, *items: Any, **options: Any) -> None:
    """Publish each of ``items`` to ``queue`` through the default exchange."""
    producer = conn.Producer()
    for item in items:
        producer.publish(item, queue.name, declare=[queue], **options)


def lengths(conn: Connection, *queues: Queue) -> list[int]:
    """Ready messages in each of ``queues``."""
    return [conn.transport.queue_length(queue.name) for queue in queues]


def routed(conn: Connection, queues: dict[str, Queue]) -> set[str]:
    """Keys of the ``queues`` that hold messages; empties them for the next round."""
    return {key for key, queue in queues.items() if conn.transport.purge(queue.name)}


def dead_letter(conn: Connection, dlq: Queue, source: Queue, reason: str) -> Message:
    """The one message in ``dlq``, checked to have died in ``source`` for ``reason``."""
    message = take_one(conn, dlq)
    assert take_ready(conn, dlq) == [], f"more than one message in {dlq.name!r}"
    death = message.headers["x-death"][0]
    assert (death["queue"], death["reason"]) == (source.name, reason)
    return message


#: Bodies that cannot be decoded: (headers, body) published as JSON.
CORRUPT: dict[str, tuple[dict[str, str], bytes]] = {
    "json": ({}, b"{not json"),
    "compressed": ({"compression": "application/x-gzip"}, b"not zlib data"),
}

#: Codec name -> (MIME type in the ``compression`` header, stdlib decompressor), as kombu has them.
COMPRESSIONS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "zlib": ("application/x-gzip", zlib.decompress),
    "bzip2": ("application/x-bz2", bz2.decompress),
    "lzma": ("application/x-lzma", lzma.decompress),
}


class TransportContract:
    """The contract tests; subclass it and provide a ``broker_url`` fixture (a str)."""

    @pytest.fixture
    def broker(self, broker_url: str) -> Iterator[Sandbox]:
        """Connections and names for one test, on the broker at ``broker_url``."""
        sandbox = Sandbox(broker_url)
        yield sandbox
        sandbox.close()

    # -- routing --------------------------------------------------------------------------
    def test_the_default_exchange_routes_by_queue_name(self, broker: Sandbox) -> None:
        conn = broker.connect()
        queue, other = Queue(broker.name("q")), Queue(broker.name("other"))
        conn.declare(queue, other)
        conn.Producer().publish({"n": 1}, queue.name)
        conn.Producer().publish({"n": 2}, broker.name("no-such-queue"))
        assert bodies(take(conn, queue)) == [{"n": 1}]
        assert lengths(conn, other) == [0]

    def test_a_direct_exchange_routes_by_exact_key(self, broker: Sandbox) -> None:
        conn = broker.connect()
        exchange = Exchange(broker.name("direct"), type="direct")
        a1, a2, b = (Queue(broker.name("q"), exchange, routing_key=key) for key in "aab")
        conn.declare(a1, a2, b)
        producer = conn.Producer(exchange=exchange)
        for key in ("a", "A", "a.b", "c"):
            producer.publish({}, key)
        assert lengths(conn, a1, a2, b) == [1, 1, 0]

    def test_a_fanout_exchange_copies_to_every_bound_queue(self, broker: Sandbox) -> None:
        conn = broker.connect()
        exchange = Exchange(broker.name("fanout"), type="fanout")
        bound = [Queue(broker.name("q"), exchange, routing_key=key) for key in ("", "x", "#")]
        unbound = Queue(broker.name("unbound"), Exchange(broker.name("other"), type="fanout"))
        conn.declare(*bound, unbound)
        conn.Producer(exchange=exchange).publish({}, "any.key")
        assert lengths(conn, *bound, unbound) == [1, 1, 1, 0]

    def test_a_topic_exchange_routes_by_word_patterns(self, broker: Sandbox) -> None:
        conn = broker.connect()
        exchange = Exchange(broker.name("topic"), type="topic")
        patterns = ("eu.#", "*.orders.*", "us.#", "eu.*", "#")
        queues = {p: Queue(broker.name("q"), exchange, routing_key=p) for p in patterns}
        conn.declare(*queues.values())
        producer = conn.Producer(exchange=exchange)
        expected = {
            "eu.orders.created": {"eu.#", "*.orders.*", "#"},
            "eu": {"eu.#", "#"},
            "eu.orders": {"eu.#", "eu.*", "#"},
            "us.orders.created.late": {"us.#", "#"},
        }
        for routing_key, matches in expected.items():
            producer.publish({}, routing_key)
            assert routed(conn, queues) == matches, routing_key

    def test_a_headers_exchange_matches_all_or_any_headers(self, broker: Sandbox) -> None:
        conn = broker.connect()
        exchange = Exchange(broker.name("headers"), type="headers")
        wanted = {"format": "pdf", "type": "report"}
        queues = {
            mode: Queue(
                broker.name(mode),
                bindings=[Binding(exchange, arguments={"x-match": mode, **wanted})],
            )
            for mode in ("all", "any")
        }
        conn.declare(*queues.values())
        producer = conn.Producer(exchange=exchange)
        cases: list[tuple[dict[str, Any], set[str]]] = [
            ({"format": "pdf", "type": "report", "extra": 1}, {"all", "any"}),
            ({"format": "pdf", "type": "log"}, {"any"}),
            ({"type": "log"}, set()),
            ({}, set()),
        ]
        for headers, matches in cases:
            producer.publish({}, "ignored", headers=headers)
            assert routed(conn, queues) == matches, headers

    def test_publishing_to_an_undeclared_exchange_raises_not_found(self, broker: Sandbox) -> None:
        conn = broker.connect()
        with pytest.raises(NotFound):
            conn.Producer().publish({}, "key", exchange=broker.name("missing"))

    def test_a_batch_naming_a_missing_exchange_stores_none_of_its_messages(
        self, broker: Sandbox
    ) -> None:
        conn = broker.connect()
        queue = Queue(broker.name("q"))
        conn.declare(queue)
        producer = conn.Producer()
        good = producer.prepare({"n": 1}, queue.name)
        bad = producer.prepare({"n": 2}, "key", exchange=broker.name("missing"))
        with pytest.raises(NotFound):
            producer.send([good, bad])
        assert lengths(conn, queue) == [0]

    def test_binding_and_unbinding_change_where_messages_go(self, broker: Sandbox) -> None:
        conn = broker.connect()
        exchange = Exchange(broker.name("fanout"), type="fanout")
        queue = Queue(broker.name("q"))
        conn.declare(exchange, queue)
        producer = conn.Producer(exchange=exchange)
        conn.transport.bind(queue.name, Binding(exchange))
        producer.publish({"n": 1}, "")
        conn.transport.unbind(queue.name, Binding(exchange))
        producer.publish({"n": 2}, "")
        assert bodies(take_ready(conn, queue)) == [{"n": 1}]

    def test_deleting_a_queue_or_exchange_removes_it_and_its_messages(
        self, broker: Sandbox
    ) -> None:
        conn = broker.connect()
        exchange = Exchange(broker.name("direct"))
        queue = Queue(broker.name("q"), exchange)
        put(conn, queue, 1, 2)
        conn.transport.delete_queue(queue.name)
        conn.transport.delete_exchange(exchange.name)
        with pytest.raises(NotFound):
            conn.Producer().publish({}, queue.name, exchange=exchange.name)
        fresh = broker.connect()
        fresh.declare(queue)
        assert take_ready(fresh, queue) == []

    # -- what travels ---------------------------------------------------------------------
    def test_headers_and_properties_arrive_as_they_were_sent(self, broker: Sandbox) -> None:
        conn = broker.connect()
        queue = Queue(broker.name("q"))
        headers = {"task": "add", "retries": 3, "nested": {"args": [1, "two", None]}}
        put(
            conn,
            queue,
            {"n": 1},
            headers=headers,
            correlation_id="corr-1",
            reply_to="replies",
            message_id="mid-1",
            priority=3,
            expiration=60.0,
            timestamp=1_700_000_000.5,
        )
        message = take_one(conn, queue)
        assert dict(message.headers) == headers
        p = message.properties
        assert (p.content_type, p.content_encoding) == ("application/json", "utf-8")
        assert (p.correlation_id, p.reply_to, p.message_id) == ("corr-1", "replies", "mid-1")
        assert (p.priority, p.delivery_mode, p.timestamp) == (3, 2, 1_700_000_000.5)
        assert p.expiration == pytest.approx(60.0)
        assert message.delivery_info == {
            "exchange": "",
            "routing_key": queue.name,
            "queue": queue.name,
            "redelivered": False,
            "delivery_tag": message.delivery_tag,
        }

    def test_a_binary_body_arrives_byte_for_byte(self, broker: Sandbox) -> None:
        conn = broker.connect()
        queue = Queue(broker.name("q"))
        payload = bytes(range(256)) * 4
        put(conn, queue, payload, content_type="application/data", content_encoding="binary")
        message = take_one(conn, queue)
        assert message.body == payload
        assert message.decode() == payload

    @pytest.mark.parametrize("codec", sorted(COMPRESSIONS))
    def test_a_compressed_message_round_trips(self, broker: Sandbox, codec: str) -> None:
        conn = broker.connect()
        queue = Queue(broker.name("q"))
        body = {"text": "celeriac " * 200}
        put(conn, queue, body, compression=codec)
        message = take_one(conn, queue)
        mime, decompress = COMPRESSIONS[codec]
        assert message.headers["compression"] == mime
        assert json.loads(decompress(message.body)) == body
        assert message.decode() == body

    # -- settling -------------------------------------------------------------------------
    def test_an_acked_message_is_gone_for_every_connection(self, broker: Sandbox) -> None:
        conn = broker.connect()
        queue = Queue(broker.name("q"))
        put(conn, queue, {"n": 1})
        message = take_one(conn, queue)
        message.ack()
        conn.close()
        other = broker.connect()
        assert take_ready(other, queue) == []
        assert lengths(other, queue) == [0]

    @pytest.mark.parametrize(
        ("first", "second"),
        [("ack", "ack"), ("reject", "ack"), ("ack", "reject"), ("requeue", "ack")],
    )
    def test_a_message_cannot_be_settled_twice(
        self, broker: Sandbox, first: str, second: str
    ) -> None:
        conn = broker.connect()
        queue = Queue(broker.name("q"))
        put(conn, queue, {"n": 1})
        message = take_one(conn, queue)
        getattr(message, first)()
        with pytest.raises(MessageStateError):
            getattr(message, second)()
        conn.close()
        # The refused settlement must not have reached the broker: the first one stands.
        assert lengths(broker.connect(), queue) == [1 if first == "requeue" else 0]

    def test_a_requeued_message_comes_back_at_once_marked_redelivered(
        self, broker: Sandbox
    ) -> None:
        conn = broker.connect()
        queue = Queue(broker.name("q"))
        put(conn, queue, {"n": 1})
        message = take_one(conn, queue)
        assert message.redelivered is False
        message.reject(requeue=True)
        (again,) = take_ready(conn, queue)
        assert again.redelivered is True
        assert again.delivery_info["redelivered"] is True
        assert again.decode() == {"n": 1}

    def test_a_deferred_message_is_hidden_until_its_time_then_delivered(
        self, broker: Sandbox
    ) -> None:
        conn = broker.connect()
        queue = Queue(broker.name("q"), delivery_limit=0)
        put(conn, queue, {"n": 1})
        put(conn, queue, {"n": 2})
        first = take_one(conn, queue)
        conn.transport.defer([(first.delivery_tag, time.time() + 0.3)])
        (second,) = take_ready(conn, queue)
        assert second.decode() == {"n": 2}
        second.ack()
        assert take_ready(conn, queue) == []
        time.sleep(0.45)
        # Not counted as a failed delivery: delivery_limit=0 would dead-letter it.
        (again,) = take_ready(conn, queue)
        assert again.decode() == {"n": 1}
        again.ack()

    def test_purge_removes_deferred_messages_too(self, broker: Sandbox) -> None:
        conn = broker.connect()
        queue = Queue(broker.name("q"))
        put(conn, queue, "later")
        message = take_one(conn, queue)
        conn.transport.defer([(message.delivery_tag, time.time() + 0.2)])
        assert conn.transport.purge(queue.name) == 1
        time.sleep(0.3)
        assert take_ready(conn, queue) == []

    def test_a_rejected_message_without_dead_letter_exchange_is_dropped(
        self, broker: Sandbox
    ) -> None:
        conn = broker.connect()
        queue = Queue(broker.name("q"))
        put(conn, queue, {"n": 1})
        message = take_one(conn, queue)
        message.reject(requeue=False)
        conn.close()
        assert take_ready(broker.connect(), queue) == []

    def test_a_rejected_message_is_dead_lettered_with_reason_rejected(
        self, broker: Sandbox
    ) -> None:
        broker.requires("dead_lettering")
        conn = broker.connect()
        dlx, dlq = broker.dead_letter_queue()
        work = Queue(broker.name("work"), dead_letter_exchange=dlx)
        conn.declare(dlq, work)
        put(conn, work, {"n": 1})
        message = take_one(conn, work)
        message.reject()
        assert dead_letter(conn, dlq, work, "rejected").decode() == {"n": 1}
        assert take_ready(conn, work) == []

    def test_unacked_messages_come_back_redelivered_when_their_connection_closes(
        self, broker: Sandbox
    ) -> None:
        first = broker.connect()
        queue = Queue(broker.name("q"))
        put(first, queue, {"n": 1})
        message = take_one(first, queue)
        assert message.redelivered is False
        first.close()
        again = take_one(broker.connect(), queue)
        assert again.redelivered is True
        assert again.decode() == {"n": 1}

    def test_a_no_ack_consumer_settles_messages_on_receipt(self, broker: Sandbox) -> None:
        conn = broker.connect()
        queue = Queue(broker.name("q"))
        put(conn, queue, 1, 2)
        messages = take(conn, queue, 2, no_ack=True)
        assert bodies(messages) == [1, 2]
        assert all(message.acknowledged for message in messages)
        conn.close()
        assert take_ready(broker.connect(), queue) == []

    # -- prefetch -------------------------------------------------------------------------
    def test_a_consumer_holds_at_most_prefetch_count_unacked_messages(
        self, broker: Sandbox
    ) -> None:
        conn = broker.connect()
        queue = Queue(broker.name("q"))
        put(conn, queue, *range(5))
        with conn.Consumer(queue, prefetch_count=2) as consumer:
            held = consumer.fetch()
            assert len(held) == 2
            assert consumer.fetch() == []
            held[0].ack()
            assert len(consumer.fetch()) == 1
        assert lengths(conn, queue) == [2]

    def test_drain_events_delivers_nothing_while_the_prefetch_window_is_full(
        self, broker: Sandbox
    ) -> None:
        conn = broker.connect()
        queue = Queue(broker.name("q"))
        put(conn, queue, 1, 2, 3)
        held: list[Message] = []
        with conn.Consumer(queue, prefetch_count=2, callbacks=[lambda _b, m: held.append(m)]):
            while len(held) < 2:
                conn.drain_events(timeout=ARRIVAL_TIMEOUT)
            with pytest.raises(TimeoutError):
                conn.drain_events(timeout=0.1)
            assert len(held) == 2
            held[0].ack()
            conn.drain_events(timeout=ARRIVAL_TIMEOUT)
        assert bodies(held) == [1, 2, 3]

    def test_a_consumer_of_several_queues_is_served_from_each(self, broker: Sandbox) -> None:
        conn = broker.connect()
        first, second = Queue(broker.name("first")), Queue(broker.name("second"))
        put(conn, first, *["first"] * 3)
        put(conn, second, *["second"] * 3)
        seen = []
        with conn.Consumer([first, second], prefetch_count=1) as consumer:
            for _ in range(4):
                (message,) = consumer.fetch()
                seen.append(message.decode())
                message.ack()
        assert set(seen) == {"first", "second"}

    # -- queue policies -------------------------------------------------------------------
    def test_higher_priority_is_delivered_first_and_fifo_within_a_priority(
        self, broker: Sandbox
    ) -> None:
        broker.requires("priorities")
        conn = broker.connect()
        queue = Queue(broker.name("q"), max_priority=9)
        priorities = [*range(10), 5, 9, 0, 5]
        random.Random(7).shuffle(priorities)
        for seq, priority in enumerate(priorities):
            put(conn, queue, {"p": priority, "seq": seq}, priority=priority)
        got = bodies(take(conn, queue, len(priorities)))
        assert got == sorted(got, key=lambda body: (-body["p"], body["seq"]))
        assert len(got) == len(priorities)

    def test_a_message_past_its_expiration_is_not_delivered(self, broker: Sandbox) -> None:
        broker.requires("message_ttl")
        conn = broker.connect()
        queue = Queue(broker.name("q"))
        put(conn, queue, "short", expiration=TTL)
        put(conn, queue, "long", expiration=60)
        put(conn, queue, "forever")
        time.sleep(PAST_TTL)
        assert bodies(take_ready(conn, queue)) == ["long", "forever"]

    def test_a_queue_message_ttl_expires_its_messages(self, broker: Sandbox) -> None:
        broker.requires("message_ttl")
        conn = broker.connect()
        queue = Queue(broker.name("q"), message_ttl=0.15)
        put(conn, queue, "old")
        time.sleep(0.25)
        put(conn, queue, "new")
        assert bodies(take_ready(conn, queue)) == ["new"]

    @pytest.mark.parametrize("ttl_on", ["message", "queue"])
    def test_expired_messages_are_dead_lettered_with_reason_expired(
        self, broker: Sandbox, ttl_on: str
    ) -> None:
        broker.requires("message_ttl", "dead_lettering")
        conn = broker.connect()
        dlx, dlq = broker.dead_letter_queue()
        queue_ttl = TTL if ttl_on == "queue" else None
        work = Queue(broker.name("work"), dead_letter_exchange=dlx, message_ttl=queue_ttl)
        conn.declare(dlq, work)
        put(conn, work, "stale", expiration=TTL if ttl_on == "message" else None)
        time.sleep(PAST_TTL)
        assert take_ready(conn, work) == []
        dead = dead_letter(conn, dlq, work, "expired")
        assert dead.decode() == "stale"
        # It must not expire again in the dead-letter queue (RabbitMQ drops the expiration).
        assert dead.properties.expiration is None

    @pytest.mark.parametrize("ttl_on", ["message", "queue"])
    def test_a_delay_queue_dead_letters_expired_messages_without_a_consumer(
        self, broker: Sandbox, ttl_on: str
    ) -> None:
        # The delayed-retry pattern: nobody consumes "wait"; expiry alone moves messages on.
        broker.requires("message_ttl", "dead_lettering")
        conn = broker.connect()
        dlx, dlq = broker.dead_letter_queue()
        queue_ttl = TTL if ttl_on == "queue" else None
        wait = Queue(broker.name("wait"), dead_letter_exchange=dlx, message_ttl=queue_ttl)
        conn.declare(dlq, wait)
        put(conn, wait, "later", expiration=TTL if ttl_on == "message" else None)
        assert dead_letter(conn, dlq, wait, "expired").decode() == "later"
        assert lengths(conn, wait) == [0]

    def test_a_message_requeued_past_its_delivery_limit_is_dead_lettered(
        self, broker: Sandbox
    ) -> None:
        broker.requires("delivery_limit", "dead_lettering")
        conn = broker.connect()
        dlx, dlq = broker.dead_letter_queue()
        work = Queue(broker.name("work"), dead_letter_exchange=dlx, delivery_limit=1)
        conn.declare(dlq, work)
        put(conn, work, "poison")
        for _ in range(2):  # the first delivery, and delivery_limit more
            message = take_one(conn, work)
            message.requeue()
        assert take_ready(conn, work) == []
        assert dead_letter(conn, dlq, work, "delivery_limit").decode() == "poison"

    @pytest.mark.parametrize("with_dlx", [False, True], ids=["dropped", "dead-lettered"])
    def test_a_full_queue_drops_its_oldest_messages_first(
        self, broker: Sandbox, with_dlx: bool
    ) -> None:
        broker.requires("max_length", *(["dead_lettering"] if with_dlx else []))
        conn = broker.connect()
        dlx, dlq = broker.dead_letter_queue()
        work = Queue(
            broker.name("work"), max_length=2, dead_letter_exchange=dlx if with_dlx else None
        )
        conn.declare(dlq, work)
        put(conn, work, 1, 2, 3, 4)
        assert lengths(conn, work) == [2]
        assert bodies(take_ready(conn, work)) == [3, 4]
        dead = take_ready(conn, dlq)
        assert bodies(dead) == ([1, 2] if with_dlx else [])
        assert {m.headers["x-death"][0]["reason"] for m in dead} <= {"maxlen"}

    def test_purge_empties_the_ready_messages_and_returns_how_many(self, broker: Sandbox) -> None:
        conn = broker.connect()
        queue = Queue(broker.name("q"))
        put(conn, queue, 1, 2, 3)
        held = take_one(conn, queue)
        assert conn.transport.purge(queue.name) == 2
        assert take_ready(conn, queue) == []
        held.requeue()  # purge leaves messages held by consumers alone
        assert lengths(conn, queue) == [1]

    def test_queue_length_counts_ready_messages_only(self, broker: Sandbox) -> None:
        conn = broker.connect()
        queue = Queue(broker.name("q"))
        put(conn, queue, 1, 2, 3)
        assert lengths(conn, queue) == [3]
        first, second = take(conn, queue, 2)
        assert lengths(conn, queue) == [1]
        first.ack()
        second.requeue()
        assert lengths(conn, queue) == [2]

    # -- lifetimes ------------------------------------------------------------------------
    def test_messages_and_topology_outlive_the_connection_that_made_them(
        self, broker: Sandbox
    ) -> None:
        exchange = Exchange(broker.name("orders"), type="topic")
        queue = Queue(broker.name("eu"), exchange, routing_key="eu.#")
        publisher = broker.connect()
        publisher.Producer(exchange=exchange).publish({"n": 1}, "eu.orders", declare=[queue])
        publisher.close()
        later = broker.connect()
        later.Producer().publish({"n": 2}, "eu.refunds", exchange=exchange.name)
        assert bodies(take(later, queue, 2)) == [{"n": 1}, {"n": 2}]

    @pytest.mark.parametrize("flag", ["exclusive", "auto_delete"])
    def test_a_private_queue_goes_when_its_connection_closes(
        self, broker: Sandbox, flag: str
    ) -> None:
        exchange = Exchange(broker.name("events"), type="fanout")
        queue = Queue(
            broker.name("private"),
            exchange,
            exclusive=flag == "exclusive",
            auto_delete=flag == "auto_delete",
        )
        owner = broker.connect()
        owner.Producer(exchange=exchange).publish({"n": 1}, "", declare=[queue])
        assert lengths(owner, queue) == [1]
        owner.close()
        other = broker.connect()
        other.Producer(exchange=exchange).publish({"n": 2}, "")
        other.Producer().publish({"n": 3}, queue.name)
        assert lengths(other, queue) == [0]

    # -- draining -------------------------------------------------------------------------
    def test_drain_events_passes_the_decoded_body_and_the_message_to_callbacks(
        self, broker: Sandbox
    ) -> None:
        conn = broker.connect()
        queue = Queue(broker.name("q"))
        put(conn, queue, {"n": 1})
        first: list[tuple[Any, Message]] = []
        second: list[Any] = []
        callbacks = [lambda b, m: first.append((b, m)), lambda b, _m: second.append(b)]
        with conn.Consumer(queue, callbacks=callbacks):
            conn.drain_events(timeout=ARRIVAL_TIMEOUT)
        ((body, message),) = first
        assert body == {"n": 1}
        assert second == [{"n": 1}]
        assert message.delivery_info["queue"] == queue.name
        assert not message.acknowledged
        message.ack()

    def test_drain_events_with_nothing_ready_times_out_promptly(self, broker: Sandbox) -> None:
        conn = broker.connect()
        queue = Queue(broker.name("q"))
        with conn.Consumer(queue, callbacks=[lambda _b, _m: None]):
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                conn.drain_events(timeout=0.1)
        assert time.monotonic() - start < 0.1 + PROMPT / 2

    def test_drain_events_wakes_promptly_for_a_message_from_another_thread(
        self, broker: Sandbox
    ) -> None:
        conn = broker.connect()
        queue = Queue(broker.name("q"))
        received: list[Any] = []

        def publish_soon() -> None:
            time.sleep(0.1)
            with Connection(broker.url) as publisher:
                publisher.Producer().publish({"n": 1}, queue.name)

        with conn.Consumer(queue, callbacks=[lambda b, _m: received.append(b)]):
            thread = threading.Thread(target=publish_soon)
            start = time.monotonic()
            thread.start()
            conn.drain_events(timeout=5)
            elapsed = time.monotonic() - start
            thread.join()
        assert received == [{"n": 1}]
        assert elapsed < PROMPT

    # -- decode safety --------------------------------------------------------------------
    def test_a_disallowed_content_type_is_dead_lettered_and_never_reaches_callbacks(
        self, broker: Sandbox, caplog: pytest.LogCaptureFixture
    ) -> None:
        broker.requires("dead_lettering")
        conn = broker.connect()
        dlx, dlq = broker.dead_letter_queue()
        work = Queue(broker.name("work"), dead_letter_exchange=dlx)
        conn.declare(dlq, work)
        pickled = pickle.dumps({"n": 1})
        content = {"content_type": "application/x-python-serialize", "content_encoding": "binary"}
        put(conn, work, pickled, correlation_id="pickled-1", **content)
        received: list[Any] = []
        with (
            caplog.at_level(logging.ERROR, logger="celeriac.messaging.consumer"),
            conn.Consumer(work, callbacks=[lambda b, _m: received.append(b)]),
        ):
            conn.drain_events(timeout=ARRIVAL_TIMEOUT)
            assert received == []
            put(conn, work, {"n": 2})
            conn.drain_events(timeout=ARRIVAL_TIMEOUT)
        assert received == [{"n": 2}]
        assert "pickled-1" in caplog.text
        assert dead_letter(conn, dlq, work, "rejected").body == pickled

    @pytest.mark.parametrize("corruption", sorted(CORRUPT))
    def test_a_corrupt_body_is_dead_lettered_and_the_consumer_keeps_working(
        self, broker: Sandbox, corruption: str
    ) -> None:
        broker.requires("dead_lettering")
        conn = broker.connect()
        dlx, dlq = broker.dead_letter_queue()
        work = Queue(broker.name("work"), dead_letter_exchange=dlx)
        conn.declare(dlq, work)
        headers, body = CORRUPT[corruption]
        put(conn, work, body, content_type="application/json", headers=headers)
        put(conn, work, {"n": 2})
        received: list[Any] = []
        with conn.Consumer(work, callbacks=[lambda b, _m: received.append(b)]):
            while not received:
                conn.drain_events(timeout=ARRIVAL_TIMEOUT)
        assert received == [{"n": 2}]
        assert dead_letter(conn, dlq, work, "rejected").body == body

    def test_on_decode_error_receives_undecodable_messages_instead(self, broker: Sandbox) -> None:
        conn = broker.connect()
        queue = Queue(broker.name("q"))
        put(conn, queue, pickle.dumps(1), content_type="application/x-python-serialize")
        received: list[Any] = []
        errors: list[tuple[Message, Exception]] = []
        with conn.Consumer(
            queue,
            callbacks=[lambda b, _m: received.append(b)],
            on_decode_error=lambda m, exc: errors.append((m, exc)),
        ):
            conn.drain_events(timeout=ARRIVAL_TIMEOUT)
        ((message, exc),) = errors
        assert received == []
        assert isinstance(exc, ContentDisallowed)
        assert not message.acknowledged  # settling it is now the handler's decision
        message.ack()

    # -- the asyncio face -----------------------------------------------------------------
    def test_apublish_and_adrain_events_work_like_publish_and_drain_events(
        self, broker: Sandbox
    ) -> None:
        conn = broker.connect()
        queue = Queue(broker.name("q"))
        received: list[tuple[Any, Message]] = []

        async def scenario() -> None:
            await conn.Producer().apublish({"n": 1}, queue.name, declare=[queue])
            with conn.Consumer(queue, callbacks=[lambda b, m: received.append((b, m))]):
                await conn.adrain_events(timeout=ARRIVAL_TIMEOUT)
            await received[0][1].aack()

        asyncio.run(scenario())
        assert [body for body, _ in received] == [{"n": 1}]
        conn.close()
        assert take_ready(broker.connect(), queue) == []

    def test_afetch_areject_and_aack_settle_like_their_sync_twins(self, broker: Sandbox) -> None:
        conn = broker.connect()
        queue = Queue(broker.name("q"))
        put(conn, queue, {"n": 1})

        async def scenario() -> list[bool]:
            flags = []
            with conn.Consumer(queue, prefetch_count=1) as consumer:
                (message,) = await consumer.afetch()
                flags.append(message.redelivered)
                await message.areject(requeue=True)
                (message,) = await consumer.afetch()
                flags.append(message.redelivered)
                await message.aack()
                with pytest.raises(MessageStateError):
                    await message.aack()
            return flags

        assert asyncio.run(scenario()) == [False, True]
        conn.close()
        assert take_ready(broker.connect(), queue) == []

    def test_adrain_events_with_nothing_ready_times_out(self, broker: Sandbox) -> None:
        conn = broker.connect()
        queue = Queue(broker.name("q"))

        async def scenario() -> None:
            with conn.Consumer(queue, callbacks=[lambda _b, _m: None]):
                await conn.adrain_events(timeout=0.1)

        start = time.monotonic()
        with pytest.raises(TimeoutError):
            asyncio.run(scenario())
        assert time.monotonic() - start < 0.1 + PROMPT / 2

    def test_adrain_events_wakes_promptly_for_a_message_from_another_task(
        self, broker: Sandbox
    ) -> None:
        conn, publisher = broker.connect(), broker.connect()
        queue = Queue(broker.name("q"))
        received: list[Any] = []

        async def publish_soon() -> None:
            await asyncio.sleep(0.1)
            await publisher.Producer().apublish({"n": 1}, queue.name)

        async def scenario() -> float:
            with conn.Consumer(queue, callbacks=[lambda b, _m: received.append(b)]):
                start = time.monotonic()
                task = asyncio.create_task(publish_soon())
                await conn.adrain_events(timeout=5)
                elapsed = time.monotonic() - start
                await task
            return elapsed

        assert asyncio.run(scenario()) < PROMPT
        assert received == [{"n": 1}]
