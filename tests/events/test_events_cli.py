"""``celeriac events``: ``--dump`` prints raw events one per line; the live view draws
workers, rates and recent tasks. The worker runs in a thread on the same memory broker."""

from __future__ import annotations

import json
import sys
import textwrap
import threading
import uuid
import weakref
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from click.testing import CliRunner
from e2e_support import running_worker

from celeriac.app import state
from celeriac.cli import main


@pytest.fixture
def app_module(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ModuleType]:
    """An importable module holding an app on a memory broker, with one task."""
    name = f"evapp_{uuid.uuid4().hex[:8]}"
    url = f"memory://{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(f"""\
            from celeriac import Celery

            app = Celery("evapp", broker={url!r}, backend={url!r})

            @app.task(name="evapp.add")
            def add(x, y):
                return x + y
            """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(state, "_all_apps", weakref.WeakSet(state.all_apps()))
    monkeypatch.setattr(state, "_current_app", state._current_app)
    module = __import__(name)
    yield module
    module.app.close()
    sys.modules.pop(name, None)


def test_dump_prints_each_event_as_a_json_line(app_module: ModuleType) -> None:
    with running_worker(app_module.app, "threads", task_events=True, heartbeat_interval=0.1):
        result = CliRunner().invoke(
            main, ["-A", app_module.__name__, "events", "--dump", "-n", "2", "--timeout", "10"]
        )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 2
    events = [json.loads(line) for line in lines]
    assert [e["type"] for e in events] == ["worker-heartbeat", "worker-heartbeat"]
    assert all(e["hostname"] and e["clock"] and e["sw_ident"] == "py-celeriac" for e in events)


def test_the_live_view_shows_the_worker_and_its_tasks(app_module: ModuleType) -> None:
    app = app_module.app
    with running_worker(app, "threads", task_events=True, heartbeat_interval=0.1) as worker:
        sender = threading.Timer(0.3, lambda: app_module.add.delay(2, 2).get(timeout=10))
        sender.start()
        try:
            result = CliRunner().invoke(
                main, ["-A", app_module.__name__, "events", "-F", "0.25", "--timeout", "1.5"]
            )
        finally:
            sender.join()
    assert result.exit_code == 0, result.output
    last = result.output.split("celeriac events  ")[-1]  # each frame starts with this
    assert "\x1b[2J" not in result.output  # not a terminal: frames follow each other
    assert "workers online: 1" in last
    assert worker.hostname in last and "ONLINE" in last
    assert "SUCCESS 1" in last
    assert "evapp.add" in last
    assert "succeeded" in last  # the rates line
