"""Running real Celery (a test-only dependency) beside celeriac, on RabbitMQ with Redis results.

``peer_worker(framework)`` runs ``celery -A interop_worker worker`` or ``celeriac -A
interop_worker worker`` on a fresh queue; ``client(framework, queue)`` builds the other
side's app with the same tasks. Every test module gets its own queue name, so runs never see
each other's messages, and the queue is deleted afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from interop_tasks import register, settings

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
BROKER = "amqp://guest:guest@127.0.0.1:5672//"
BACKEND = "redis://127.0.0.1:6379/13"
#: What each framework's worker logs once it consumes.
READY_MARK = "ready."


@dataclass
class PeerWorker:
    """A worker subprocess of one framework, consuming ``queue``."""

    framework: str
    queue: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _worker_command(framework: str, queue: str) -> list[str]:
    if framework == "celery":
        return [
            str(BIN / "celery"), "-A", "interop_worker", "worker", "-P", "solo", "-c", "1",
            "-Q", queue, "-l", "INFO", "--without-gossip", "--without-mingle",
            "--without-heartbeat", "-n", f"celery-{queue}@%h",
        ]  # fmt: skip
    return [
        str(BIN / "celeriac"), "-A", "interop_worker", "worker", "-P", "threads", "-c", "2",
        "-Q", queue, "-l", "INFO", "-n", f"celeriac-{queue}@%h",
    ]  # fmt: skip


def start_worker(framework: str, queue: str, workdir: Path) -> PeerWorker:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path]),
        "INTEROP_FRAMEWORK": framework,
        "INTEROP_BROKER": BROKER,
        "INTEROP_BACKEND": BACKEND,
        "INTEROP_QUEUE": queue,
    }
    log_path = workdir / f"{framework}-worker.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            _worker_command(framework, queue),
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = PeerWorker(framework, queue, process, log_path)
    deadline = time.monotonic() + 30
    while READY_MARK not in worker.log():
        if process.poll() is not None or time.monotonic() > deadline:
            worker.stop()
            pytest.fail(f"the {framework} worker did not start:\n{worker.log()}")
        time.sleep(0.05)
    return worker


def make_client(framework: str, queue: str) -> tuple[Any, dict[str, Any]]:
    """An app of ``framework`` sending to ``queue``, with the interop tasks registered."""
    app: Any
    if framework == "celery":
        from celery import Celery as CeleryApp

        app = CeleryApp("interop-client", broker=BROKER)
    else:
        from celeriac import Celery as CeleriacApp

        app = CeleriacApp("interop-client", broker=BROKER)
    app.conf.update(result_backend=BACKEND, **settings(queue))
    return app, register(app, framework)


def delete_queue(queue: str) -> None:
    from celeriac.messaging import Connection

    with Connection(BROKER) as conn:
        conn.transport.delete_queue(queue)
        conn.transport.delete_exchange(queue)


@dataclass
class Pair:
    """A client of one framework and a running worker of the other, sharing a queue."""

    client_framework: str
    worker: PeerWorker
    app: Any
    tasks: dict[str, Any]


OTHER = {"celery": "celeriac", "celeriac": "celery"}
