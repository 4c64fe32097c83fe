"""celeriac's events read by Celery's own event code, and Celery's events read by ours.

No broker: the events go through JSON as they would on the wire, and Celery's receiver
(``celery.events.receiver.EventReceiver``, which Flower uses too) and cluster state take
them in. Interop over a real RabbitMQ is in ``tests/interop``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from celeriac import Celery, states
from celeriac.events import EventDispatcher, State

celery = pytest.importorskip("celery")
from celery.events.event import Event as celery_event  # noqa: E402
from celery.events.receiver import EventReceiver as CeleryReceiver  # noqa: E402
from celery.events.state import State as CeleryState  # noqa: E402


@pytest.fixture
def celery_app() -> Iterator[Any]:
    app = celery.Celery("compat", broker="memory://", set_as_current=False)
    yield app
    app.close()


def wire(body: Any) -> Any:
    return json.loads(json.dumps(body))


def test_celerys_receiver_and_state_understand_celeriacs_events(
    memory_app: Celery, celery_app: Any
) -> None:
    with memory_app.connection() as conn:
        dispatcher = EventDispatcher(conn, "celeriac@host")
        online = dispatcher.event(
            "worker-online", freq=2.0, sw_ident="py-celeriac", sw_ver="0.1.0", sw_sys="Linux",
            active=0, processed=0, loadavg=[0.1, 0.2, 0.3],
        )  # fmt: skip
        task = [
            dispatcher.event("task-received", uuid="t1", name="proj.add", args="(2, 3)",
                             kwargs="{}", retries=0, eta=None, expires=None, root_id="t1",
                             parent_id=None),
            dispatcher.event("task-started", uuid="t1"),
            dispatcher.event("task-succeeded", uuid="t1", result="5", runtime=0.01),
        ]  # fmt: skip
    celery_state = CeleryState()
    with celery_app.connection_for_read() as conn:
        receiver = CeleryReceiver(
            conn.channel(), handlers={"*": celery_state.event}, app=celery_app
        )
        receiver._receive(wire(online.encode()), None)  # one event per message
        receiver._receive(wire([e.encode() for e in task]), None)  # the worker's lists
    worker = celery_state.workers["celeriac@host"]
    assert worker.alive and worker.sw_ident == "py-celeriac" and worker.freq == 2.0
    celery_task = celery_state.tasks["t1"]
    assert celery_task.state == "SUCCESS"
    assert celery_task.name == "proj.add" and celery_task.args == "(2, 3)"
    assert celery_task.result == "5" and celery_task.runtime == 0.01
    assert celery_task.worker.hostname == "celeriac@host"
    assert celery_task.received < celery_task.started <= celery_task.succeeded


def test_celeriacs_state_understands_celerys_events() -> None:
    now = time.time()
    base = {"hostname": "celery@host", "utcoffset": 0, "pid": 1, "clock": 1}
    events = [
        celery_event("worker-heartbeat", freq=2.0, active=1, processed=3, **base),
        celery_event("task-received", uuid="t1", name="proj.mul", args="(2, 4)", **base),
        celery_event("task-failed", uuid="t1", exception="KeyError('x')", traceback="tb", **base),
    ]
    state = State()
    for event in events:
        state.event(wire(event))
    assert state.workers["celery@host"].alive(now + 1)
    assert state.tasks["t1"].state == states.FAILURE
    assert state.tasks["t1"].name == "proj.mul" and state.tasks["t1"].exception == "KeyError('x')"
