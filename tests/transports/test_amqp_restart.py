"""RabbitMQ restarted under a publishing and a consuming transport.

The server is shared by everyone testing on this machine, so this module restarts it once,
and is marked ``broker_restart`` (and ``slow``) so that it can be left out
(``-m "not broker_restart"``) or run alone. It needs ``rabbitmqctl`` beside the server.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from celeriac.exceptions import OperationalError
from celeriac.messaging import Connection, Message, Queue
from celeriac.testing import in_ci, service_url

pytestmark = [pytest.mark.slow, pytest.mark.broker_restart]

SHARED_URL = "amqp://guest:guest@127.0.0.1:5672//"
#: How soon consuming must resume once the broker is back (the issue's acceptance bar).
RESUME_WITHIN = 5.0


@pytest.fixture
def url() -> str:
    url = service_url(SHARED_URL)
    if shutil.which("rabbitmqctl") is None:
        reason = "rabbitmqctl is not installed here, so RabbitMQ cannot be restarted"
        if in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    return url


@pytest.fixture
def queues(url: str) -> Iterator[tuple[Queue, Queue]]:
    work, eta = (Queue(f"test-amqp-restart-{uuid.uuid4().hex[:10]}") for _ in range(2))
    yield work, eta
    with Connection(url) as conn:
        for queue in (work, eta):
            conn.transport.delete_queue(queue.name)


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


class Publisher(threading.Thread):
    """Publishes numbers with confirms on, retrying per the policy; keeps those that returned."""

    def __init__(self, url: str, queue: Queue) -> None:
        super().__init__(daemon=True)
        self.conn = Connection(url, {"confirm_publish": True})
        self.queue = queue
        self.returned: list[tuple[int, float]] = []
        self.failed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        producer = self.conn.Producer()
        policy = {
            "max_retries": 40,
            "interval_start": 0.1,
            "interval_step": 0.1,
            "interval_max": 0.3,
        }
        n = 0
        while not self.stop.is_set():
            try:
                producer.publish(n, self.queue.name, retry=True, retry_policy=policy)
            except OperationalError:
                self.failed += 1  # did not return: the test may not count on it
            else:
                self.returned.append((n, time.monotonic()))
            n += 1
            time.sleep(0.005)
        self.conn.close()


class Consumer(threading.Thread):
    """Consumes and acks with a push window; notes when each body arrived."""

    def __init__(self, url: str, queue: Queue) -> None:
        super().__init__(daemon=True)
        self.conn = Connection(url)
        self.queue = queue
        self.seen: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        consumer = self.conn.Consumer(self.queue, prefetch_count=50)
        consumer.consume()
        while not self.stop.is_set():
            try:
                messages = consumer.fetch()
                for message in messages:
                    self.seen.setdefault(message.decode(), time.monotonic())
                    message.ack()
                if not messages:
                    self.conn.transport.wait(0.1)
            except ConnectionError:
                time.sleep(0.05)  # the transport reconnects by itself
        self.conn.close()


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_a_broker_restart_loses_no_confirmed_publish_and_consuming_resumes(
    url: str, queues: tuple[Queue, Queue]
) -> None:
    work, eta = queues
    # A deferred message waits in a durable delay bucket across the restart.
    with Connection(url) as conn:
        conn.Producer().publish("later", eta.name, declare=[eta])
    deferring = Connection(url)
    (held,) = take_one(deferring, eta)
    due = time.time() + 4.0
    deferring.transport.defer([(held.delivery_tag, due)])
    deferring.close()

    with Connection(url) as conn:
        conn.declare(work)
    consumer, publisher = Consumer(url, work), Publisher(url, work)
    consumer.start()
    publisher.start()
    assert wait_for(lambda: len(consumer.seen) >= 20, 10), "nothing flowed before the restart"

    rabbitmqctl("stop_app")
    rabbitmqctl("start_app")
    back = time.monotonic()

    resumed = wait_for(lambda: any(t > back for t in list(consumer.seen.values())), 15)
    publisher.stop.set()
    publisher.join(30)
    returned = [n for n, _t in publisher.returned]
    complete = wait_for(lambda: all(n in consumer.seen for n in returned), 20)
    consumer.stop.set()
    consumer.join(10)

    assert resumed, "consuming did not resume after the broker came back"
    first_after = min(t for t in consumer.seen.values() if t > back)
    assert first_after - back < RESUME_WITHIN
    missing = [n for n in returned if n not in consumer.seen]
    assert complete and not missing, f"{len(missing)} confirmed publishes were lost: {missing[:10]}"

    with Connection(url) as conn:
        (again,) = take_one(conn, eta, timeout=10)
        arrived = time.time()
        assert again.decode() == "later"
        assert arrived >= due - 0.002, "a deferred message came back before it was due"
        again.ack()


def take_one(conn: Connection, queue: Queue, timeout: float = 5.0) -> list[Message]:
    with conn.Consumer(queue, prefetch_count=1) as consumer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = consumer.fetch()
            if got:
                return got
            conn.transport.wait(0.05)
    return []
