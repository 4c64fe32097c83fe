"""End-to-end helpers: an app per test, and workers in a thread or in a subprocess.

A ``Stack`` is one app (broker and results on the same URL) with the e2e tasks, and the
pool its workers use. ``stack.worker(**options)`` runs a worker for the duration of a
``with`` block: in a thread of the test process for the solo, threads and asyncio pools
(what embedding a worker looks like), or as ``celeriac -A proj worker`` in a subprocess
for the prefork pool (forking a test runner with threads in it is asking for trouble).
The memory broker lives in one process, so it is paired only with the in-process pools.
"""

from __future__ import annotations

import atexit
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from e2e_tasks import make_app, runs

from celeriac import Celery
from celeriac.messaging import Consumer, Queue
from celeriac.messaging.message import Message
from celeriac.testing import service_url
from celeriac.worker.worker import Worker, WorkerOptions

E2E_DIR = Path(__file__).resolve().parent
CELERIAC = Path(sys.executable).with_name("celeriac")

#: (transport, pool): the memory broker with every in-process pool, SQLite with all four,
#: the server brokers with threads (in this process) and prefork (a subprocess).
ALL_STACKS = [
    ("memory", "solo"),
    ("memory", "threads"),
    ("memory", "asyncio"),
    ("sqlite", "solo"),
    ("sqlite", "threads"),
    ("sqlite", "asyncio"),
    ("sqlite", "prefork"),
    ("redis", "threads"),
    ("redis", "prefork"),
    ("amqp", "threads"),
    ("amqp", "prefork"),
]
IN_PROCESS_STACKS = [stack for stack in ALL_STACKS if stack[1] != "prefork"]
THREADS_STACKS = [stack for stack in ALL_STACKS if stack[1] == "threads"]
SQLITE_STACKS = [stack for stack in ALL_STACKS if stack[0] == "sqlite"]


#: Server brokers (shared with other tests: every stack gets its own key prefix).
REDIS_BROKER = "redis://127.0.0.1:6379/15"
REDIS_RESULTS = "redis://127.0.0.1:6379/14"


def forget_redis_keys(prefix: str) -> None:
    """Delete the keys a stack left on the shared Redis (broker and result dbs)."""
    import redis

    for url in (REDIS_BROKER, REDIS_RESULTS):
        client = redis.Redis.from_url(url)
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


AMQP_SERVER = "amqp://guest:guest@127.0.0.1:5672"
_amqp_vhost: list[str] = []


def amqp_url() -> str:
    """A RabbitMQ vhost of this test process's own (made once, deleted at exit).

    Other test runs on the same server (CI, a developer's second run) never see its queues;
    within the run, each stack deletes the queues it used when it closes.
    """
    service_url(AMQP_SERVER + "//")
    if not _amqp_vhost:
        name = f"celeriac-e2e-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        for command in (
            ["rabbitmqctl", "-q", "add_vhost", name],
            ["rabbitmqctl", "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
        ):
            subprocess.run(command, check=True, capture_output=True, timeout=60)
        atexit.register(
            subprocess.run,
            ["rabbitmqctl", "-q", "delete_vhost", name],
            check=False,
            capture_output=True,
            timeout=60,
        )
        _amqp_vhost.append(name)
    return f"{AMQP_SERVER}/{_amqp_vhost[0]}"


def forget_amqp_queues(app: Celery, names: set[str]) -> None:
    """Delete the queues a stack used (and their delay queues) from this run's vhost."""
    with app.connection() as conn:
        for name in names:
            conn.transport.delete_queue(name)


def stack_id(stack: tuple[str, str]) -> str:
    return "-".join(stack)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.01)


def subprocess_env() -> dict[str, str]:
    """The environment of a child interpreter that imports celeriac and ``e2e_tasks``."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(E2E_DIR), *sys.path])}


PROJ = """\
from pathlib import Path

from e2e_tasks import make_app

from celeriac.signals import worker_ready

