"""The rpc result backend end to end: a client app sends tasks, a worker (its own app, on
the same broker) runs them, and the states come back as messages to the client's queue.

Over the memory and SQLite brokers, with workers in this process; one test runs a prefork
worker as ``celeriac worker`` in a subprocess (replies published from a forked child).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celery, states
from celeriac.backends import backend_from_url
from celeriac.backends.rpc import RPCBackend
from celeriac.exceptions import ContentDisallowed, ImproperlyConfigured, TimeoutError
from celeriac.messaging import Connection, Consumer, Queue
from celeriac.messaging.message import Message
from celeriac.worker.worker import Worker, WorkerOptions

BROKERS = ["memory", "sqlite"]


class Failed(Exception):
    """Raised by the ``fail`` task."""


def define_tasks(app: Celery) -> dict[str, Any]:
    @app.task(name="rpc.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="rpc.fail")
    def fail(why: str) -> None:
        raise Failed(why)

    @app.task(name="rpc.flaky", bind=True, max_retries=3)
    def flaky(self: Any) -> str:
        if self.request.retries < 1:
            raise self.retry(countdown=0)
        return "ok"

    @app.task(name="rpc.steps", bind=True, track_started=True)
    def steps(self: Any, n: int) -> str:
        for step in range(n):
            self.update_state(state="PROGRESS", meta={"step": step})
        return "done"

    return {"add": add, "fail": fail, "flaky": flaky, "steps": steps}


@pytest.fixture(params=BROKERS)
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return f"memory://{uuid.uuid4().hex}"
    return f"sqlite:///{tmp_path / 'broker.db'}"


@pytest.fixture
def make_app(broker_url: str) -> Iterator[Callable[..., tuple[Celery, dict[str, Any]]]]:
    """Apps on this test's broker (rpc results unless told); closed afterwards."""
    apps: list[Celery] = []

    def make(backend: str = "rpc://", **settings: Any) -> tuple[Celery, dict[str, Any]]:
        app = Celery("rpc", broker=broker_url, backend=backend, set_as_current=False, **settings)
        apps.append(app)
        return app, define_tasks(app)

    yield make
    for app in apps:
        app.close()


@contextmanager
def running_worker(app: Celery, pool: str = "threads") -> Iterator[Worker]:
    """A worker for ``app`` in a thread of this process, for the ``with`` block."""
    worker = Worker(app, WorkerOptions(pool=pool, concurrency=2))
    thread = threading.Thread(target=worker.run, name="rpc-test-worker", daemon=True)
    thread.start()
    assert worker.ready.wait(10), "the worker did not start"
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(15)
        assert not thread.is_alive(), "the worker did not stop"


@pytest.fixture
def client_and_worker(
    make_app: Callable[..., tuple[Celery, dict[str, Any]]],
) -> Iterator[tuple[Celery, dict[str, Any]]]:
    """A client app, and a running worker of another app on the same broker."""
    client, tasks = make_app()
    worker_app, _ = make_app()
    with running_worker(worker_app):
        yield client, tasks


def take(url: str, queue: str, count: int = 1, timeout: float = 5.0) -> list[Message]:
    """Take ``count`` messages from ``queue`` (declared already), as a plain consumer."""
    got: list[Message] = []
    with Connection(url) as conn:
        consumer = Consumer(conn, Queue(queue), accept=["json", "pickle"], auto_declare=False)
        consumer.consume()
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            batch = consumer.fetch(count - len(got))
            if not batch:
                conn.transport.wait(0.05)
            got.extend(batch)
        for message in got:
            message.ack()
    return got


# -- end to end -----------------------------------------------------------------------------------
def test_delay_get_returns_the_result_through_the_reply_queue(
    client_and_worker: tuple[Celery, dict[str, Any]],
) -> None:
    _client, tasks = client_and_worker
    assert tasks["add"].delay(2, 3).get(timeout=10) == 5


def test_on_message_sees_every_state_in_order(
    client_and_worker: tuple[Celery, dict[str, Any]],
) -> None:
    _client, tasks = client_and_worker
    seen: list[tuple[str, Any]] = []
    result = tasks["steps"].delay(2)
    assert result.get(timeout=10, on_message=lambda m: seen.append((m["status"], m["result"])))
    assert [status for status, _ in seen] == ["STARTED", "PROGRESS", "PROGRESS", "SUCCESS"]
    assert [value for _, value in seen[1:]] == [{"step": 0}, {"step": 1}, "done"]


def test_a_failure_comes_back_as_its_exception(
    client_and_worker: tuple[Celery, dict[str, Any]],
) -> None:
    _client, tasks = client_and_worker
    result = tasks["fail"].delay("out of stock")
    with pytest.raises(Failed, match="out of stock"):
        result.get(timeout=10)
    assert result.state == states.FAILURE


