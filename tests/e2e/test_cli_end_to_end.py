"""The ``celeriac`` command end to end, on the embedded default broker (no URL given).

A client and a worker started from the same directory share ``./celeriac.db``.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import CELERIAC, WorkerProcess, subprocess_env

PROJ = """\
from pathlib import Path

from celeriac import Celery
from celeriac.signals import worker_ready

app = Celery("proj")


@app.task
def add(x, y):
    return x + y


@worker_ready.connect
def announce(**_):
    Path("worker.ready").touch()
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "proj.py").write_text(PROJ)
    return tmp_path


@pytest.fixture
def worker(project: Path) -> Iterator[WorkerProcess]:
    process = WorkerProcess(project, ["-P", "threads", "-c", "1", "-l", "INFO"])
    process.wait_ready()
    yield process
    process.close()


def celeriac(project: Path, *args: str) -> str:
    done = subprocess.run(
        [str(CELERIAC), "-A", "proj", *args],
        cwd=project,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_call_prints_the_id_of_the_task_it_sent(project: Path) -> None:
    task_id = celeriac(project, "call", "proj.add", "--args", "[1, 2]")
    assert re.fullmatch(r"[0-9a-f-]{36}", task_id)
    assert celeriac(project, "result", task_id) == "PENDING: None"


def test_result_shows_success_once_a_worker_ran_the_called_task(
    project: Path, worker: WorkerProcess
) -> None:
    task_id = celeriac(project, "call", "proj.add", "--args", "[1, 2]")
    deadline = time.monotonic() + 10
    shown = celeriac(project, "result", task_id)
    while shown != "SUCCESS: 3" and time.monotonic() < deadline:
        time.sleep(0.05)
        shown = celeriac(project, "result", task_id)
    assert shown == "SUCCESS: 3"


def test_the_worker_banner_shows_the_default_database_by_its_absolute_path(
    project: Path, worker: WorkerProcess
) -> None:
    assert f"sqlite:///{project / 'celeriac.db'}" in worker.log()


def test_the_worker_logs_each_task_like_celery(project: Path, worker: WorkerProcess) -> None:
    task_id = celeriac(project, "call", "proj.add", "--args", "[2, 2]")
    pattern = rf"Task proj\.add\[{task_id}\] succeeded in \d+\.\d+s: 4"
    deadline = time.monotonic() + 10
    while not re.search(pattern, worker.log()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert re.search(pattern, worker.log())
