"""A worker under load while its broker restarts: Redis (append-only file) and RabbitMQ.

With publisher confirms on, every ``delay()`` that returned is executed, and the worker
consumes again within 5 s of the broker coming back. Results live on Redis in both cases
(on the restarted server itself for the Redis case), so waiting clients must survive the
restart too. The RabbitMQ case restarts the shared server (``rabbitmqctl stop_app`` /
``start_app``); it is marked ``broker_restart``.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from e2e_support import REDIS_RESULTS, amqp_url, running_worker
from e2e_tasks import make_app

from celeriac.testing import in_ci
from celeriac.testing.servers import PrivateRedis

#: The issue's bar: the worker consumes again this soon after the broker is back.
RESUME_WITHIN = 5.0
TIMEOUT = 30


class Load(threading.Thread):
    """``add.delay(i, 1)`` in a loop; keeps the results of the calls that returned."""

    def __init__(self, tasks: Any) -> None:
        super().__init__(daemon=True)
        self.tasks = tasks
        self.sent: list[tuple[int, Any]] = []
        self.failed_calls = 0
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            try:
                self.sent.append((i, self.tasks.add.delay(i, 1)))
            except Exception:  # the retry policy gave up: this publish did not return
                self.failed_calls += 1
                time.sleep(0.05)
            i += 1
            time.sleep(0.002)


@contextmanager
def under_load(tasks: Any) -> Iterator[Load]:
    load = Load(tasks)
    load.start()
    try:
        yield load
    finally:
        load.stop.set()
        load.join(timeout=30)


def check_restart(tasks: Any, load: Load, restart: Callable[[], None]) -> None:
    """Restart the broker under ``load``; then the worker resumes and nothing returned is
    lost."""
    time.sleep(0.5)
    before = len(load.sent)
    restart()
    back = time.monotonic()
    probe = tasks.add.delay(10_000, 1)
    assert probe.get(timeout=TIMEOUT) == 10_001
    resumed = time.monotonic() - back
    time.sleep(0.3)
    load.stop.set()
    load.join(timeout=30)
    assert before > 0 and len(load.sent) > before  # load ran before and after the restart
    for i, result in load.sent:
        assert result.get(timeout=TIMEOUT) == i + 1
    assert resumed < RESUME_WITHIN, f"the worker consumed again after {resumed:.1f}s"


def test_a_worker_on_redis_carries_on_through_a_restart(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        app, tasks = make_app(
            server.url, tmp_path, broker_transport_options={"confirm_publish": True}
        )
        with running_worker(app, "threads"), under_load(tasks) as load:

            def restart() -> None:
                server.stop()
                time.sleep(0.3)
                server.start()

            check_restart(tasks, load, restart)
        app.close()
    finally:
        server.kill()


@pytest.mark.broker_restart
def test_a_worker_on_rabbitmq_carries_on_through_a_restart(tmp_path: Path) -> None:
    url = amqp_url()
    if shutil.which("rabbitmqctl") is None:
        reason = "rabbitmqctl is not installed, so RabbitMQ cannot be restarted"
        if in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    app, tasks = make_app(
        url,
        tmp_path,
        backend=REDIS_RESULTS,
        broker_transport_options={"confirm_publish": True},
        task_default_queue=f"restart-{tmp_path.name}",
    )

    def restart() -> None:
        for step in ("stop_app", "start_app"):
            subprocess.run(["rabbitmqctl", step], check=True, capture_output=True, timeout=120)

    try:
        with running_worker(app, "threads"), under_load(tasks) as load:
            check_restart(tasks, load, restart)
    finally:
        with app.connection() as conn:
            conn.transport.delete_queue(app.conf.task_default_queue)
        app.close()