def test_a_retried_task_replies_to_the_client_that_sent_it(
    client_and_worker: tuple[Celery, dict[str, Any]],
) -> None:
    # The worker sends the retry: its replies must still go to the client, not the worker.
    _client, tasks = client_and_worker
    seen: list[str] = []
    assert tasks["flaky"].delay().get(timeout=10, on_message=lambda m: seen.append(m["status"]))
    # The retry may run and succeed before the first run's RETRY is published; a state
    # arriving after SUCCESS is not kept (as on every backend).
    assert seen in (["RETRY", "SUCCESS"], ["SUCCESS"])


def test_replies_for_other_tasks_are_kept_for_their_results(
    client_and_worker: tuple[Celery, dict[str, Any]],
) -> None:
    client, tasks = client_and_worker
    first, second = tasks["add"].delay(1, 1), tasks["add"].delay(2, 2)
    assert second.get(timeout=10) == 4
    # The first reply may have been taken while waiting for the second: it was kept,
    # also for a result object made afresh, in another thread.
    answers: list[Any] = []
    thread = threading.Thread(
        target=lambda: answers.append(client.AsyncResult(first.id).get(timeout=10))
    )
    thread.start()
    thread.join(15)
    assert answers == [2]
    assert first.get(timeout=10) == 2


def test_many_threads_and_event_loops_wait_at_once(
    client_and_worker: tuple[Celery, dict[str, Any]],
) -> None:
    _client, tasks = client_and_worker
    results = [tasks["add"].delay(n, 100) for n in range(20)]
    answers: dict[int, Any] = {}

    def wait(n: int) -> None:
        answers[n] = results[n].get(timeout=10)

    async def await_rest() -> list[Any]:
        return list(await asyncio.gather(*(r.aget(timeout=10) for r in results[10:])))

    threads = [threading.Thread(target=wait, args=(n,)) for n in range(10)]
    for thread in threads:
        thread.start()
    assert asyncio.run(await_rest()) == [n + 100 for n in range(10, 20)]
    for thread in threads:
        thread.join(15)
    assert answers == {n: n + 100 for n in range(10)}


def test_asyncio_clients_send_and_await(client_and_worker: tuple[Celery, dict[str, Any]]) -> None:
    _client, tasks = client_and_worker

    async def main() -> Any:
        result = await tasks["add"].adelay(20, 22)
        return await result.aget(timeout=10)

    assert asyncio.run(main()) == 42


def test_results_are_private_to_the_client_that_sent_the_task(
    make_app: Callable[..., tuple[Celery, dict[str, Any]]],
    client_and_worker: tuple[Celery, dict[str, Any]],
) -> None:
    _client, tasks = client_and_worker
    other, _ = make_app()
    result = tasks["add"].delay(1, 2)
    assert result.get(timeout=10) == 3
    with pytest.raises(TimeoutError):
        other.AsyncResult(result.id).get(timeout=0.2)


# -- the wire format ------------------------------------------------------------------------------
def test_task_messages_reply_to_the_clients_queue_which_exists_before_sending(
    broker_url: str, make_app: Callable[..., tuple[Celery, dict[str, Any]]]
) -> None:
    client, tasks = make_app()
    worker_app, _ = make_app()
    result = tasks["add"].delay(4, 4)
    (message,) = take(broker_url, "celery")
    assert (message.properties.reply_to, message.properties.correlation_id) == (
        client.oid,
        result.id,
    )
    # A worker replying now (before the client ever looked) finds the queue there.
    worker_app.backend.mark_as_done(
        result.id, 8, request={"reply_to": client.oid, "correlation_id": result.id}
    )
    assert result.get(timeout=10) == 8


def test_a_reply_is_the_meta_sent_to_the_default_exchange_with_the_correlation_id(
    broker_url: str,
) -> None:
    queue = Queue(f"client-{uuid.uuid4().hex}", durable=False, auto_delete=True)
    with Connection(broker_url) as keeper:
        keeper.declare(queue)
        worker_side = backend_from_url("rpc://", broker_url=broker_url)
        try:
            request = {"reply_to": queue.name, "correlation_id": "corr-1", "group": "g1"}
            worker_side.mark_as_done("t1", {"total": 3}, request=request)
        finally:
            worker_side.close()
        (message,) = take(broker_url, queue.name)
    props = message.properties
    assert (props.correlation_id, props.content_type, props.delivery_mode) == (
        "corr-1",
        "application/json",
        1,  # transient, as Celery's rpc backend sends results by default
    )
    assert (message.delivery_info["exchange"], message.delivery_info["routing_key"]) == (
        "",
        queue.name,
    )
    meta = json.loads(message.body)
    assert {k: meta[k] for k in ("status", "result", "traceback", "children", "task_id")} == {
        "status": "SUCCESS",
        "result": {"total": 3},
        "traceback": None,
        "children": [],
        "task_id": "t1",
    }
    assert meta["group_id"] == "g1" and meta["date_done"]


