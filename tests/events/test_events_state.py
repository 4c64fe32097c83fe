"""The cluster state built from events: workers alive or not, task states and timelines,
counts and rates, bounded memory, and the text of the live view."""

from __future__ import annotations

import json
from typing import Any

from celeriac import states
from celeriac.events import Event, State
from celeriac.events.monitor import render

NOW = 1_700_000_000.0


def ev(kind: str, at: float = NOW, host: str = "w1@h", clock: int = 1, **fields: Any) -> Event:
    return Event(kind, host, at, 0, 100, clock, fields, local_received=at)


def test_a_worker_is_alive_until_two_heartbeat_intervals_pass() -> None:
    state = State()
    state.event(ev("worker-online", freq=2.0, sw_ident="py-celeriac", active=0, processed=0))
    state.event(ev("worker-heartbeat", at=NOW + 2, freq=2.0, active=3, processed=7,
                   loadavg=[0.5, 0.25, 0.1]))  # fmt: skip
    worker = state.workers["w1@h"]
    assert worker.alive(NOW + 5.9)
    assert not worker.alive(NOW + 6.1)
    assert (worker.active, worker.processed, worker.loadavg) == (3, 7, [0.5, 0.25, 0.1])
    assert worker.sw_ident == "py-celeriac" and worker.pid == 100
    assert [w.hostname for w in state.alive_workers(NOW + 3)] == ["w1@h"]
    assert state.alive_workers(NOW + 10) == []


def test_worker_offline_makes_it_dead_at_once() -> None:
    state = State()
    state.event(ev("worker-online", freq=2.0))
    state.event(ev("worker-offline", at=NOW + 1, freq=2.0))
    assert not state.workers["w1@h"].alive(NOW + 1.5)
    assert state.workers["w1@h"].status(NOW + 1.5) == "OFFLINE"


def test_a_task_goes_through_its_states_and_keeps_a_timeline() -> None:
    state = State()
    state.event(ev("task-received", uuid="t1", name="proj.add", args="(2, 3)", kwargs="{}",
                   retries=0, root_id="t1", parent_id=None))  # fmt: skip
    assert state.tasks["t1"].state == states.RECEIVED
    state.event(ev("task-started", at=NOW + 1, uuid="t1"))
    assert state.tasks["t1"].state == states.STARTED
    state.event(ev("task-succeeded", at=NOW + 2, uuid="t1", result="5", runtime=0.25))
    task = state.tasks["t1"]
    assert (task.state, task.name, task.args, task.result, task.runtime) == (
        states.SUCCESS,
        "proj.add",
        "(2, 3)",
        "5",
        0.25,
    )
    assert task.worker == "w1@h" and task.ready
    assert task.timeline == [
        ("task-received", NOW),
        ("task-started", NOW + 1),
        ("task-succeeded", NOW + 2),
    ]
    assert task.times == {"received": NOW, "started": NOW + 1, "succeeded": NOW + 2}
    assert state.task_count == 1 and state.event_count == 3


def test_a_late_received_event_fills_in_fields_but_does_not_move_the_state_back() -> None:
    state = State()
    state.event(ev("task-failed", uuid="t1", exception="ValueError('x')", traceback="tb"))
    state.event(ev("task-received", at=NOW - 1, uuid="t1", name="proj.fail", args="()"))
    task = state.tasks["t1"]
    assert task.state == states.FAILURE
    assert task.name == "proj.fail" and task.exception == "ValueError('x')"


def test_a_retried_task_can_succeed_later() -> None:
    state = State()
    state.event(ev("task-received", uuid="t1", name="proj.flaky"))
    state.event(ev("task-retried", at=NOW + 1, uuid="t1", exception="KeyError('k')"))
    assert state.tasks["t1"].state == states.RETRY
    state.event(ev("task-received", at=NOW + 2, uuid="t1", name="proj.flaky", retries=1))
    state.event(ev("task-succeeded", at=NOW + 3, uuid="t1", result="None", runtime=0.1))
    assert state.tasks["t1"].state == states.SUCCESS
    assert state.tasks["t1"].retries == 1


def test_revoked_and_rejected_fields_are_kept() -> None:
    state = State()
    state.event(ev("task-revoked", uuid="t1", terminated=False, signum=None, expired=True))
    state.event(ev("task-rejected", uuid="t2", requeue=True))
    assert state.tasks["t1"].state == states.REVOKED
    assert state.tasks["t1"].extra["expired"] is True
    assert state.tasks["t2"].state == states.REJECTED
    assert state.tasks["t2"].extra["requeue"] is True


