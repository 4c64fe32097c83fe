"""The Redis broker across processes: crashes, stopped processes, ETA, a server restart."""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from celeriac.messaging import Connection, Message, Queue
from celeriac.testing import service_url
from celeriac.testing.servers import PrivateRedis
from celeriac.transports.redis import RedisTransport

# The `spawn` fixture lives in tests/conftest.py.
Spawn = Callable[..., subprocess.Popen[str]]
SHARED_URL = "redis://127.0.0.1:6379/15"


def delete_keys(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def url() -> str:
    return service_url(SHARED_URL)


@pytest.fixture
def prefix(url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}:"
    yield name
    delete_keys(url, name)


def fetch_all(conn: Connection, queue: Queue, count: int, timeout: float = 10.0) -> list[Message]:
    consumer = conn.Consumer(queue, prefetch_count=0)
    consumer.consume()
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        batch = consumer.fetch()
        if not batch:
            conn.transport.wait(0.2)
        got.extend(batch)
    return got


HOLDER = """
import sys, time
from celeriac.messaging import Connection, Queue
options = {
    "global_keyprefix": sys.argv[2],
    "heartbeat_interval": 0.2,
    "connection_lost_timeout": float(sys.argv[4]),
    "lease_timeout": float(sys.argv[5]),
}
conn = Connection(sys.argv[1], options)
consumer = conn.Consumer(Queue("work"), prefetch_count=0)
consumer.consume()
held = []
while len(held) < int(sys.argv[3]):
    held.extend(consumer.fetch())
print("holding", len(held), flush=True)
time.sleep(60)
"""


def start_holder(spawn: Spawn, url: str, prefix: str, count: int, lost: float, lease: float):
    holder = spawn(HOLDER, url, prefix, str(count), str(lost), str(lease))
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == f"holding {count}"
    return holder


def test_messages_held_by_a_sigkilled_consumer_are_redelivered_to_another(
    url: str, prefix: str, spawn: Spawn
) -> None:
    queue = Queue("work")
    options = {"global_keyprefix": prefix}
    with Connection(url, options) as conn:
        producer = conn.Producer()
        for i in range(50):
            producer.publish({"n": i}, "work", declare=[queue])
    # A long lease: the messages come back because the dead process's connections closed.
    holder = start_holder(spawn, url, prefix, 50, lost=1.0, lease=30.0)
    with Connection(url, options) as conn:
        assert conn.transport.queue_length("work") == 0
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        started = time.monotonic()
        got = fetch_all(conn, queue, 50)
        assert time.monotonic() - started < 5.0
        assert sorted(m.decode()["n"] for m in got) == list(range(50))
        assert all(m.redelivered for m in got)
        for m in got:
            m.ack()
        assert conn.transport.queue_length("work") == 0


def test_a_live_consumer_keeps_its_messages_past_its_lease_timeout(url: str, prefix: str) -> None:
    queue = Queue("work")
    options = {
        "global_keyprefix": prefix,
        "heartbeat_interval": 0.1,
        "connection_lost_timeout": 0.3,
        "lease_timeout": 0.5,
    }
    with Connection(url, options) as holder, Connection(url, options) as other:
        holder.Producer().publish("long task", "work", declare=[queue])
        (held,) = fetch_all(holder, queue, 1)
        time.sleep(1.5)  # three lease timeouts, while the holder's heartbeat runs
        other_consumer = other.Consumer(queue)
        other_consumer.consume()
        assert other_consumer.fetch() == []
        held.ack()
        assert other.transport.queue_length("work") == 0


def test_a_stopped_process_loses_its_messages_once_its_lease_runs_out(
    url: str, prefix: str, spawn: Spawn
) -> None:
    queue = Queue("work")
    options = {"global_keyprefix": prefix}
    with Connection(url, options) as conn:
        conn.Producer().publish({"n": 1}, "work", declare=[queue])
    holder = start_holder(spawn, url, prefix, 1, lost=0.5, lease=1.0)
    holder.send_signal(signal.SIGSTOP)  # alive, connections open, but its heartbeat stops
    try:
        with Connection(url, options) as conn:
            started = time.monotonic()
            (message,) = fetch_all(conn, queue, 1)
            assert message.redelivered
            assert time.monotonic() - started > 0.5  # not before the lease ran out
            message.ack()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)


def test_a_deferred_message_wakes_a_waiting_consumer_when_it_is_due(url: str, prefix: str) -> None:
    queue = Queue("work")
    options = {"global_keyprefix": prefix}
    received: list[float] = []
    with Connection(url, options) as deferrer, Connection(url, options) as waiter:
        deferrer.Producer().publish("eta task", "work", declare=[queue])
        (message,) = fetch_all(deferrer, queue, 1)
        consumer = waiter.Consumer(queue, callbacks=[lambda _b, m: received.append(time.time())])
        with consumer:
            with pytest.raises(TimeoutError):
                waiter.drain_events(timeout=0.05)  # subscribed, found nothing, waiting
            due = time.time() + 0.6
            deferrer.transport.defer([(message.delivery_tag, due)])
            assert deferrer.transport.queue_length("work") == 1
            waiter.drain_events(timeout=5)
    assert due <= received[0] < due + 0.3


