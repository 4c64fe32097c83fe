"""Auto-delete queues on RabbitMQ live as long as the connection that declared them.

RabbitMQ deletes an auto-delete queue when its last consumer is cancelled. The transport
consumes in ways the user does not see (watchers while waiting, a new consumer when a window
changes), so none of them may be the last consumer to go while the connection lives; the
queue still goes when the connection closes (the shared contract suite checks that).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pytest

from celeriac.messaging import Connection, Exchange, Message, Queue
from celeriac.testing import service_url
from celeriac.testing.contract import bodies
from celeriac.transports import amqp_wire

SHARED_URL = "amqp://guest:guest@127.0.0.1:5672//"


@pytest.fixture
def url() -> str:
    return service_url(SHARED_URL)


@pytest.fixture
def raw(url: str) -> Iterator[Any]:
    """A plain pika connection, to ask the broker whether a queue exists."""
    connection = pika.BlockingConnection(amqp_wire.connection_parameters(url, {}))
    yield connection
    connection.close()


def exists(raw: Any, name: str) -> bool:
    channel = raw.channel()
    try:
        channel.queue_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == 404
        return False
    channel.close()
    return True


def private_queue(prefix: str) -> Queue:
    name = f"test-amqp-{prefix}-{uuid.uuid4().hex[:10]}"
    return Queue(name, Exchange(name, type="fanout", auto_delete=True), auto_delete=True)


def send(conn: Connection, queue: Queue, *items: Any) -> None:
    """Publish ``items`` to ``queue`` (no declaring: the queue must still be there)."""
    producer = conn.Producer()
    for item in items:
        producer.publish(item, queue.name)


def fetch_within(conn: Connection, queue: Queue, consumer: Any, timeout: float = 5) -> list[Any]:
    """Fetch from ``consumer``, waiting on the transport between tries."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got: list[Message] = consumer.fetch()
        if got:
            return got
        conn.transport.wait(0.05)
    return []


def test_waiting_on_an_auto_delete_queue_read_without_a_window_keeps_it(url: str, raw: Any) -> None:
    # An event receiver's pattern: fetch (basic.get), wait (watchers), fetch again.
    queue = private_queue("ev")
    with Connection(url) as conn, conn.Consumer(queue, prefetch_count=0) as consumer:
        for round_ in range(3):
            assert consumer.fetch() == []
            conn.transport.wait(0.05)  # nothing arrives: the wait times out
            assert exists(raw, queue.name), f"gone after wait #{round_ + 1}"
        send(conn, queue, "after the waits")
        got = fetch_within(conn, queue, consumer)
        assert bodies(got) == ["after the waits"]
        got[0].ack()
    assert not exists(raw, queue.name)


def test_a_wait_that_receives_hands_the_message_over_and_keeps_the_queue(
    url: str, raw: Any
) -> None:
    queue = private_queue("watched")
    with Connection(url) as conn, conn.Consumer(queue, prefetch_count=0) as consumer:
        assert consumer.fetch() == []
        with Connection(url) as other:
            send(other, queue, 1, 2)
        got = fetch_within(conn, queue, consumer)
        got += fetch_within(conn, queue, consumer) if len(got) < 2 else []
        assert sorted(bodies(got)) == [1, 2]
        for message in got:
            message.ack()
        assert exists(raw, queue.name)


def test_changing_or_dropping_the_window_of_an_auto_delete_queue_keeps_it(
    url: str, raw: Any
) -> None:
    queue = private_queue("window")
    with Connection(url) as conn:
        consumer = conn.Consumer(queue, prefetch_count=2).consume()
        for window in (5, 1, 0, 3):
            consumer.qos(window)
            send(conn, queue, window)
            got = fetch_within(conn, queue, consumer)
            assert bodies(got) == [window]
            got[0].ack()
            assert exists(raw, queue.name), f"gone after the window became {window}"
        consumer.cancel()
        assert exists(raw, queue.name)
        send(conn, queue, "kept")
        with conn.Consumer(queue, prefetch_count=0) as later:
            got = fetch_within(conn, queue, later)
            assert bodies(got) == ["kept"]
            got[0].ack()
    assert not exists(raw, queue.name)


def test_deleting_a_watched_auto_delete_queue_and_declaring_it_again_works(
    url: str, raw: Any
) -> None:
    queue = private_queue("again")
    with Connection(url) as conn, conn.Consumer(queue, prefetch_count=0) as consumer:
        assert consumer.fetch() == []
        conn.transport.wait(0.05)
        conn.transport.delete_queue(queue.name)
        assert not exists(raw, queue.name)
        assert queue.exchange is not None  # an auto-delete exchange: gone with its binding
        conn.transport.declare_exchange(queue.exchange)
        conn.transport.declare_queue(queue)
        assert consumer.fetch() == []
        send(conn, queue, "new")
        began = time.monotonic()
        conn.transport.wait(5)  # the queue is watched again: the message ends the wait
        assert time.monotonic() - began < 2
        got = consumer.fetch()
        assert bodies(got) == ["new"]
        got[0].ack()
        assert exists(raw, queue.name)
