"""``celeriac status / inspect / control / purge / list bindings / report`` against workers
running on an SQLite broker (in this process; the command reads the same file)."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from e2e_support import Stack, wait_until

from celeriac.cli import main

A, B = "a@cli", "b@cli"

Run = Callable[..., Result]


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack("sqlite", "threads")


@pytest.fixture
def celeriac(stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Run]:
    """Runs ``celeriac -A <module> ...`` with an app on the stack's broker file."""
    module = f"cliproj_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "from e2e_tasks import make_app\n"
        f"app, tasks = make_app({stack.url!r}, {str(tmp_path)!r})\n"
        "app.conf.result_backend_transport_options = {'password': 'hunter2'}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))

    def run(*args: str, stdin: str | None = None) -> Result:
        return CliRunner().invoke(main, ["-A", module, *args], input=stdin)

    yield run
    loaded = sys.modules.pop(module, None)
    if loaded is not None:
        loaded.app.close()


def test_status_lists_the_running_workers(stack: Stack, celeriac: Run) -> None:
    with stack.worker(hostname=A), stack.worker(hostname=B):
        result = celeriac("status", "-t", "0.5")
        assert result.exit_code == 0, result.output
        assert f"-> {A}: OK" in result.output and f"-> {B}: OK" in result.output
        assert result.output.rstrip().endswith("2 nodes online.")
        as_json = celeriac("status", "-d", f"{A},{B}", "--json")
        assert json.loads(as_json.output) == {A: {"ok": "pong"}, B: {"ok": "pong"}}


def test_status_without_workers_says_so_and_fails(celeriac: Run) -> None:
    result = celeriac("status", "-t", "0.2")
    assert result.exit_code == 69
    assert "No nodes replied within time constraint" in result.output


def test_inspect_prints_each_nodes_reply_and_json_for_scripts(stack: Stack, celeriac: Run) -> None:
    with stack.worker(hostname=A):
        running = stack.tasks.gate.delay("cli")
        wait_until(lambda: stack.records("cli"), what="the task to start")
        result = celeriac("inspect", "active", "-d", A)
        assert result.exit_code == 0, result.output
        assert f"-> {A}: OK" in result.output and running.id in result.output
        replies = json.loads(celeriac("inspect", "active", "-d", A, "-j").output)
        assert [task["id"] for task in replies[A]] == [running.id]
        found = json.loads(celeriac("inspect", "query_task", running.id, "-d", A, "-j").output)
        assert found[A][running.id][0] == "active"
        stack.open_gate("cli")
        assert running.get(timeout=10) == "released"
        assert "- empty -" in celeriac("inspect", "active", "-d", A).output


def test_inspect_and_control_list_their_commands_and_refuse_unknown_ones(
    celeriac: Run,
) -> None:
    listing = celeriac("inspect", "--list").output
    assert "active" in listing and "query_task" in listing and "rate_limit" not in listing
    assert "rate_limit <task_name> <rate_limit>" in celeriac("control", "--list").output
    unknown = celeriac("inspect", "revoke")
    assert unknown.exit_code == 2 and "not recognized" in unknown.output
    missing = celeriac("control", "revoke")
    assert missing.exit_code == 2 and "at least one task id" in missing.output


def test_control_commands_change_the_worker(stack: Stack, celeriac: Run) -> None:
    with stack.worker(hostname=A):
        result = celeriac("control", "rate_limit", "e2e.add", "1/m", "-d", A)
        assert result.exit_code == 0, result.output
        assert f"-> {A}: OK\n    new rate limit set successfully" in result.output
        later = stack.tasks.add.apply_async((1, 1), countdown=3600)
        revoked = json.loads(celeriac("control", "revoke", later.id, "-d", A, "--json").output)
        assert revoked == {A: {"ok": f"tasks {later.id} flagged as revoked"}}
        assert later.state == "REVOKED"
        bad = celeriac("control", "pool_grow", "lots")
        assert bad.exit_code == 2 and "bad n" in bad.output


def test_purge_asks_first_and_deletes_the_waiting_tasks(stack: Stack, celeriac: Run) -> None:
    for _ in range(2):
        stack.tasks.add.delay(1, 2)
    declined = celeriac("purge", stdin="n\n")
    assert declined.exit_code == 1 and "There is no undo" in declined.output
    assert stack.queue_length() == 2
    purged = celeriac("purge", "-f")
    assert purged.exit_code == 0, purged.output
    assert "Purged 2 messages from" in purged.output
    assert stack.queue_length() == 0
    assert "No messages purged" in celeriac("purge", "-f", "-Q", "celery").output


def test_list_bindings_shows_the_task_queues(celeriac: Run) -> None:
    result = celeriac("list", "bindings")
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.output.splitlines()]
    assert ["celery", "celery", "celery"] in lines
    rows = json.loads(celeriac("list", "bindings", "--json").output)
    assert {"queue": "celery", "exchange": "celery", "routing_key": "celery"} in rows


def test_report_shows_versions_and_settings_but_no_secrets(celeriac: Run) -> None:
    result = celeriac("report")
    assert result.exit_code == 0, result.output
    assert "software -> celeriac:" in result.output
    assert "transport:sqlite" in result.output
    assert "result_backend_transport_options" in result.output
    assert "hunter2" not in result.output