def test_a_waiting_consumer_uses_almost_no_cpu(url: str, prefix: str) -> None:
    with (
        Connection(url, {"global_keyprefix": prefix}) as conn,
        conn.Consumer(Queue("idle"), callbacks=[lambda body, message: None]),
    ):
        with pytest.raises(TimeoutError):
            conn.drain_events(timeout=0.1)  # connected and subscribed
        started = time.process_time()
        with pytest.raises(TimeoutError):
            conn.drain_events(timeout=2.0)
        used = time.process_time() - started
    assert used < 0.1, f"an idle consumer used {used:.3f}s of CPU in 2s"


# -- a private server, restarted ----------------------------------------------------------
@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.kill()


RETRY_FOREVER = {"max_retries": None, "interval_start": 0.05, "interval_step": 0.05,
                 "interval_max": 0.2}  # fmt: skip


class Traffic:
    """A publishing thread and a consuming thread on one broker, each with its own connection.

    The publisher retries forever (as a producer with a retry policy does); the consumer
    carries on after connection errors. ``published`` lists every publish that returned;
    ``consumed`` maps each message received to when it first was.
    """

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        self.url, self.options = url, options
        self.queue = Queue("work")
        self.published: list[int] = []
        self.consumed: dict[int, float] = {}
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.give_up = float("inf")
        self.threads = [self._run(self._publish), self._run(self._consume)]

    def _run(self, target: Callable[[], None]) -> threading.Thread:
        def guarded() -> None:
            try:
                target()
            except BaseException as exc:  # reported by the test thread
                self.errors.append(exc)

        thread = threading.Thread(target=guarded, daemon=True)
        thread.start()
        return thread

    def _publish(self) -> None:
        with Connection(self.url, self.options) as conn:
            producer = conn.Producer()
            n = 0
            while not self.stop.is_set():
                producer.publish(
                    {"n": n}, "work", declare=[self.queue], retry=True, retry_policy=RETRY_FOREVER
                )
                self.published.append(n)
                n += 1
                time.sleep(0.002)

    def _received(self, body: Any, message: Message) -> None:
        self.consumed.setdefault(body["n"], time.monotonic())
        # If the ack fails, the message stays leased to this live session: not lost.
        with contextlib.suppress(*RedisTransport.recoverable_errors):
            message.ack()

    def _consume(self) -> None:
        with Connection(self.url, self.options) as conn:
            conn.declare(self.queue)
            with conn.Consumer(self.queue, callbacks=[self._received], prefetch_count=50):
                while not self.stop.is_set() or not self.all_consumed():
                    if time.monotonic() > self.give_up:
                        return
                    try:
                        conn.drain_events(timeout=0.2)
                    except TimeoutError:
                        pass
                    except RedisTransport.recoverable_errors:
                        time.sleep(0.05)  # the transport reconnects on its next call

    def all_consumed(self) -> bool:
        return set(self.published) <= set(self.consumed)

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert not self.errors, self.errors
            assert time.monotonic() < deadline, f"{what} within {timeout} s"
            time.sleep(0.01)

    def finish(self) -> None:
        self.stop.set()
        self.give_up = time.monotonic() + 10
        for thread in self.threads:
            thread.join(timeout=20)
        assert not self.errors, self.errors


@pytest.mark.parametrize("confirm_publish", [False, True], ids=["unconfirmed", "confirmed"])
def test_a_redis_restart_loses_no_returned_publish_and_consuming_resumes(
    private_redis: PrivateRedis, confirm_publish: bool
) -> None:
    traffic = Traffic(private_redis.url, {"confirm_publish": confirm_publish})
    traffic.wait_for(lambda: len(traffic.consumed) >= 100, 10, "100 messages consumed")
    private_redis.stop()
    time.sleep(0.3)  # the publisher retries, the consumer waits
    private_redis.start()
    restarted = time.monotonic()
    traffic.wait_for(
        lambda: any(when > restarted for when in list(traffic.consumed.values())),
        5,
        "consuming resumed",
    )
    before = len(traffic.published)
    traffic.wait_for(lambda: len(traffic.published) >= before + 100, 10, "publishing resumed")
    traffic.finish()
    missing = set(traffic.published) - set(traffic.consumed)
    assert not missing, f"{len(missing)} returned publishes were never consumed"


def test_leases_survive_a_redis_restart_longer_than_the_lease_timeout(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    options = {"heartbeat_interval": 0.1, "connection_lost_timeout": 0.5, "lease_timeout": 1.0}
    queue = Queue("work")
    with Connection(private_redis.url, options) as holder:
        holder.Producer().publish("long task", "work", declare=[queue])
        (held,) = fetch_all(holder, queue, 1)
        private_redis.stop()
        time.sleep(1.5)  # every heartbeat is now older than the lease
        private_redis.start()
        with Connection(private_redis.url, options) as other:
            consumer = other.Consumer(queue)
            consumer.consume()
            assert consumer.fetch() == []  # the holder gets time to come back
            time.sleep(1.5)  # ...and does: its heartbeat resumes
            assert consumer.fetch() == []
        with caplog.at_level(logging.WARNING):
            held.ack()
        assert "no longer leased" not in caplog.text
        assert holder.transport.queue_length("work") == 0
