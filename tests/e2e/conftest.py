"""End-to-end fixtures: a ``Stack`` (app, tasks, workers) per test, over transports and pools.

See ``e2e_support`` for what a stack is and how its workers run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from e2e_support import (
    ALL_STACKS,
    IN_PROCESS_STACKS,
    SQLITE_STACKS,
    THREADS_STACKS,
    Stack,
    stack_factory,
    stack_id,
)


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Build stacks in this test's directory; closed (workers reaped) afterwards."""
    with stack_factory(tmp_path) as make:
        yield make


@pytest.fixture(params=ALL_STACKS, ids=stack_id)
def stack(request: pytest.FixtureRequest, make_stack: Callable[..., Stack]) -> Stack:
    """Every transport with every pool it works with."""
    return make_stack(*request.param)


@pytest.fixture(params=IN_PROCESS_STACKS, ids=stack_id)
def in_process_stack(request: pytest.FixtureRequest, make_stack: Callable[..., Stack]) -> Stack:
    """Every transport with the pools that run in this process (signals are seen here)."""
    return make_stack(*request.param)


@pytest.fixture(params=THREADS_STACKS, ids=stack_id)
def threads_stack(request: pytest.FixtureRequest, make_stack: Callable[..., Stack]) -> Stack:
    """Both transports with the threads pool: for behaviour no pool changes."""
    return make_stack(*request.param)


@pytest.fixture(params=SQLITE_STACKS, ids=stack_id)
def sqlite_stack(request: pytest.FixtureRequest, make_stack: Callable[..., Stack]) -> Stack:
    """SQLite with every pool (for tests that look into the broker file)."""
    return make_stack(*request.param)


@pytest.fixture
def prefork_stack(make_stack: Callable[..., Stack]) -> Stack:
    """SQLite with the prefork pool, its worker in a subprocess."""
    return make_stack("sqlite", "prefork")
