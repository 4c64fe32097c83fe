"""The RabbitMQ transport beyond the shared contract: confirms, exact queue arguments,
priorities pushed with a window, Celery's float headers, deferral through delay buckets,
a crashed consumer's messages, recovery from a channel error, and window changes.

The broker restart tests are in ``test_amqp_restart.py`` (run rarely: the server is shared).
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pika
import pytest

from celeriac.exceptions import ImproperlyConfigured, NotFound
from celeriac.messaging import Connection, Exchange, Message, Queue
from celeriac.testing import service_url
from celeriac.testing.contract import bodies, put, take
from celeriac.transports import amqp_codec, amqp_wire
from celeriac.transports.amqp import AMQPTransport

# The `spawn` fixture lives in tests/conftest.py.
Spawn = Callable[..., subprocess.Popen[str]]
SHARED_URL = "amqp://guest:guest@127.0.0.1:5672//"


@pytest.fixture
def url() -> str:
    return service_url(SHARED_URL)


@pytest.fixture
def names(url: str) -> Iterator[Callable[[str], str]]:
    """Unique queue/exchange names; the queues, their delay buckets and exchanges go after."""
    made: list[str] = []

    def name(prefix: str) -> str:
        made.append(f"test-amqp-{prefix}-{uuid.uuid4().hex[:10]}")
        return made[-1]

    yield name
    with Connection(url) as conn:
        for entity in made:
            conn.transport.delete_queue(entity)
            conn.transport.delete_exchange(entity)


@pytest.fixture
def raw(url: str) -> Iterator[Any]:
    """A plain pika channel, to see the broker as another client does."""
    connection = pika.BlockingConnection(amqp_wire.connection_parameters(url, {}))
    yield connection.channel()
    connection.close()


def test_the_registry_gives_amqp_urls_to_this_transport(url: str) -> None:
    for scheme in ("amqp", "pyamqp", "amqps"):
        assert Connection(f"{scheme}://guest@localhost//").transport_cls is AMQPTransport


def test_url_parts_become_connection_parameters() -> None:
    params = amqp_wire.connection_parameters(
        "amqp://user:p%40ss@broker.example:5673/my%2Fvhost", {"heartbeat": 10}
    )
    assert (params.host, params.port, params.virtual_host) == ("broker.example", 5673, "my/vhost")
    assert params.credentials.username == "user"
    assert params.credentials.password == "p@ss"
    assert params.heartbeat == 10
    assert amqp_wire.connection_parameters("amqp://h//", {}).virtual_host == "/"
    assert amqp_wire.connection_parameters("amqp://h", {}).virtual_host == "/"
    secure = amqp_wire.connection_parameters("amqps://h//", {})
    assert secure.port == 5671
    assert secure.ssl_options is not None


def test_header_tables_round_trip_every_amqp_type() -> None:
    table = {
        "s": "text é",
        "none": None,
        "yes": True,
        "small": -5,
        "big": 2**40,
        "float": 1.5,
        "tuple": (1.5, None),
        "nested": {"args": [1, "two", {"x": []}]},
        "bytes": b"\xff\x00",
        "decimal": Decimal("12.34"),
        "when": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
    }
    decoded, end = amqp_codec.decode_table(amqp_codec.encode_table(table), 0)
    assert decoded == {**table, "tuple": [1.5, None]}
    assert end == len(amqp_codec.encode_table(table))


def test_a_queue_declares_exactly_the_arguments_it_asks_for() -> None:
    assert amqp_wire.queue_arguments(Queue("celery", Exchange("celery"))) == {}
    queue = Queue(
        "work",
        max_priority=9,
        message_ttl=1.5,
        expires=60,
        dead_letter_exchange="dlx",
        dead_letter_routing_key="dead",
        max_length=100,
    )
    assert amqp_wire.queue_arguments(queue) == {
        "x-max-priority": 9,
        "x-message-ttl": 1500,
        "x-expires": 60_000,
        "x-dead-letter-exchange": "dlx",
        "x-dead-letter-routing-key": "dead",
        "x-max-length": 100,
    }
    limited = amqp_wire.queue_arguments(Queue("work", delivery_limit=3))
    assert limited == {"x-queue-type": "quorum", "x-delivery-limit": 3}
    assert amqp_wire.queue_arguments(Queue("work"), "quorum") == {"x-queue-type": "quorum"}
    # quorum queues are for durable shared queues only; a private queue stays classic
    assert amqp_wire.queue_arguments(Queue("reply", auto_delete=True), "quorum") == {}
    with pytest.raises(ImproperlyConfigured, match="quorum"):
        amqp_wire.queue_arguments(Queue("work", delivery_limit=3, max_priority=5))


def test_we_share_a_queue_celery_declared_and_a_mismatch_is_a_clear_error(
    url: str, names: Callable[[str], str], raw: Any
) -> None:
    name = names("celery")
    # What Celery declares for its default queue: durable exchange and queue, no arguments.
    raw.exchange_declare(name, exchange_type="direct", durable=True)
    raw.queue_declare(name, durable=True)
    raw.queue_bind(name, name, routing_key=name)
    with Connection(url) as conn:
        queue = Queue(name, Exchange(name))
        conn.declare(queue)  # the same arguments: no 406
        conn.Producer().publish({"n": 1}, name, exchange=name)
        with pytest.raises(ImproperlyConfigured, match="x-max-priority"):
            conn.transport.declare_queue(Queue(name, max_priority=5))
        # The refused declare closed a channel; the session carries on.
        conn.Producer().publish({"n": 2}, name, exchange=name)
        assert bodies(take(conn, queue, 2)) == [{"n": 1}, {"n": 2}]


def test_with_confirms_a_publish_the_broker_refuses_raises(
    url: str, names: Callable[[str], str], raw: Any
) -> None:
    name = names("full")
    raw.queue_declare(
        name, durable=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    with Connection(url, {"confirm_publish": True}) as conn:
        producer = conn.Producer()
        producer.publish({"n": 1}, name)
        with pytest.raises(ConnectionError, match="nack"):
            producer.publish({"n": 2}, name)
        # A batch is confirmed as a whole: one refused message fails it.
        with pytest.raises(ConnectionError, match="nack"):
            producer.send([producer.prepare({"n": i}, name) for i in range(3, 6)])
    with Connection(url) as conn:
        conn.Producer().publish({"n": 6}, name)  # without confirms a refusal goes unnoticed
        assert conn.transport.queue_length(name) == 1
    _method, _props, body = raw.basic_get(name, auto_ack=True)
    assert body == b'{"n":1}'


def test_a_confirmed_batch_is_on_the_broker_when_send_returns(
    url: str, names: Callable[[str], str], raw: Any
) -> None:
    queue = Queue(names("batch"))
    with Connection(url, {"confirm_publish": True}) as conn:
        conn.declare(queue)
        producer = conn.Producer()
        producer.send([producer.prepare({"n": i}, queue.name) for i in range(500)])
        # Another client, on its own connection, counts all of them at once.
        assert raw.queue_declare(queue.name, passive=True).method.message_count == 500


def test_a_pushed_priority_queue_hands_over_the_highest_priority_first(
    url: str, names: Callable[[str], str], raw: Any
) -> None:
    queue = Queue(names("prio"), max_priority=9)
    with Connection(url) as conn:
        for priority in (1, 5, 9, 3, 9, 0):
            put(conn, queue, {"p": priority}, priority=priority)
        assert conn.transport.queue_length(queue.name) == 6
        with conn.Consumer(queue, prefetch_count=10) as consumer:
            got: list[Message] = []
            deadline = time.monotonic() + 5
            while len(got) < 6 and time.monotonic() < deadline:
                got += consumer.fetch()
        assert [m.decode()["p"] for m in got] == [9, 9, 5, 3, 1, 0]
        for message in got:
            message.ack()


def test_float_and_tuple_headers_arrive_as_celery_sent_them(
    url: str, names: Callable[[str], str]
) -> None:
    queue = Queue(names("headers"))
    headers = {"timelimit": (1.5, None), "countdown": 0.25, "big": 2**40, "flag": True}
    with Connection(url) as conn:
        put(conn, queue, {}, headers=headers)
        (message,) = take(conn, queue)
        assert dict(message.headers) == {**headers, "timelimit": [1.5, None]}


def test_an_undeclared_queue_is_not_found_and_the_session_goes_on(
    url: str, names: Callable[[str], str]
) -> None:
    missing, queue = names("missing"), Queue(names("q"))
    with Connection(url) as conn:
        put(conn, queue, 1)
        with pytest.raises(NotFound):
            conn.transport.fetch([missing], 1)
        assert conn.transport.queue_length(missing) == 0
        assert bodies(take(conn, queue)) == [1]


def test_a_deferred_message_waits_in_delay_buckets_and_is_not_delivered_early(
    url: str, names: Callable[[str], str], raw: Any
) -> None:
    queue = Queue(names("eta"))
    with Connection(url) as conn:
        put(conn, queue, "later")
        (message,) = take(conn, queue)
        due = time.time() + 0.7
        conn.transport.defer([(message.delivery_tag, due)])
        # 0.7 s waits first in the 512 ms bucket, which dead-letters back to the queue.
        bucket = raw.queue_declare(amqp_wire.bucket_name(9, queue.name), passive=True)
        assert bucket.method.message_count == 1
        assert conn.transport.queue_length(queue.name) == 0
        with conn.Consumer(queue, prefetch_count=5) as consumer:
            got: list[Message] = []
            while not got and time.time() < due + 3:
                got = consumer.fetch()
                if not got:
                    conn.transport.wait(0.05)
            arrived = time.time()
        assert bodies(got) == ["later"]
        assert due - 0.002 <= arrived < due + 0.5
        # What the buckets added on the way is gone: the message reads as it was sent.
        assert not any(
            k.startswith(("x-death", "x-first-death", "x-celeriac")) for k in got[0].headers
        )
        got[0].ack()


def test_a_killed_consumers_unacked_messages_come_back_redelivered(
    url: str, names: Callable[[str], str], spawn: Spawn
) -> None:
    queue = Queue(names("crash"))
    with Connection(url) as conn:
        put(conn, queue, *range(5))
    holder = spawn(
        """
        import sys
        from celeriac.messaging import Connection, Queue
        conn = Connection(sys.argv[1])
        consumer = conn.Consumer(Queue(sys.argv[2]), prefetch_count=10)
        consumer.consume()
        held = []
        while len(held) < 5:
            held += consumer.fetch()
            conn.transport.wait(0.1)
        print("holding", len(held), flush=True)
        sys.stdin.read()
        """,
        url,
        queue.name,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().split() == ["holding", "5"]
    with Connection(url) as conn:
        assert conn.transport.queue_length(queue.name) == 0
        holder.kill()
        holder.wait(10)
        got = take(conn, queue, 5, timeout=10)
        assert sorted(bodies(got)) == [0, 1, 2, 3, 4]
        assert all(message.redelivered for message in got)
        for message in got:
            message.ack()


def test_acks_of_a_run_at_the_head_settle_with_one_multiple_frame(
    url: str, names: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = Queue(names("acks"))
    with Connection(url) as conn:
        put(conn, queue, *range(6))
        messages = take(conn, queue, 6)
        frames: list[tuple[int, bool]] = []
        channel = conn.transport.session.main.channel
        assert channel is not None
        real_ack = channel.basic_ack

        def spy(tag: int, multiple: bool = False) -> None:
            frames.append((tag, multiple))
            real_ack(tag, multiple)

        monkeypatch.setattr(channel, "basic_ack", spy)
        # Ack the 1st, 2nd, 3rd and 5th: the first three are a run at the head (one
        # multiple frame); the 5th must not settle the 4th, still held.
        conn.transport.ack([messages[i].delivery_tag for i in (0, 1, 2, 4)])
        conn.transport.reject([messages[i].delivery_tag for i in (3, 5)], requeue=True)
        assert lengths_eventually(conn, queue, 2)
        tags = [m.delivery_tag & ((1 << 64) - 1) for m in messages]
        assert frames == [(tags[2], True), (tags[4], False)]


def lengths_eventually(conn: Connection, queue: Queue, expected: int) -> bool:
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if conn.transport.queue_length(queue.name) == expected:
            return True
        time.sleep(0.02)
    return False


def test_a_forked_child_publishes_on_a_session_of_its_own(
    url: str, names: Callable[[str], str]
) -> None:
    queue = Queue(names("fork"))
    with Connection(url) as conn:
        put(conn, queue, "parent")
        with warnings.catch_warnings():
            # Python 3.12+ warns about forking a process that has threads; this is the case
            # the transport handles (its network thread does not survive the fork).
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            code = 1
            try:
                put(conn, queue, "child")
                conn.close()
                code = 0
            finally:
                os._exit(code)
        _pid, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert sorted(bodies(take(conn, queue, 2))) == ["child", "parent"]


def test_a_new_window_keeps_what_the_old_consumer_delivered_and_loses_nothing(
    url: str, names: Callable[[str], str]
) -> None:
    queue = Queue(names("window"))
    with Connection(url) as conn:
        put(conn, queue, *range(12))
        consumer = conn.Consumer(queue, prefetch_count=2).consume()
        held: list[Message] = []
        deadline = time.monotonic() + 5
        while len(held) < 2 and time.monotonic() < deadline:
            held += consumer.fetch()
        assert len(held) == 2
        for window in (5, 3, 8):  # each change starts a new consumer on the channel
            consumer.qos(window)
        got: list[Message] = []
        while len(held) + len(got) < 12 and time.monotonic() < deadline:
            batch = consumer.fetch()
            for message in batch:
                message.ack()
            got += batch
        for message in held:
            message.ack()  # deliveries of the first consumer settle after it was cancelled
        consumer.cancel()
        # In order and none redelivered: nothing bounced back to the queue on the way.
        assert bodies(held + got) == list(range(12))
        assert [m.decode() for m in held + got if m.redelivered] == []
        assert lengths_eventually(conn, queue, 0)