def test_task_events_count_as_signs_of_life_but_task_sent_does_not() -> None:
    state = State()
    state.event(ev("task-sent", host="gen1@client", uuid="t1", name="proj.add"))
    assert "gen1@client" not in state.workers
    assert state.tasks["t1"].state == states.PENDING and state.tasks["t1"].worker is None
    state.event(ev("task-received", host="w2@h", uuid="t1", name="proj.add"))
    assert state.workers["w2@h"].alive(NOW + 1)


def test_counts_and_rates() -> None:
    state = State(rate_window=10.0)
    for i in range(20):
        state.event(ev("task-received", at=NOW + i * 0.25, uuid=f"t{i}", name="proj.add"))
    for i in range(15):
        state.event(ev("task-succeeded", at=NOW + i * 0.25, uuid=f"t{i}", runtime=0.1))
    state.event(ev("task-failed", at=NOW + 4, uuid="t15", exception="E()"))
    assert state.state_counts() == {states.SUCCESS: 15, states.FAILURE: 1, states.RECEIVED: 4}
    assert state.rate("task-received", now=NOW + 5) == 2.0  # 20 in 10 s
    assert state.task_rates(now=NOW + 5)["task-succeeded"] == 1.5
    assert state.rate("task-received", now=NOW + 30) == 0.0
    assert state.totals["task-received"] == 20
    assert state.task_types() == ["proj.add"]


def test_memory_is_bounded_forgetting_the_least_recently_updated_tasks() -> None:
    state = State(max_tasks=3)
    for i in range(5):
        state.event(ev("task-received", at=NOW + i, uuid=f"t{i}", name="n"))
    assert list(state.tasks) == ["t2", "t3", "t4"]
    state.event(ev("task-started", at=NOW + 6, uuid="t2"))
    state.event(ev("task-received", at=NOW + 7, uuid="t5", name="n"))
    assert list(state.tasks) == ["t4", "t2", "t5"]


def test_celery_event_dicts_are_accepted_and_the_snapshot_is_json() -> None:
    state = State()
    state.event({"type": "worker-heartbeat", "hostname": "celery@h", "timestamp": NOW,
                 "utcoffset": 0, "pid": 9, "clock": 4, "freq": 2.0, "active": 1})  # fmt: skip
    state.event(ev("task-received", uuid="t1", name="proj.add"))
    snapshot = json.loads(json.dumps(state.snapshot(now=NOW + 1)))
    assert [w["hostname"] for w in snapshot["workers"]] == ["celery@h", "w1@h"]
    assert snapshot["tasks"][0]["uuid"] == "t1"
    assert snapshot["states"] == {states.RECEIVED: 1}


def test_clear_forgets_finished_tasks_only() -> None:
    state = State()
    state.event(ev("task-succeeded", uuid="done", result="1"))
    state.event(ev("task-started", uuid="running"))
    state.clear()
    assert list(state.tasks) == ["running"] and state.event_count == 0


def test_the_live_view_shows_workers_rates_states_and_recent_tasks() -> None:
    state = State()
    state.event(ev("worker-heartbeat", freq=2.0, active=1, processed=41, loadavg=[0.5, 0, 0]))
    state.event(ev("task-received", uuid="t1", name="proj.add"))
    state.event(ev("task-succeeded", at=NOW + 0.5, uuid="t1", result="5", runtime=0.125))
    state.event(ev("task-received", uuid="t2", name="proj.fail"))
    state.event(ev("task-failed", at=NOW + 0.6, uuid="t2", exception="ValueError('x')"))
    text = render(state, now=NOW + 1)
    assert "workers online: 1" in text
    assert "w1@h" in text and "ONLINE" in text and "processed      41" in text
    assert "received 0.2" in text and "succeeded 0.1" in text and "failed 0.1" in text
    assert "FAILURE 1  SUCCESS 1" in text
    lines = text.splitlines()
    recent = lines[lines.index("RECENT TASKS") + 2 :]
    assert "proj.fail" in recent[0] and "ValueError('x')" in recent[0]
    assert "proj.add" in recent[1] and "0.1250s" in recent[1]
