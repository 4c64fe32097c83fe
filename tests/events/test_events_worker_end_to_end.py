"""A running worker's events, as a receiver sees them: worker-online, heartbeats and
worker-offline always; task-received/started/succeeded/failed/retried/revoked with -E.

Workers run in a thread (threads, asyncio pools) on the memory broker and SQLite, and as a
``celeriac worker -P prefork -E`` subprocess on SQLite.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from e2e_support import Stack, WorkerProcess

import celeriac
from celeriac import states
from celeriac.events import Event, EventReceiver, State

Collected = list[Event]

#: The ``proj`` module of a ``celeriac -A proj worker -E`` subprocess.
PROJ = """\
from pathlib import Path

from e2e_tasks import make_app

from celeriac.signals import worker_ready

WORKDIR = Path({workdir!r})
app, tasks = make_app({url!r}, WORKDIR)


@worker_ready.connect
def announce(**_):
    (WORKDIR / "worker.ready").touch()
"""


@contextmanager
def listening(stack: Stack) -> Iterator[EventReceiver]:
    """A receiver whose queue exists from now on (so it hears worker-online)."""
    with stack.app.connection() as conn:
        receiver = stack.app.events.Receiver(conn)
        receiver.consume()
        try:
            yield receiver
        finally:
            receiver.close()


def collect(
    receiver: EventReceiver,
    seen: Collected,
    done: Callable[[Collected], bool],
    timeout: float = 15.0,
) -> Collected:
    """Add arriving events to ``seen`` until ``done(seen)``; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not done(seen):
        if time.monotonic() > deadline:
            pytest.fail(f"events not seen in {timeout}s; got {[e.type for e in seen]}")
        seen.extend(receiver.itercapture(timeout=0.1))
    return seen


def of(seen: Collected, kind: str, uuid: str | None = None) -> list[Event]:
    return [e for e in seen if e.type == kind and (uuid is None or e.uuid == uuid)]


def has(kind: str, uuid: str | None = None, count: int = 1) -> Callable[[Collected], bool]:
    return lambda seen: len(of(seen, kind, uuid)) >= count


def both(*checks: Callable[[Collected], bool]) -> Callable[[Collected], bool]:
    return lambda seen: all(check(seen) for check in checks)


def check_worker_event(event: Event, hostname: str, freq: float) -> None:
    assert event.hostname == hostname
    assert event["freq"] == freq
    assert event["sw_ident"] == "py-celeriac"
    assert event["sw_ver"] == celeriac.__version__
    assert event["sw_sys"] == platform.system()
    assert isinstance(event["active"], int) and isinstance(event["processed"], int)
    assert len(event["loadavg"]) == 3


def check_task_lifecycle(seen: Collected, task_id: str, name: str) -> None:
    (received,) = of(seen, "task-received", task_id)
    (started,) = of(seen, "task-started", task_id)
    assert received["name"] == name
    assert received["retries"] == 0 and received["eta"] is None and received["expires"] is None
    assert received["root_id"] == task_id and received["parent_id"] is None
    assert received.clock < started.clock
    assert received.hostname == started.hostname


@pytest.mark.parametrize(("transport", "pool"), [("memory", "threads"), ("sqlite", "threads")])
def test_a_worker_with_task_events_reports_every_step(
    make_stack: Callable[..., Stack], transport: str, pool: str
) -> None:
    stack = make_stack(transport, pool)
    seen: Collected = []
    with listening(stack) as receiver:
        with stack.worker(task_events=True, heartbeat_interval=0.2) as worker:
            hostname = worker.hostname  # type: ignore[union-attr]
            add = stack.tasks.add.delay(2, 3)
            fail = stack.tasks.fail.delay("boom")
            flaky = stack.tasks.flaky.delay()
            past = datetime.now(UTC) - timedelta(seconds=5)
            expired = stack.app.send_task("e2e.add", (1, 1), expires=past)
            assert add.get(timeout=10) == 5
            collect(
                receiver,
                seen,
                both(
                    has("task-succeeded", add.id),
                    has("task-failed", fail.id),
                    has("task-failed", flaky.id),
                    has("task-revoked", expired.id),
                    has("worker-heartbeat"),
                ),
            )
        collect(receiver, seen, has("worker-offline"))

    (online,) = of(seen, "worker-online")
    check_worker_event(online, hostname, 0.2)
    check_worker_event(of(seen, "worker-heartbeat")[0], hostname, 0.2)
    offline = of(seen, "worker-offline")[0]
    check_worker_event(offline, hostname, 0.2)
    assert offline["processed"] >= 3 and offline["active"] == 0

    check_task_lifecycle(seen, add.id, "e2e.add")
    received = of(seen, "task-received", add.id)[0]
    assert (received["args"], received["kwargs"]) == ("(2, 3)", "{}")
    (succeeded,) = of(seen, "task-succeeded", add.id)
    assert succeeded["result"] == "5" and succeeded["runtime"] >= 0
    assert succeeded.clock > of(seen, "task-started", add.id)[0].clock

    check_task_lifecycle(seen, fail.id, "e2e.fail")
    (failed,) = of(seen, "task-failed", fail.id)
    assert failed["exception"] == "ValueError('boom', 42)"
    assert "ValueError: ('boom', 42)" in failed["traceback"]

    retried = of(seen, "task-retried", flaky.id)
    assert len(retried) == 2
    assert retried[0]["exception"] == "ValueError('flaky', 1)" and retried[0]["traceback"]
    assert [e["retries"] for e in of(seen, "task-received", flaky.id)] == [0, 1, 2]

    (revoked,) = of(seen, "task-revoked", expired.id)
    assert (revoked["expired"], revoked["terminated"], revoked["signum"]) == (True, False, None)
    assert of(seen, "task-received", expired.id) == []  # Celery's order: revoked, unreceived

    clocks = [e.clock for e in seen]
    assert len(set(clocks)) == len(clocks)  # one sender: every clock value once

    state = State()
    for event in seen:
        state.event(event)
    assert state.tasks[add.id].state == states.SUCCESS
    assert state.tasks[fail.id].state == states.FAILURE
    assert state.tasks[flaky.id].state == states.FAILURE
    assert state.tasks[expired.id].state == states.REVOKED
    assert state.workers[hostname].status() == "OFFLINE"


