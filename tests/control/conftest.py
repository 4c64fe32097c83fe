"""Remote-control tests: stacks (app, tasks, workers) from the end-to-end helpers.

``e2e_support`` lives in ``tests/e2e``; its directory is put on ``sys.path`` here so these
tests use the same ``Stack``, tasks and worker runners as the end-to-end tests.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from e2e_support import Stack

#: Transports whose workers run in this process (threads pool): memory and SQLite.
IN_PROCESS = [("memory", "threads"), ("sqlite", "threads")]


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Build stacks in this test's directory; closed (workers reaped) afterwards."""
    stacks: list[Stack] = []

    def make(transport: str, pool: str, **settings: Any) -> Stack:
        stack = Stack(transport, pool, tmp_path, **settings)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.close()


@pytest.fixture(params=IN_PROCESS, ids="-".join)
def stack(request: pytest.FixtureRequest, make_stack: Callable[..., Stack]) -> Stack:
    """Memory and SQLite, workers in threads of this process."""
    return make_stack(*request.param)


@pytest.fixture
def prefork_stack(make_stack: Callable[..., Stack]) -> Stack:
    """SQLite with the prefork pool, its workers in subprocesses."""
    return make_stack("sqlite", "prefork")