WORKDIR = Path({workdir!r})
app, tasks = make_app({url!r}, WORKDIR, backend={backend!r}, **{settings!r})


@worker_ready.connect
def announce(**_):
    (WORKDIR / "worker.ready").touch()
"""


class WorkerProcess:
    """``celeriac -A proj worker`` running in ``workdir``; reaped by ``close``."""

    def __init__(self, workdir: Path, args: list[str]) -> None:
        self.workdir = workdir
        self.closed = False
        (workdir / "worker.ready").unlink(missing_ok=True)
        self.log_path = workdir / f"worker-{uuid.uuid4().hex[:8]}.log"
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [str(CELERIAC), "-A", "proj", "worker", *args],
                cwd=workdir,
                env=subprocess_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 20.0) -> None:
        ready = self.workdir / "worker.ready"
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                pytest.fail(f"the worker did not start:\n{self.log()}")
            time.sleep(0.02)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 20.0) -> int:
        return self.process.wait(timeout=timeout)

    def close(self) -> None:
        """Stop it (warm, then cold, then SIGKILL of its whole session) and reap it."""
        if self.closed:
            return
        self.closed = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        # Children orphaned by a SIGKILLed parent are in its session; none may outlive it.
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        # Shown by pytest when the test fails.
        print(f"--- worker log ({self.log_path.name}, exit {self.process.returncode}) ---")
        print(self.log())


@contextmanager
def running_worker(app: Celery, pool: str = "threads", **options: Any) -> Iterator[Worker]:
    """Run a worker for ``app`` in a thread of this process for the ``with`` block.

    The block's end is a warm stop (running tasks finish); when the block raises, a cold one.
    """
    options.setdefault("concurrency", 2)
    worker = Worker(app, WorkerOptions(pool=pool, **options))
    failures: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:
            failures.append(exc)
            worker.ready.set()

    thread = threading.Thread(target=run, name="e2e-worker", daemon=True)
    thread.start()
    if not worker.ready.wait(10) or failures:
        worker.stop(cold=True)
        thread.join(10)
        raise AssertionError(f"the worker did not start: {failures}")
    cold = False
    try:
        yield worker
    except BaseException:
        cold = True
        raise
    finally:
        worker.stop(cold=cold)
        thread.join(15)
        assert not thread.is_alive(), "the worker did not stop"
    assert not failures, f"the worker crashed: {failures!r}"


class Stack:
    """An app on one transport, its e2e tasks, and workers of one pool for it."""

    def __init__(
        self, transport: str, pool: str, workdir: Path, backend: str | None = None, **settings: Any
    ) -> None:
        self.transport = transport
        self.pool = pool
        self.workdir = workdir
        self.token = uuid.uuid4().hex[:12]
        #: What keeps this stack's keys and queues apart on a shared server broker.
        self.server_settings: dict[str, Any] = {}
        if transport == "memory":
            self.url = f"memory://{uuid.uuid4().hex}"
        elif transport == "sqlite":
            self.url = f"sqlite:///{workdir / 't.db'}"
        elif transport == "redis":
            self.url = service_url(REDIS_BROKER)
            prefix = {"global_keyprefix": f"e2e-{self.token}:"}
            self.server_settings = {
                "broker_transport_options": prefix,
                "result_backend_transport_options": prefix,
            }
        elif transport == "amqp":
            self.url = amqp_url()
            # Results on Redis: a key prefix of the stack's own there too.
            self.server_settings = {
                "result_backend_transport_options": {"global_keyprefix": f"e2e-{self.token}:"}
            }
        else:
            raise ValueError(f"no e2e stack for {transport!r}")
        #: Results: ``backend`` when given (``rpc://``...), else the broker's own file or db.
        default_backend = self.url if transport in {"memory", "sqlite"} else REDIS_RESULTS
        self.backend_url = backend or default_backend
        self.app, self.tasks = make_app(
            self.url, workdir, backend=self.backend_url, **self.server_settings, **settings
        )
        self.processes: list[WorkerProcess] = []

    @property
    def in_process(self) -> bool:
        return self.pool != "prefork"

    @contextmanager
    def worker(self, **options: Any) -> Iterator[Worker | WorkerProcess]:
        """A running worker of this stack's pool for the ``with`` block."""
        if self.in_process:
            with running_worker(self.app, self.pool, **options) as worker:
                yield worker
            return
        process = self.spawn(**options)
        try:
            yield process
        finally:
            process.close()

    def spawn(self, pool: str | None = None, **options: Any) -> WorkerProcess:
        """Start ``celeriac -A proj worker`` for this stack in a subprocess (ready)."""
        proj = self.workdir / "proj.py"
        if not proj.exists():
            proj.write_text(
                PROJ.format(
                    workdir=str(self.workdir),
                    url=self.url,
                    backend=self.backend_url,
                    settings=self.server_settings,
                )
            )
        options.setdefault("concurrency", 2)
        args = ["-P", pool or self.pool, "-l", "INFO"]
        for key, value in options.items():
            flag = "--" + key.replace("_", "-")
            text = ",".join(value) if isinstance(value, list | tuple) else str(value)
            args += [flag, text]
        process = WorkerProcess(self.workdir, args)
        self.processes.append(process)
        process.wait_ready()
        return process

    # -- looking at the broker --------------------------------------------------------------
    def queue_length(self, name: str = "celery") -> int:
        """Messages ready in ``name`` (not those held by a consumer)."""
        with self.app.connection() as conn:
            return conn.transport.queue_length(name)

    def fetch(self, queue: str, count: int = 1, timeout: float = 5.0) -> list[Message]:
        """Take ``count`` messages from ``queue`` (acked), waiting up to ``timeout``."""
        got: list[Message] = []
        with self.app.connection() as conn:
            consumer = Consumer(conn, Queue(queue), prefetch_count=0, accept=["json"])
            consumer.consume()
            deadline = time.monotonic() + timeout
            while len(got) < count and time.monotonic() < deadline:
                batch = consumer.fetch(count - len(got))
                if not batch:
                    conn.transport.wait(0.05)
                got.extend(batch)
            for message in got:
                message.ack()
        return got

    def messages_in_broker(self, queue: str = "celery") -> int:
        """Rows of ``queue`` in the SQLite broker file: ready and leased (unacked) alike."""
        with closing(sqlite3.connect(self.workdir / "t.db")) as db:
            (count,) = db.execute(
                "SELECT COUNT(*) FROM messages WHERE queue = ?", (queue,)
            ).fetchone()
        return int(count)

    def records(self, name: str) -> list[Any]:
        """What tasks recorded under ``name`` (see ``e2e_tasks.record``), in order."""
        return runs(self.workdir, name)

    def open_gate(self, name: str) -> None:
        (self.workdir / f"{name}.gate").touch()

    def close(self) -> None:
        for process in self.processes:
            process.close()
        self.app.close()
        if self.transport in {"redis", "amqp"}:
            forget_redis_keys(f"e2e-{self.token}:")
        if self.transport == "amqp":
            conf = self.app.conf
            used = {"celery", "special", conf.task_default_queue, conf.task_dead_letter_queue}
            forget_amqp_queues(self.app, used | {q.name for q in conf.task_queues or ()})


@contextmanager
def stack_factory(workdir: Path) -> Iterator[Callable[..., Stack]]:
    """``make(transport, pool, **settings)`` builds stacks in ``workdir``; all are closed
    (workers reaped, server keys and queues deleted) when the block ends."""
    stacks: list[Stack] = []

    def make(transport: str, pool: str, **settings: Any) -> Stack:
        stack = Stack(transport, pool, workdir, **settings)
        stacks.append(stack)
        return stack

    try:
        yield make
    finally:
        for stack in stacks:
            stack.close()