def test_without_task_events_a_worker_heartbeats_and_sends_no_task_events(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack("memory", "threads")
    seen: Collected = []
    with listening(stack) as receiver, stack.worker(heartbeat_interval=0.2):
        assert stack.tasks.add.delay(1, 2).get(timeout=10) == 3
        collect(receiver, seen, lambda s: _processed(s) >= 1)
    assert of(seen, "worker-online")
    assert [e for e in seen if e.group == "task"] == []


def _processed(seen: Collected) -> int:
    beats = of(seen, "worker-heartbeat")
    return int(beats[-1]["processed"]) if beats else 0


def test_the_worker_send_task_events_setting_turns_task_events_on(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack("memory", "asyncio", worker_send_task_events=True)
    seen: Collected = []
    with listening(stack) as receiver, stack.worker(heartbeat_interval=0.2):
        result = stack.tasks.add.delay(4, 4)
        collect(receiver, seen, has("task-succeeded", result.id))
    check_task_lifecycle(seen, result.id, "e2e.add")


def test_a_queued_task_is_started_only_when_the_one_before_it_finished(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack("memory", "threads")
    seen: Collected = []
    with listening(stack) as receiver, stack.worker(task_events=True, concurrency=1):
        first = stack.tasks.sleepy.delay(0.2)
        second = stack.tasks.sleepy.delay(0.01)
        collect(receiver, seen, has("task-succeeded", second.id))
    (first_done,) = of(seen, "task-succeeded", first.id)
    (second_started,) = of(seen, "task-started", second.id)
    assert second_started.clock > first_done.clock
    assert second_started.timestamp >= first_done.timestamp


def test_a_prefork_worker_started_with_dash_e_reports_tasks(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack("sqlite", "prefork")
    (stack.workdir / "proj.py").write_text(PROJ.format(workdir=str(stack.workdir), url=stack.url))
    seen: Collected = []
    with listening(stack) as receiver:
        process = WorkerProcess(
            stack.workdir,
            ["-P", "prefork", "-c", "2", "-E", "--heartbeat-interval", "0.3", "-n", "pf@%h"],
        )
        stack.processes.append(process)
        process.wait_ready()
        add = stack.tasks.add.delay(20, 22)
        fail = stack.tasks.fail.delay("in a child")
        collect(
            receiver,
            seen,
            both(has("task-succeeded", add.id), has("task-failed", fail.id)),
        )
        collect(receiver, seen, lambda s: _processed(s) >= 2)
        process.close()
        collect(receiver, seen, has("worker-offline"))
    hostname = of(seen, "worker-online")[0].hostname
    assert hostname.startswith("pf@")
    check_worker_event(of(seen, "worker-heartbeat")[-1], hostname, 0.3)
    check_task_lifecycle(seen, add.id, "e2e.add")
    assert of(seen, "task-succeeded", add.id)[0]["result"] == "42"
    check_task_lifecycle(seen, fail.id, "e2e.fail")
    assert of(seen, "task-failed", fail.id)[0]["exception"] == "ValueError('in a child', 42)"
    assert all(e.pid == process.pid for e in seen if e.group == "task")


def test_a_heartbeat_can_be_asked_for_between_beats(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("memory", "threads")
    seen: Collected = []
    with listening(stack) as receiver, stack.worker(heartbeat_interval=60) as worker:
        collect(receiver, seen, has("worker-online"))
        events = worker.consumer.events  # type: ignore[union-attr]
        worker._loop.call_soon_threadsafe(events.heartbeat)  # type: ignore[union-attr]
        collect(receiver, seen, has("worker-heartbeat"), timeout=5)
    assert of(seen, "worker-heartbeat")[0]["freq"] == 60
