"""Remote-control tests: stacks (app, tasks, workers) from the end-to-end helpers.

``e2e_support`` lives in ``tests/e2e``; its directory is put on ``sys.path`` here so these
tests use the same ``Stack``, tasks and worker runners as the end-to-end tests: every
transport it has, with workers in threads of this process. Each stack gets a control
exchange of its own, so workers of other tests on a shared server never answer.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from e2e_support import ALL_STACKS, THREADS_STACKS, Stack, stack_factory

PREFORK_STACKS = [stack for stack in ALL_STACKS if stack[1] == "prefork"]


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Build stacks in this test's directory; closed (workers reaped) afterwards."""
    with stack_factory(tmp_path) as make:
        yield make


@pytest.fixture(params=THREADS_STACKS, ids="-".join)
def stack(request: pytest.FixtureRequest, make_stack: Callable[..., Stack]) -> Stack:
    """Every transport, workers in threads of this process."""
    return make_stack(*request.param, control_exchange=f"control-{uuid.uuid4().hex[:8]}")


@pytest.fixture(params=PREFORK_STACKS, ids="-".join)
def prefork_stack(request: pytest.FixtureRequest, make_stack: Callable[..., Stack]) -> Stack:
    """Every transport that runs prefork workers (in subprocesses)."""
    return make_stack(*request.param)
