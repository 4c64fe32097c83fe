"""The Redis transport's own behaviour: key prefixes, options, errors, re-routing, recovery."""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from celeriac.exceptions import ImproperlyConfigured, NotFound, OperationalError
from celeriac.messaging import Binding, Connection, Exchange, Queue
from celeriac.testing import service_url
from celeriac.transports.redis import RedisTransport
from celeriac.transports.redis_layout import FETCH
from celeriac.transports.redis_link import Link

SHARED_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture
def url() -> str:
    return service_url(SHARED_URL)


@pytest.fixture
def client(url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url)
    yield client
    client.close()


@pytest.fixture
def prefix(client: redis.Redis) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}:"
    yield name
    keys = list(client.scan_iter(match=f"{name}*", count=1000))
    if keys:
        client.delete(*keys)


def keys_of(client: redis.Redis, prefix: str) -> set[str]:
    return {key.decode() for key in client.scan_iter(match=f"{prefix}*", count=1000)}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_global_keyprefix_keeps_applications_apart(
    url: str, client: redis.Redis, prefix: str
) -> None:
    other = f"{prefix}other:"
    with (
        Connection(url, {"global_keyprefix": prefix}) as mine,
        Connection(f"{url}?global_keyprefix={other}") as theirs,
    ):
        queue = Queue("shared-name")
        mine.Producer().publish("mine", queue.name, declare=[queue])
        theirs.declare(queue)
        assert theirs.transport.queue_length(queue.name) == 0
        assert mine.transport.queue_length(queue.name) == 1
    theirs_keys = keys_of(client, other)
    mine_keys = keys_of(client, prefix) - theirs_keys
    assert f"{prefix}celeriac:ready:shared-name" in mine_keys
    assert f"{other}celeriac:queues" in theirs_keys
    assert all(key.startswith(f"{prefix}celeriac:") for key in mine_keys)


def test_a_closed_session_leaves_only_the_two_counters_behind(
    url: str, client: redis.Redis, prefix: str
) -> None:
    options = {"global_keyprefix": prefix}
    exchange = Exchange("events", type="topic")
    private = Queue("private", exchange, routing_key="#", auto_delete=True)
    work = Queue("work", max_priority=9, message_ttl=60, max_length=10)
    with Connection(url, options) as conn:
        conn.Producer().publish("x", "work", declare=[work, private], priority=3)
        conn.Producer(exchange=exchange).publish("y", "a.b")
        held = conn.Consumer(work, prefetch_count=0)
        held.consume()
        (message,) = held.fetch()
        message.ack()
        conn.Consumer(private).fetch()  # leased, never settled: back to its queue on close
        conn.transport.delete_queue("work")
        conn.transport.delete_exchange("events")
    assert keys_of(client, prefix) == {f"{prefix}celeriac:topology", f"{prefix}celeriac:seq"}


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"lease_timeout": "soon"}, "not a number"),
        ({"heartbeat_interval": 0}, "must be positive"),
        ({"heartbeat_interval": 20}, "heartbeat_interval < connection_lost_timeout"),
        ({"connection_lost_timeout": 60}, "connection_lost_timeout <= lease_timeout"),
    ],
)
def test_unusable_options_are_refused_with_the_rule(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=match):
        Connection("redis://127.0.0.1:6379/15", options).connect()


def test_an_unreachable_server_raises_a_recoverable_error_without_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"redis://:s3cret-pw@127.0.0.1:{closed_port()}/0"
    with Connection(url) as conn:
        assert "s3cret" not in repr(conn.transport)
        with pytest.raises(RedisTransport.recoverable_errors) as raised:
            conn.Producer().publish("x", "work")
        assert "s3cret" not in str(raised.value)
        policy = {"max_retries": 2, "interval_start": 0, "interval_step": 0.01}
        with (
            caplog.at_level(logging.WARNING),
            pytest.raises(OperationalError, match=r"failed after 3 attempts") as exhausted,
        ):
            conn.Producer().publish("x", "work", retry=True, retry_policy=policy)
    assert "s3cret" not in str(exhausted.value)
    assert "s3cret" not in caplog.text


def test_an_unconfirmed_publish_routed_with_stale_bindings_is_routed_again(
    url: str, prefix: str
) -> None:
    options = {"global_keyprefix": prefix}
    exchange = Exchange("broadcast", type="fanout")
    first, late = Queue("first", exchange), Queue("late", exchange)
    with Connection(url, options) as publisher, Connection(url, options) as other:
        producer = publisher.Producer(exchange=exchange)
        producer.publish("before", "", declare=[first])  # caches the bindings
        other.declare(late)  # a binding the publisher does not know of
        producer.publish("after", "")
        # The publisher makes no further call: its reply is read in the background.
        deadline = time.monotonic() + 2
        while other.transport.queue_length("late") < 1:
            assert time.monotonic() < deadline, "the stale publish was not routed again"
            time.sleep(0.01)
        assert other.transport.queue_length("first") == 2


def test_messages_fetched_when_the_reply_was_lost_come_back_redelivered(
    url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = Queue("work")
    with Connection(url, {"global_keyprefix": prefix}) as conn:
        put = conn.Producer()
        for n in range(3):
            put.publish({"n": n}, "work", declare=[queue])
        run = Link._run

        def lose_the_fetch_reply(self: Link, script: Any, args: Any) -> Any:
            reply = run(self, script, args)
            if script.text == FETCH:  # it ran; the reply never arrives
                monkeypatch.setattr(Link, "_run", run)
                raise redis.ConnectionError("connection lost before the reply")
            return reply

        consumer = conn.Consumer(queue, prefetch_count=0)
        consumer.consume()
        monkeypatch.setattr(Link, "_run", lose_the_fetch_reply)
        with pytest.raises(redis.ConnectionError):
            consumer.fetch()
        got = consumer.fetch()
        assert sorted(m.decode()["n"] for m in got) == [0, 1, 2]
        assert all(m.redelivered for m in got)
        for message in got:
            message.ack()
        assert conn.transport.queue_length("work") == 0


def test_binding_to_a_missing_exchange_raises_not_found_and_creates_nothing(
    url: str, prefix: str
) -> None:
    with Connection(url, {"global_keyprefix": prefix}) as conn:
        transport = conn.transport
        conn.declare(Queue("q"))
        with pytest.raises(NotFound, match="no exchange 'nowhere'"):
            transport.bind("q", Binding(Exchange("nowhere")))
        with pytest.raises(NotFound, match="no exchange 'nowhere'"):
            transport.declare_queue(Queue("q2", bindings=[Binding(Exchange("nowhere"))]))
        conn.Producer().publish("to q2?", "q2")
        assert transport.queue_length("q2") == 0


def test_a_private_queue_declared_again_by_a_new_session_outlives_the_old_one(
    url: str, prefix: str
) -> None:
    # A worker restarted under the same name declares its private (pidbox) queue again
    # while its dead predecessor still owns it: ending the old session must not delete it.
    options = {"global_keyprefix": prefix}
    queue = Queue("worker1.pidbox", auto_delete=True)
    old, new = Connection(url, options), Connection(url, options)
    old.declare(queue)
    new.declare(queue)
    old.close()
    new.Producer().publish("ping", queue.name)
    assert new.transport.queue_length(queue.name) == 1
    new.close()
    with Connection(url, options) as later:
        later.Producer().publish("ping", queue.name)
        assert later.transport.queue_length(queue.name) == 0
