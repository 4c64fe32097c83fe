"""Workflow fixtures: e2e stacks (app, tasks, workers) with the workflow tasks added.

Stacks come from ``tests/e2e/e2e_support.py``; each also gets ``stack.wf``, the tasks of
``workflow_tasks``. A prefork worker (a subprocess) loads a ``proj.py`` written here that
registers the same tasks. The broker and pool matter for the end-to-end tests (messages
crossing processes, chord parts counted from several workers), so those run over memory,
SQLite and Redis with the threads pool and SQLite with prefork (``stack``); the key
primitives (chain, group, chord) also on Redis with prefork (``key_stack``); behaviour no
broker changes runs on one stack.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from e2e_support import REDIS_RESULTS, Stack, forget_redis_keys, stack_id
from workflow_tasks import define_workflow_tasks

from celeriac import Celery
from celeriac.backends.base import ResultBackend
from celeriac.backends.memory import MemoryBackend
from celeriac.backends.sqlite import SQLiteBackend
from celeriac.testing import service_url

#: (transport, pool) pairs the end-to-end workflow tests run on.
THREADS_STACKS = [
    ("memory", "threads"),
    ("sqlite", "threads"),
    ("redis", "threads"),
    ("amqp", "threads"),
]
WORKFLOW_STACKS = [*THREADS_STACKS, ("sqlite", "prefork")]
#: ...and those the key primitives run on (a prefork worker costs a process start).
KEY_STACKS = [*WORKFLOW_STACKS, ("redis", "prefork"), ("amqp", "prefork")]
PREFORK_STACKS = [("sqlite", "prefork"), ("redis", "prefork"), ("amqp", "prefork")]

PROJ = """\
from pathlib import Path

from e2e_tasks import make_app
from workflow_tasks import define_workflow_tasks

from celeriac.signals import worker_ready

WORKDIR = Path({workdir!r})
app, tasks = make_app({url!r}, WORKDIR, backend={backend!r}, **{settings!r})
wf = define_workflow_tasks(app, WORKDIR)


@worker_ready.connect
def announce(**_):
    (WORKDIR / "worker.ready").touch()
"""


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Build stacks with the workflow tasks in this test's directory; closed afterwards."""
    stacks: list[Stack] = []

    def make(transport: str, pool: str, backend: str | None = None, **settings: Any) -> Stack:
        stack = Stack(transport, pool, tmp_path, backend, **settings)
        stack.wf = define_workflow_tasks(stack.app, tmp_path)
        proj = PROJ.format(
            workdir=str(tmp_path),
            url=stack.url,
            backend=stack.backend_url,
            settings={**stack.server_settings, **settings},
        )
        (tmp_path / "proj.py").write_text(proj)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.close()


@pytest.fixture(params=WORKFLOW_STACKS, ids=stack_id)
def stack(request: pytest.FixtureRequest, make_stack: Callable[..., Stack]) -> Stack:
    """Memory, SQLite and Redis with the threads pool, SQLite with prefork."""
    return make_stack(*request.param)


@pytest.fixture(params=KEY_STACKS, ids=stack_id)
def key_stack(request: pytest.FixtureRequest, make_stack: Callable[..., Stack]) -> Stack:
    """Every ``stack``, and Redis with prefork: for the key primitives."""
    return make_stack(*request.param)


@pytest.fixture(params=THREADS_STACKS, ids=stack_id)
def threads_stack(request: pytest.FixtureRequest, make_stack: Callable[..., Stack]) -> Stack:
    """Memory, SQLite and Redis with the threads pool (in this process)."""
    return make_stack(*request.param)


@pytest.fixture(params=PREFORK_STACKS, ids=stack_id)
def prefork_stack(request: pytest.FixtureRequest, make_stack: Callable[..., Stack]) -> Stack:
    """SQLite and Redis with the prefork pool (workers in subprocesses)."""
    return make_stack(*request.param)


@pytest.fixture
def memory_stack(make_stack: Callable[..., Stack]) -> Stack:
    """The memory broker with the threads pool: for behaviour no broker changes."""
    return make_stack("memory", "threads")


@pytest.fixture
def app() -> Iterator[Celery]:
    """An app on a private in-memory broker and backend, with no worker."""
    url = f"memory://{uuid.uuid4().hex}"
    application = Celery("wf", broker=url, backend=url, set_as_current=False)
    yield application
    application.close()


@pytest.fixture(params=["memory", "sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResultBackend]:
    """A memory, SQLite or Redis result backend of this test's own.

    The Redis one is on the shared server, under a key prefix of its own (deleted after).
    """
    prefix = f"wf-{uuid.uuid4().hex[:12]}:"
    if request.param == "memory":
        instance: ResultBackend = MemoryBackend(f"memory://{uuid.uuid4().hex}")
    elif request.param == "sqlite":
        instance = SQLiteBackend(f"sqlite:///{tmp_path}/results.db")
    else:
        from celeriac.backends.redis import RedisBackend

        url = service_url(REDIS_RESULTS)
        instance = RedisBackend(url, options={"global_keyprefix": prefix})
    yield instance
    instance.close()
    if request.param == "redis":
        forget_redis_keys(prefix)
