"""The tasks the end-to-end tests send, defined per app so no test's tasks leak into another's.

``make_app(url, workdir)`` builds an app and registers every task on it under a fixed name
(``e2e.<name>``). The same function builds the app of a worker running in a subprocess
(the prefork pool, signals, SIGKILL), so a task behaves the same wherever it runs. Tasks
that must report what happened inside the worker (how many times they ran, in which
process, when) append lines to files in ``workdir``, which every process can read.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from celeriac import Celery
from celeriac.exceptions import Ignore, Reject, SoftTimeLimitExceeded

#: How long a task waits for a gate file before giving up (keeps a failed test from hanging).
GATE_TIMEOUT = 15.0


class Boom(Exception):
    """A user-defined exception, to check that results rebuild it as its own class."""


def record(workdir: Path, name: str, value: object = "") -> int:
    """Append ``value`` as one line to ``<name>.runs``; returns the run number (1, 2...)."""
    path = workdir / f"{name}.runs"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{json.dumps(value)}\n".encode())
    finally:
        os.close(fd)
    return len(runs(workdir, name))


def runs(workdir: Path, name: str) -> list[Any]:
    """The values ``record`` appended under ``name``, in order."""
    path = workdir / f"{name}.runs"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def wait_for_gate(workdir: Path, name: str) -> None:
    """Block until the test creates the file ``<name>.gate``."""
    deadline = time.monotonic() + GATE_TIMEOUT
    while not (workdir / f"{name}.gate").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {name!r} was never opened")
        time.sleep(0.01)


def make_app(
    url: str, workdir: Path, backend: str | None = None, **settings: Any
) -> tuple[Celery, SimpleNamespace]:
    """A fresh app on ``url`` (broker, and results unless ``backend`` is given) with every
    e2e task registered."""
    app = Celery(
        "e2e",
        broker=url,
        backend=backend or url,
        set_as_current=False,
        task_routes={"e2e.routed": {"queue": "special"}},
        **settings,
    )
    return app, define_tasks(app, workdir)


def define_tasks(app: Celery, workdir: Path) -> SimpleNamespace:  # noqa: C901, PLR0915
    """Register the e2e tasks on ``app``; they write their records under ``workdir``."""
    task = app.task

    @task(name="e2e.add")
    def add(x: int, y: int) -> int:
        return x + y

    @task(name="e2e.fail")
    def fail(message: str) -> None:
        raise ValueError(message, 42)

    @task(name="e2e.boom")
    def boom() -> None:
        raise Boom("user error")

    @task(name="e2e.stamp")
    def stamp() -> float:
        """Returns when it started (wall clock)."""
        return time.time()

    @task(bind=True, name="e2e.hello")
    def hello(self: Any, n: int) -> str:
        for i in range(2):
            self.update_state(state="PROGRESS", meta={"step": i})
            time.sleep(0.1)
        return f"hello world: {n}"

    @task(name="e2e.tracked", track_started=True)
    def tracked() -> str:
        return "tracked"

    @task(bind=True, name="e2e.flaky")
    def flaky(self: Any) -> None:
        record(workdir, "flaky", self.request.retries)
        raise self.retry(exc=ValueError("flaky", 1), countdown=0.1, max_retries=2)

    @task(bind=True, name="e2e.retry_sees_state")
    def retry_sees_state(self: Any) -> str:
        """Retries once at once; the second run returns the state stored for the first."""
        if self.request.retries == 0:
            raise self.retry(countdown=0, max_retries=1)
        return str(self.backend.get_task_meta(self.request.id)["status"])

    @task(
        bind=True,
        name="e2e.auto",
        autoretry_for=(KeyError,),
        retry_backoff=0.1,
        retry_jitter=False,
        retry_kwargs={"max_retries": 2},
    )
    def auto(self: Any) -> None:
        record(workdir, "auto", time.time())
        raise KeyError("missing")

    @task(bind=True, name="e2e.retry_without_exc")
    def retry_without_exc(self: Any) -> None:
        record(workdir, "retry_without_exc", self.request.retries)
        raise self.retry(countdown=0.05, max_retries=1)

    @task(name="e2e.reject")
    def reject() -> None:
        record(workdir, "reject")
        raise Reject("refused", requeue=False)

    @task(name="e2e.reject_late", acks_late=True)
    def reject_late() -> None:
        record(workdir, "reject_late")
        raise Reject("refused", requeue=False)

    @task(name="e2e.reject_once", acks_late=True)
    def reject_once() -> str:
        if record(workdir, "reject_once") == 1:
            raise Reject("not now", requeue=True)
        return "second delivery"

    @task(name="e2e.ignore")
    def ignore() -> None:
        record(workdir, "ignore")
        raise Ignore()

    @task(name="e2e.on_err")
    def on_err(request: Any, exc: BaseException, traceback: str) -> None:
        record(
            workdir,
            "on_err",
            {
                "id": request.id,
                "task": request.task,
                "args": list(request.args),
                "type": type(exc).__name__,
                "exc_args": list(exc.args),
                "traceback": "ValueError" in traceback,
            },
        )

    @task(name="e2e.on_err_id")
    def on_err_id(task_id: str) -> str:
        record(workdir, "on_err_id", task_id)
        return task_id

    @task(name="e2e.gate")
    def gate(name: str) -> str:
        record(workdir, name, os.getpid())
        wait_for_gate(workdir, name)
        return "released"

    @task(name="e2e.gate_late", acks_late=True)
    def gate_late(name: str) -> str:
        record(workdir, name, os.getpid())
        wait_for_gate(workdir, name)
        return "released"

    @task(name="e2e.sleepy")
    def sleepy(seconds: float) -> str:
        record(workdir, "sleepy", os.getpid())
        time.sleep(seconds)
        return "slept"

    @task(bind=True, name="e2e.survivor", acks_late=True, reject_on_worker_lost=True)
    def survivor(self: Any) -> dict[str, Any]:
        if record(workdir, "survivor", os.getpid()) == 1:
            time.sleep(30)  # the test kills this process
        return {"redelivered": self.request.delivery_info["redelivered"]}

    @task(name="e2e.lost", acks_late=True)
    def lost() -> None:
        record(workdir, "lost", os.getpid())
        time.sleep(30)  # the test kills this process

    @task(name="e2e.hard_limited", time_limit=0.5)
    def hard_limited() -> str:
        record(workdir, "hard_limited", os.getpid())
        time.sleep(10)
        return "not stopped"

    @task(name="e2e.soft_limited", soft_time_limit=0.3)
    def soft_limited() -> str:
        try:
            time.sleep(10)
        except SoftTimeLimitExceeded:
            return "cleaned up"
        return "not interrupted"

    @task(name="e2e.nap")
    async def nap(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return time.time()

    @task(name="e2e.async_hard_limited", time_limit=0.3)
    async def async_hard_limited() -> str:
        await asyncio.sleep(10)
        return "not stopped"

    @task(name="e2e.limited", rate_limit="10/s")
    def limited() -> float:
        return time.time()

    @task(name="e2e.routed")
    def routed() -> str:
        return "routed"

    @task(bind=True, name="e2e.whoami")
    def whoami(self: Any) -> dict[str, Any]:
        request = self.request
        return {
            "id": request.id,
            "root_id": request.root_id,
            "parent_id": request.parent_id,
            "retries": request.retries,
            "hostname": request.hostname,
            "is_eager": request.is_eager,
            "routing_key": request.delivery_info["routing_key"],
        }

    return SimpleNamespace(
        add=add,
        fail=fail,
        boom=boom,
        stamp=stamp,
        hello=hello,
        tracked=tracked,
        flaky=flaky,
        retry_sees_state=retry_sees_state,
        auto=auto,
        retry_without_exc=retry_without_exc,
        reject=reject,
        reject_late=reject_late,
        reject_once=reject_once,
        ignore=ignore,
        on_err=on_err,
        on_err_id=on_err_id,
        gate=gate,
        gate_late=gate_late,
        sleepy=sleepy,
        survivor=survivor,
        lost=lost,
        hard_limited=hard_limited,
        soft_limited=soft_limited,
        nap=nap,
        async_hard_limited=async_hard_limited,
        limited=limited,
        routed=routed,
        whoami=whoami,
    )
