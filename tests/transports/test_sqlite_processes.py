"""The embedded SQLite broker across processes: crashes, locks, bad files, idle waiting."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from celeriac.exceptions import BrokerFileError, ImproperlyConfigured
from celeriac.messaging import Connection, Exchange, Queue

ORDERS = Exchange("orders", type="topic")


def url_for(path: Path) -> str:
    return f"sqlite:///{path}"


# The `spawn` fixture lives in tests/conftest.py.
Spawn = Callable[..., subprocess.Popen[str]]


def fetch_all(conn: Connection, queue: Queue, count: int, timeout: float = 10.0) -> list:
    consumer = conn.Consumer(queue, prefetch_count=0)
    consumer.consume()
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        batch = consumer.fetch()
        if not batch:
            conn.transport.wait(0.2)
        got.extend(batch)
    return got


def test_a_topic_exchange_routes_between_two_processes(tmp_path: Path, spawn: Spawn) -> None:
    url = url_for(tmp_path / "broker.db")
    queues = [
        Queue("eu-all", ORDERS, "eu.#"),
        Queue("any-orders", ORDERS, "*.orders.*"),
        Queue("us-all", ORDERS, "us.#"),
    ]
    with Connection(url) as conn:
        conn.declare(*queues)
    publisher = spawn(
        """
        import sys
        from celeriac.messaging import Connection, Exchange
        with Connection(sys.argv[1]) as conn:
            conn.Producer().publish({"order": 7}, "eu.orders.created",
                                    exchange=Exchange("orders", type="topic"))
        """,
        url,
    )
    assert publisher.wait(timeout=30) == 0
    with Connection(url) as conn:
        lengths = {q.name: conn.transport.queue_length(q.name) for q in queues}
        assert lengths == {"eu-all": 1, "any-orders": 1, "us-all": 0}
        (message,) = fetch_all(conn, queues[0], 1)
        assert message.decode() == {"order": 7}
        assert message.delivery_info["routing_key"] == "eu.orders.created"


HOLDER = """
import sys, time
from celeriac.messaging import Connection, Queue
conn = Connection(sys.argv[1], {"heartbeat_interval": 0.2, "lease_timeout": float(sys.argv[3])})
consumer = conn.Consumer(Queue("work"), prefetch_count=0)
consumer.consume()
held = []
while len(held) < int(sys.argv[2]):
    held.extend(consumer.fetch())
