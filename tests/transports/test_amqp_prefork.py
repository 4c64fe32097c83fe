"""Prefork children on RabbitMQ: what a task publishes is not lost when its child exits.

Without publisher confirms, an AMQP publish returns once handed to the connection's network
thread, and a pool child leaves through ``os._exit``: unless the child flushes its
connections first, a message a task sent just before its child retired (a chain's next step,
a link callback, a task it sent itself) may never reach the broker. ``max_tasks_per_child=1``
retires a child right after each task, the worst case.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

E2E_DIR = Path(__file__).resolve().parents[1] / "e2e"
if str(E2E_DIR) not in sys.path:
    sys.path.insert(0, str(E2E_DIR))

from e2e_support import Stack  # noqa: E402

from celeriac import chain  # noqa: E402
from celeriac.messaging import Queue  # noqa: E402

TIMEOUT = 20.0

#: The worker's project: the e2e app, and a task that publishes a burst and returns.
PROJ = """\
from pathlib import Path

from e2e_tasks import make_app

from celeriac.signals import worker_process_shutdown, worker_ready

WORKDIR = Path({workdir!r})
app, tasks = make_app({url!r}, WORKDIR, backend={backend!r}, **{settings!r})


@app.task(name="h8.burst")
def burst(queue: str, count: int) -> int:
    with app.producer_pool.acquire() as producer:
        for n in range(count):
            producer.publish({{"n": n}}, queue)
    return count


@worker_process_shutdown.connect
def goodbye(pid, exitcode, **_):
    (WORKDIR / f"goodbye.{{pid}}").write_text(str(exitcode))


@worker_ready.connect
def announce(**_):
    (WORKDIR / "worker.ready").touch()
"""


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack("amqp", "prefork", tmp_path)
    settings = stack.server_settings
    (tmp_path / "proj.py").write_text(
        PROJ.format(
            workdir=str(tmp_path), url=stack.url, backend=stack.backend_url, settings=settings
        )
    )
    yield stack
    stack.close()


def test_bursts_published_right_before_their_children_retire_arrive_whole(stack: Stack) -> None:
    sink = Queue(f"h8-sink-{uuid.uuid4().hex[:10]}")
    count = 4000
    with stack.app.connection() as conn:
        conn.declare(sink)
        try:
            with stack.worker(concurrency=1, max_tasks_per_child=1):
                # Each in a child of its own, which returns with much of its burst still
                # handed to its connection's network thread, and exits.
                results = [stack.app.send_task("h8.burst", (sink.name, count)) for _ in range(2)]
                assert [r.get(timeout=TIMEOUT) for r in results] == [count, count]
            assert conn.transport.queue_length(sink.name) == 2 * count
        finally:
            conn.transport.delete_queue(sink.name)


def test_chain_steps_and_link_callbacks_sent_by_retiring_children_run(stack: Stack) -> None:
    add = stack.tasks.add
    with stack.worker(concurrency=1, max_tasks_per_child=1):
        # Each step runs in a new child, which publishes the next step and exits at once.
        steps = chain(add.s(1, 1), *(add.s(i) for i in range(2, 6)))
        linked = add.apply_async((10, 20), link=add.s(100))
        assert steps.apply_async().get(timeout=TIMEOUT) == sum(range(1, 6)) + 1
        assert linked.get(timeout=TIMEOUT) == 30
        assert linked.children, "the link callback was never sent"
        assert linked.children[0].get(timeout=TIMEOUT) == 130
    # Each child said goodbye (Celery's worker_process_shutdown) with its exit code.
    goodbyes = [p.read_text() for p in stack.workdir.glob("goodbye.*")]
    assert len(goodbyes) >= 7 and set(goodbyes) == {"0"}
