"""Retrying publishes on broker errors, and pools of connections and producers."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import pytest

from celeriac.exceptions import ImproperlyConfigured, LimitExceeded, NotFound, OperationalError
from celeriac.messaging import Connection, ConnectionPool, ProducerPool, Queue, RetryPolicy
from celeriac.transports import register_transport
from celeriac.transports.base import Outgoing
from celeriac.transports.memory import MemoryTransport

FAST = {"interval_start": 0, "interval_step": 0}


# -- the retry policy ---------------------------------------------------------------------
def test_the_default_policy_is_celerys() -> None:
    policy = RetryPolicy()
    assert (policy.max_retries, policy.interval_start) == (3, 0)
    assert (policy.interval_step, policy.interval_max) == (0.2, 1)


def test_intervals_grow_by_the_step_up_to_the_maximum() -> None:
    policy = RetryPolicy(max_retries=4, interval_start=0.1, interval_step=0.3, interval_max=0.5)
    assert list(policy.intervals()) == pytest.approx([0.1, 0.4, 0.5, 0.5])
    assert list(RetryPolicy(max_retries=0).intervals()) == []


def test_a_policy_without_max_retries_retries_forever() -> None:
    intervals = RetryPolicy(max_retries=None, interval_step=1, interval_max=2).intervals()
    assert list(itertools.islice(intervals, 100)) == [0, 1] + [2] * 98


def test_a_policy_from_a_dict_takes_the_defaults_for_missing_keys() -> None:
    assert RetryPolicy.from_mapping({"max_retries": 7}) == RetryPolicy(max_retries=7)
    assert RetryPolicy.from_mapping(None) == RetryPolicy()
    policy = RetryPolicy(max_retries=1)
    assert RetryPolicy.from_mapping(policy) is policy


def test_an_unknown_policy_key_is_refused_with_a_suggestion() -> None:
    with pytest.raises(ImproperlyConfigured, match="did you mean 'max_retries'"):
        RetryPolicy.from_mapping({"max_retry": 3})


# -- publishing with retries --------------------------------------------------------------
class FlakyTransport(MemoryTransport):
    """A memory transport whose first ``failures`` publishes raise ``ConnectionError``.

    The counters are class-level: a retry resets the connection, which makes a new session.
    """

    failures: ClassVar[int] = 0
    publish_calls: ClassVar[int] = 0
    sessions: ClassVar[int] = 0

    def __init__(self, url: str, options: Any = None) -> None:
        super().__init__(url, options)
        FlakyTransport.sessions += 1

    def publish(self, messages: Sequence[Outgoing]) -> None:
        FlakyTransport.publish_calls += 1
        if FlakyTransport.publish_calls <= FlakyTransport.failures:
            raise ConnectionError("connection reset by broker")
        super().publish(messages)


@pytest.fixture
def flaky_url(transport_registry: dict[str, object]) -> str:
    register_transport("flaky", f"{__name__}:FlakyTransport")
    FlakyTransport.failures = FlakyTransport.publish_calls = FlakyTransport.sessions = 0
    return f"flaky://user:secret@localhost/{uuid.uuid4().hex}"


def test_publish_with_retry_reconnects_until_the_broker_answers(flaky_url: str) -> None:
    FlakyTransport.failures = 2
    queue = Queue("q")
    with Connection(flaky_url) as conn:
        policy = {"max_retries": 3, **FAST}
        conn.Producer().publish({"n": 1}, "q", declare=[queue], retry=True, retry_policy=policy)
        assert conn.transport.queue_length("q") == 1
    assert FlakyTransport.publish_calls == 3
    assert FlakyTransport.sessions == 3  # a fresh session for each retry


def test_publish_gives_up_with_one_operational_error_naming_the_broker(flaky_url: str) -> None:
    FlakyTransport.failures = 100
    with Connection(flaky_url) as conn, pytest.raises(OperationalError) as info:
        policy = RetryPolicy(max_retries=2, interval_start=0, interval_step=0)
        conn.Producer().publish({}, "q", declare=[Queue("q")], retry=True, retry_policy=policy)
    message = str(info.value)
    assert "flaky://user:**@localhost" in message
    assert "secret" not in message
    assert isinstance(info.value.__cause__, ConnectionError)
    assert FlakyTransport.publish_calls == 3  # the first attempt and two retries


def test_publish_without_retry_fails_at_once_with_the_raw_error(flaky_url: str) -> None:
    FlakyTransport.failures = 1
    with Connection(flaky_url) as conn, pytest.raises(ConnectionError):
        conn.Producer().publish({}, "q", declare=[Queue("q")], retry=False)
    assert FlakyTransport.publish_calls == 1


def test_an_error_that_reconnecting_cannot_fix_is_not_retried(flaky_url: str) -> None:
    with Connection(flaky_url) as conn, pytest.raises(NotFound):
        conn.Producer().publish({}, "q", exchange="missing", retry=True, retry_policy=FAST)
    assert FlakyTransport.publish_calls == 1


def test_apublish_retries_like_publish(flaky_url: str) -> None:
    FlakyTransport.failures = 2
    with Connection(flaky_url) as conn:
        producer = conn.Producer()
        publish = producer.apublish({}, "q", declare=[Queue("q")], retry=True, retry_policy=FAST)
        asyncio.run(publish)
        assert conn.transport.queue_length("q") == 1
        FlakyTransport.failures = 100
        policy = {"max_retries": 1, **FAST}
        with pytest.raises(OperationalError, match=r"flaky://user:\*\*@localhost"):
            asyncio.run(producer.apublish({}, "q", retry=True, retry_policy=policy))


# -- pools --------------------------------------------------------------------------------
@pytest.fixture
def pool(memory_url: str) -> Iterator[ConnectionPool]:
    with Connection(memory_url).Pool(limit=2) as pool:
        yield pool


def test_a_pool_lends_at_most_limit_connections(pool: ConnectionPool) -> None:
    first, _second = pool.acquire(), pool.acquire()
    assert pool.in_use == 2
    with pytest.raises(LimitExceeded):
        pool.acquire(block=False)
    first.release()
    third = pool.acquire(block=False)
    assert third.connection is first.connection


def test_a_blocking_acquire_gives_up_after_its_timeout(pool: ConnectionPool) -> None:
    held = [pool.acquire(), pool.acquire()]
    start = time.monotonic()
    with pytest.raises(LimitExceeded):
        pool.acquire(timeout=0.1)
    assert 0.1 <= time.monotonic() - start < 1
    assert pool.in_use == len(held)


def test_a_released_connection_is_reused(pool: ConnectionPool) -> None:
    with pool.acquire() as first:
        pass
    with pool.acquire() as second:
        assert second is first
    assert pool.in_use == 0


def test_releasing_twice_gives_the_connection_back_once(pool: ConnectionPool) -> None:
    lease = pool.acquire()
    lease.release()
    lease.release()
    assert pool.in_use == 0


def test_a_waiting_thread_gets_the_connection_another_thread_releases(
    memory_url: str,
) -> None:
    pool = Connection(memory_url).Pool(limit=1)
    lease = pool.acquire()
    got: list[Connection] = []

    def borrow() -> None:
        with pool.acquire(timeout=5) as conn:
            got.append(conn)

    thread = threading.Thread(target=borrow)
    thread.start()
    time.sleep(0.1)
    assert got == []  # still waiting
    lease.release()
    thread.join(timeout=5)
    assert len(got) == 1
    assert got[0] is lease.connection
    pool.close()


def test_a_closed_pool_closes_idle_connections_and_refuses_new_loans(
    pool: ConnectionPool,
) -> None:
    lent, idle = pool.acquire(), pool.acquire()
    lent.connection.connect()
    idle.connection.connect()
    idle.release()
    pool.close()
    assert not idle.connection.connected
    assert lent.connection.connected
    lent.release()
    assert not lent.connection.connected
    with pytest.raises(LimitExceeded):
        pool.acquire()


def test_a_connection_that_cannot_be_made_does_not_use_up_the_limit(memory_url: str) -> None:
    attempts = iter([ConnectionError("refused"), None])

    def factory() -> Connection:
        error = next(attempts)
        if error is not None:
            raise error
        return Connection(memory_url)

    pool = ConnectionPool(factory, limit=1)
    with pytest.raises(ConnectionError):
        pool.acquire()
    assert pool.in_use == 0
    with pool.acquire(block=False):
        assert pool.in_use == 1


def test_a_pool_limit_below_one_is_refused(memory_url: str) -> None:
    with pytest.raises(ValueError, match="limit"):
        Connection(memory_url).Pool(limit=0)


def test_a_producer_pool_publishes_through_pooled_connections(
    pool: ConnectionPool, memory_url: str
) -> None:
    producers = ProducerPool(pool, serializer="json")
    queue = Queue(f"q-{uuid.uuid4().hex}")
    with producers.acquire() as producer:
        producer.publish({"n": 1}, queue.name, declare=[queue])
        first_connection = producer.connection
    assert pool.in_use == 0
    with producers.acquire() as producer:
        assert producer.connection is first_connection
    with Connection(memory_url) as conn:
        assert conn.transport.queue_length(queue.name) == 1