print("holding", len(held), flush=True)
time.sleep(60)
"""


def test_messages_held_by_a_sigkilled_consumer_are_redelivered_to_another(
    tmp_path: Path, spawn: Spawn
) -> None:
    url = url_for(tmp_path / "broker.db")
    queue = Queue("work")
    with Connection(url) as conn:
        producer = conn.Producer()
        for i in range(50):
            producer.publish({"n": i}, "work", declare=[queue])
    holder = spawn(HOLDER, url, "50", "30")
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "holding 50"
    with Connection(url) as conn:
        assert conn.transport.queue_length("work") == 0
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        got = fetch_all(conn, queue, 50)
        assert sorted(m.decode()["n"] for m in got) == list(range(50))
        assert all(m.redelivered for m in got)
        for m in got:
            m.ack()
        assert conn.transport.queue_length("work") == 0


def test_a_live_consumer_keeps_its_messages_past_the_lease_timeout(tmp_path: Path) -> None:
    url = url_for(tmp_path / "broker.db")
    queue = Queue("work")
    options = {"heartbeat_interval": 0.1, "lease_timeout": 0.5}
    with Connection(url, options) as holder, Connection(url, options) as other:
        holder.Producer().publish("long task", "work", declare=[queue])
        (held,) = fetch_all(holder, queue, 1)
        time.sleep(1.5)  # three lease timeouts, while the holder's heartbeat runs
        other_consumer = other.Consumer(queue)
        other_consumer.consume()
        assert other_consumer.fetch() == []
        held.ack()


def test_a_stopped_process_loses_its_leases_once_its_heartbeat_is_stale(
    tmp_path: Path, spawn: Spawn
) -> None:
    url = url_for(tmp_path / "broker.db")
    queue = Queue("work")
    with Connection(url) as conn:
        conn.Producer().publish({"n": 1}, "work", declare=[queue])
    holder = spawn(HOLDER, url, "1", "0.5")
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "holding 1"
    holder.send_signal(signal.SIGSTOP)  # alive, but its heartbeat stops
    try:
        with Connection(url, {"lease_timeout": 0.5}) as conn:
            (message,) = fetch_all(conn, queue, 1)
            assert message.redelivered
            message.ack()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)


def test_a_locked_database_is_waited_for_not_reported(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    queue = Queue("work")
    with Connection(url_for(path)) as conn:
        conn.declare(queue)
        blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        blocker.execute("BEGIN IMMEDIATE")
        release = threading.Timer(1.5, lambda: blocker.execute("COMMIT"))
        release.start()
        try:
            conn.Producer().publish("after the lock", "work")
        finally:
            release.join()
            blocker.close()
        assert conn.transport.queue_length("work") == 1


def test_an_unwritable_location_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "broker.db"
    with pytest.raises(BrokerFileError, match=str(missing)):
        Connection(url_for(missing)).connect()


def test_a_file_that_is_not_a_database_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    content = b"these are my notes, not a database\n" * 200
    path.write_bytes(content)
    with pytest.raises(BrokerFileError, match=r"notes\.db"):
        Connection(url_for(path)).connect()
    assert path.read_bytes() == content


def test_another_applications_database_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    other.commit()
    other.close()
    before = path.read_bytes()
    with pytest.raises(BrokerFileError, match="another application"):
        Connection(url_for(path)).connect()
    assert path.read_bytes() == before


def test_urls_without_a_usable_file_are_refused_with_advice() -> None:
    with pytest.raises(ImproperlyConfigured, match="names no file"):
        Connection("sqlite://").connect()
    with pytest.raises(ImproperlyConfigured, match="memory://"):
        Connection("sqlite:///:memory:").connect()


def test_a_waiting_consumer_uses_almost_no_cpu(tmp_path: Path) -> None:
    with (
        Connection(url_for(tmp_path / "broker.db")) as conn,
        conn.Consumer(Queue("idle"), callbacks=[lambda body, message: None]),
    ):
        started = time.process_time()
        with pytest.raises(TimeoutError):
            conn.drain_events(timeout=2.0)
        used = time.process_time() - started
    assert used < 0.1, f"an idle consumer used {used:.3f}s of CPU in 2s"


def test_a_publish_from_another_process_wakes_a_waiting_consumer_promptly(
    tmp_path: Path, spawn: Spawn
) -> None:
    url = url_for(tmp_path / "broker.db")
    queue = Queue("work")
    received: list[float] = []
    with Connection(url) as conn:
        conn.declare(queue)
        consumer = conn.Consumer(queue, callbacks=[lambda b, m: received.append(time.time())])
        with consumer:
            publisher = spawn(
                """
                import sys, time
                from celeriac.messaging import Connection
                with Connection(sys.argv[1]) as conn:
                    producer = conn.Producer()
                    time.sleep(0.5)
                    print(time.time(), flush=True)
                    producer.publish("wake up", "work")
                """,
                url,
            )
            conn.drain_events(timeout=10)
            assert publisher.stdout is not None
            sent = float(publisher.stdout.readline())
            assert publisher.wait(timeout=10) == 0
    # Waits are bounded at 1 s; a wake-up must beat that by far.
    assert received[0] - sent < 0.3


def test_a_session_that_publishes_before_it_fetches_leaves_no_socket_unclosed(
    tmp_path: Path,
) -> None:
    import gc
    import warnings

    url = f"sqlite:///{tmp_path / 'b.db'}"
    listener = Connection(url)  # a waiting peer: publishes now send it a wake-up datagram
    listener.Consumer(Queue("other"), accept=["json"]).consume().fetch(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(3):
            with Connection(url) as conn:
                conn.declare(Queue("q"))
                conn.Producer().publish({"n": 1}, routing_key="q")
                consumer = conn.Consumer(Queue("q"), accept=["json"]).consume()
                (message,) = consumer.fetch(1)
                message.ack()
        gc.collect()
    listener.close()
    leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, [str(w.message) for w in leaks]
