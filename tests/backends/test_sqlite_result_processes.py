"""The SQLite result backend across processes, and beside the broker in one file."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from celeriac.backends import backend_from_url
from celeriac.backends.sqlite import SQLiteBackend
from celeriac.exceptions import BrokerFileError
from celeriac.messaging import Connection, Queue
from celeriac.transports.wakeup import wake_directory

# The `spawn` fixture lives in tests/conftest.py.
Spawn = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'r.db'}"


# Stores what argv[2] says when told "go" on stdin, then prints the wall time it finished.
WRITER = """
import sys, time
from celeriac.backends import backend_from_url
with backend_from_url(sys.argv[1]) as backend:
    backend.get_task_meta("warm-up")
    print("ready", flush=True)
    sys.stdin.readline()
    if sys.argv[2] == "progress":  # In one transaction: no reader sees 1 or 2 as current.
        backend.store_many([("t1", {"step": n}, "PROGRESS", None, None) for n in (1, 2, 3)])
    backend.mark_as_done("t1", "from the other process")
    print(time.time(), flush=True)
"""


def run_waiter(url: str, **kwargs: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Wait for ``t1`` in a thread; the dict gets the meta and the wall time it returned."""
    out: dict[str, Any] = {}

    def wait() -> None:
        with backend_from_url(url) as backend:
            out["meta"] = backend.wait_for("t1", timeout=20, interval=30, **kwargs)
            out["woke_at"] = time.time()

    thread = threading.Thread(target=wait)
    thread.start()
    return thread, out


def test_a_result_written_by_another_process_wakes_a_waiter_promptly(
    url: str, spawn: Spawn
) -> None:
    writer = spawn(WRITER, url, "done")
    assert writer.stdout is not None and writer.stdin is not None
    assert writer.stdout.readline().strip() == "ready"
    thread, out = run_waiter(url)
    time.sleep(0.3)  # The waiter is asleep on its socket by now (interval=30: no polling).
    writer.stdin.write("go\n")
    writer.stdin.flush()
    written_at = float(writer.stdout.readline())
    thread.join(timeout=20)
    assert out["meta"]["result"] == "from the other process"
    assert out["woke_at"] - written_at < 0.3
    assert writer.wait(timeout=10) == 0


def test_on_message_sees_every_state_another_process_stored(url: str, spawn: Spawn) -> None:
    writer = spawn(WRITER, url, "progress")
    assert writer.stdout is not None and writer.stdin is not None
    assert writer.stdout.readline().strip() == "ready"
    seen: list[Any] = []
    thread, out = run_waiter(url, on_message=lambda meta: seen.append(meta["result"]))
    time.sleep(0.2)
    writer.stdin.write("go\n")
    writer.stdin.flush()
    thread.join(timeout=20)
    assert seen == [{"step": 1}, {"step": 2}, {"step": 3}, "from the other process"]
    assert out["meta"]["status"] == "SUCCESS"
    assert writer.wait(timeout=10) == 0


def test_results_share_the_broker_file_without_disturbing_it(url: str) -> None:
    with Connection(url) as conn, backend_from_url(url) as backend:
        conn.Producer().publish({"n": 1}, "work", declare=[Queue("work")])
        backend.mark_as_done("t1", "ok")
        assert conn.transport.queue_length("work") == 1
        assert backend.get_task_meta("t1")["result"] == "ok"


def test_a_file_of_another_application_is_refused(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE customers (id INTEGER)")
    db.close()
    with pytest.raises(BrokerFileError, match="another application"):
        SQLiteBackend(f"sqlite:///{path}")


def test_result_waiters_listen_apart_from_broker_consumers(url: str) -> None:
    with backend_from_url(url) as backend:
        assert isinstance(backend, SQLiteBackend)
        with backend._channel() as channel:
            assert channel.directory == wake_directory(backend.path + "#results")
            assert channel.directory != wake_directory(backend.path)  # The broker's.
