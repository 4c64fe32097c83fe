"""Reading many results at once: what waiting on a big group does first."""

from __future__ import annotations

from typing import Any

import pytest
from e2e_support import Stack
from workflow_support import TIMEOUT

from celeriac import group, states
from celeriac.backends.base import ResultBackend


def test_several_task_metas_are_read_together_and_missing_ones_left_out(
    backend: ResultBackend,
) -> None:
    ids = [f"task-{i}" for i in range(1200)]
    backend.store_many([(task_id, i, states.SUCCESS, None, None) for i, task_id in enumerate(ids)])
    backend.mark_as_failure("bad", ValueError("no"))
    metas = backend.get_task_metas([*ids, "bad", "never-sent"])
    assert [metas[task_id]["result"] for task_id in ids] == list(range(1200))
    assert isinstance(metas["bad"]["result"], ValueError)
    assert "never-sent" not in metas


def test_joining_a_finished_group_reads_its_members_in_one_go(
    threads_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    add = threads_stack.wf.add
    with threads_stack.worker():
        result = group(add.s(i, i) for i in range(50)).apply_async()
        result[-1].get(timeout=TIMEOUT)
        result.join(timeout=TIMEOUT)
    backend = threads_stack.app.backend
    fresh = type(result)(result.id, [type(r)(r.id, app=threads_stack.app) for r in result])
    single_reads: list[Any] = []
    get = backend._get
    monkeypatch.setattr(backend, "_get", lambda key: single_reads.append(key) or get(key))
    assert fresh.get(timeout=TIMEOUT) == [2 * i for i in range(50)]
    assert single_reads == []