def test_a_reply_as_celery_sends_it_is_read(
    broker_url: str, make_app: Callable[..., tuple[Celery, dict[str, Any]]]
) -> None:
    client, tasks = make_app()
    result = tasks["add"].delay(1, 1)
    celery_body = {
        "task_id": result.id,
        "status": "SUCCESS",
        "result": 2,
        "traceback": None,
        "children": [],
    }
    with Connection(broker_url) as conn:
        conn.Producer().publish(celery_body, client.oid, correlation_id=result.id, delivery_mode=1)
    assert result.get(timeout=10) == 2


def test_states_of_a_task_sent_without_reply_to_are_not_published(broker_url: str) -> None:
    queue = Queue(f"client-{uuid.uuid4().hex}", durable=False, auto_delete=True)
    with Connection(broker_url) as keeper:
        keeper.declare(queue)
        worker_side = backend_from_url("rpc://", broker_url=broker_url)
        try:
            metas = worker_side.store_many(
                [
                    ("t1", 1, states.SUCCESS, None, {"reply_to": "", "correlation_id": "t1"}),
                    ("t2", 2, states.SUCCESS, None, {"reply_to": queue.name}),
                ]
            )
        finally:
            worker_side.close()
        assert [m["task_id"] for m in metas] == ["t1", "t2"]
        (message,) = take(broker_url, queue.name)
        assert message.properties.correlation_id == "t2"
        assert keeper.transport.queue_length(queue.name) == 0


def test_a_pickled_reply_to_a_json_only_client_is_refused_when_read(
    broker_url: str, make_app: Callable[..., tuple[Celery, dict[str, Any]]]
) -> None:
    client, tasks = make_app()
    result = tasks["add"].delay(1, 1)
    worker_side = backend_from_url(
        "rpc://", broker_url=broker_url, serializer="pickle", accept=["pickle"]
    )
    try:
        worker_side.mark_as_done(result.id, {1, 2}, request={"reply_to": client.oid})
    finally:
        worker_side.close()
    with pytest.raises(ContentDisallowed):
        result.get(timeout=10)


# -- what rpc does not do -------------------------------------------------------------------------
def test_groups_are_not_stored(broker_url: str) -> None:
    backend = backend_from_url("rpc://", broker_url=broker_url)
    try:
        for call in (
            lambda: backend.save_group("g", ["a"]),
            lambda: backend.restore_group("g"),
            lambda: backend.delete_group("g"),
        ):
            with pytest.raises(NotImplementedError, match="does not store groups"):
                call()
    finally:
        backend.close()


def test_rpc_needs_the_broker_to_send_results_over() -> None:
    with pytest.raises(ImproperlyConfigured, match="broker_url"):
        backend_from_url("rpc://")


def test_an_app_gives_its_rpc_backend_its_broker_and_its_oid(
    broker_url: str, make_app: Callable[..., tuple[Celery, dict[str, Any]]]
) -> None:
    app, _ = make_app()
    backend = app.backend
    assert isinstance(backend, RPCBackend)
    assert (backend.broker_url, backend.oid) == (broker_url, app.oid)


def test_other_backends_send_tasks_without_reply_to(
    broker_url: str, make_app: Callable[..., tuple[Celery, dict[str, Any]]]
) -> None:
    _app, tasks = make_app(backend=f"memory://{uuid.uuid4().hex}")
    tasks["add"].delay(1, 1)
    (message,) = take(broker_url, "celery")
    assert message.properties.reply_to == ""


# -- a prefork worker in another process ----------------------------------------------------------
PROJ = """\
from pathlib import Path

from celeriac import Celery
from celeriac.signals import worker_ready

app = Celery("proj", broker={url!r}, backend="rpc://")


@app.task(name="rpc.add")
def add(x, y):
    return x + y


@worker_ready.connect
def announce(**_):
    Path({ready!r}).touch()
"""


def test_a_prefork_worker_in_another_process_replies(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    ready = tmp_path / "worker.ready"
    (tmp_path / "proj.py").write_text(PROJ.format(url=url, ready=str(ready)))
    client = Celery("client", broker=url, backend="rpc://", set_as_current=False)
    add = define_tasks(client)["add"]
    celeriac = Path(sys.executable).with_name("celeriac")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    with open(tmp_path / "worker.log", "w") as log:
        worker = subprocess.Popen(
            [str(celeriac), "-A", "proj", "worker", "-P", "prefork", "-c", "2"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert worker.poll() is None and time.monotonic() < deadline, (
                tmp_path / "worker.log"
            ).read_text()
            time.sleep(0.02)
        results = [add.delay(n, n) for n in range(5)]
        assert [r.get(timeout=15) for r in results] == [0, 2, 4, 6, 8]
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(5)
        client.close()
