"""Events over the server brokers (Redis, RabbitMQ): the same messaging API, so a worker's
events reach a receiver there unchanged. Each test uses its own task queue (and, on Redis,
its own key prefix): other tests share these servers at the same time."""

from __future__ import annotations

import importlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import running_worker
from e2e_tasks import make_app

from celeriac import Celery
from celeriac.events import Event
from celeriac.testing import service_url

BROKERS = {
    "redis": ("redis://127.0.0.1:6379/0", "celeriac.transports.redis"),
    "amqp": ("amqp://guest:guest@127.0.0.1:5672//", "celeriac.transports.amqp"),
}


@pytest.fixture(params=sorted(BROKERS))
def server_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Celery, Any]]:
    url, module = BROKERS[request.param]
    service_url(url)
    try:
        importlib.import_module(module)
    except ImportError as exc:  # the transport is optional (pip install celeriac[redis])
        pytest.skip(f"{module} is not available: {exc}")
    name = f"h5-events-{uuid.uuid4().hex[:10]}"
    settings: dict[str, Any] = {"task_default_queue": name, "task_ignore_result": True}
    if request.param == "redis":
        settings["broker_transport_options"] = {"global_keyprefix": f"{name}:"}
    app, tasks = make_app(url, tmp_path, **settings)
    app.conf.result_backend = f"memory://{name}"
    yield app, tasks
    with app.connection() as conn:
        conn.transport.delete_queue(name)
    app.close()


def test_a_worker_on_a_server_broker_sends_its_events(server_app: tuple[Celery, Any]) -> None:
    app, tasks = server_app
    hostname = f"h5-{uuid.uuid4().hex[:8]}@test"
    seen: list[Event] = []
    with app.connection() as conn:
        receiver = app.events.Receiver(conn)
        receiver.consume()
        try:
            with running_worker(
                app, "threads", hostname=hostname, task_events=True, heartbeat_interval=0.2
            ):
                result = tasks.add.delay(1, 2)
                _collect(receiver, seen, hostname, {"task-succeeded", "worker-heartbeat"})
            _collect(receiver, seen, hostname, {"worker-offline"})
        finally:
            receiver.close()
    mine = [e for e in seen if e.hostname == hostname]
    kinds = [e.type for e in mine]
    assert kinds[0] == "worker-online"
    task_kinds = [e.type for e in mine if e.uuid == result.id]
    assert task_kinds == ["task-received", "task-started", "task-succeeded"]
    assert kinds[-1] == "worker-offline"


def _collect(receiver: Any, seen: list[Event], hostname: str, wanted: set[str]) -> None:
    deadline = time.monotonic() + 15
    while not wanted <= {e.type for e in seen if e.hostname == hostname}:
        if time.monotonic() > deadline:
            pytest.fail(f"not seen in time: {wanted}; got {[e.type for e in seen]}")
        seen.extend(receiver.itercapture(timeout=0.1))
