"""Groups end to end: members in parallel, GroupResult in member order, its whole API."""

from __future__ import annotations

import pytest
from e2e_support import Stack, wait_until
from workflow_support import TIMEOUT

from celeriac import AsyncResult, GroupResult, group
from celeriac.exceptions import TaskRevokedError
from celeriac.exceptions import TimeoutError as CeleriacTimeoutError


def test_results_come_back_in_member_order(key_stack: Stack) -> None:
    wf = key_stack.wf
    with key_stack.worker():
        result = group(wf.add.s(i, i) for i in range(20)).apply_async()
        assert result.get(timeout=TIMEOUT) == [2 * i for i in range(20)]
    assert result.ready() and result.successful() and not result.failed()
    assert result.completed_count() == 20


def test_a_group_result_shows_progress_while_members_run(threads_stack: Stack) -> None:
    gate, add = threads_stack.tasks.gate, threads_stack.wf.add
    with threads_stack.worker():
        result = group(gate.s("slow"), add.s(1, 1)).apply_async()
        wait_until(result[1].ready, what="the quick member")
        assert result.completed_count() == 1
        assert result.waiting() and not result.ready()
        with pytest.raises(CeleriacTimeoutError):
            result.get(timeout=0.2)
        threads_stack.open_gate("slow")
        assert result.join(timeout=TIMEOUT) == ["released", 2]
    assert result.ready() and not result.waiting()


def test_a_failed_member_fails_the_group_while_the_others_finish(key_stack: Stack) -> None:
    wf = key_stack.wf
    with key_stack.worker():
        result = group(wf.add.s(1, 1), wf.fail.s(7), wf.add.s(2, 2)).apply_async()
        with pytest.raises(ValueError, match=r"wf\.fail"):
            result.get(timeout=TIMEOUT)
        values = result.get(timeout=TIMEOUT, propagate=False)
    assert values[0] == 2 and values[2] == 4
    assert isinstance(values[1], ValueError) and values[1].args == ("wf.fail", 7)
    assert result.failed() and not result.successful()
    assert result.completed_count() == 2


def test_a_saved_group_is_restored_by_its_id(memory_stack: Stack) -> None:
    wf, app = memory_stack.wf, memory_stack.app
    with memory_stack.worker():
        result = group(wf.add.s(i, 1) for i in range(3)).apply_async().save()
        restored = GroupResult.restore(result.id, app=app)
        assert restored is not None and restored == result
        assert restored.get(timeout=TIMEOUT) == [1, 2, 3]
    result.delete()
    assert GroupResult.restore(result.id, app=app) is None


def test_forget_deletes_every_member_result(memory_stack: Stack) -> None:
    wf = memory_stack.wf
    with memory_stack.worker():
        result = group(wf.add.s(1, 1), wf.add.s(2, 2)).apply_async()
        result.get(timeout=TIMEOUT)
    result.forget()
    fresh = [AsyncResult(r.id, app=memory_stack.app) for r in result]
    assert [r.state for r in fresh] == ["PENDING", "PENDING"]


def test_a_callback_gets_each_value_instead_of_a_list(memory_stack: Stack) -> None:
    wf = memory_stack.wf
    seen: list[tuple[str, int]] = []
    with memory_stack.worker():
        result = group(wf.add.s(1, 1), wf.add.s(2, 2)).apply_async()
        assert result.get(timeout=TIMEOUT, callback=lambda i, v: seen.append((i, v))) == []
    assert seen == [(result[0].id, 2), (result[1].id, 4)]


def test_a_group_sent_by_a_task_is_one_of_its_children(threads_stack: Stack) -> None:
    fan_out = threads_stack.wf.fan_out
    with threads_stack.worker():
        result = fan_out.delay(3)
        assert result.get(timeout=TIMEOUT) == 3
        sent_group, sent_task = result.children
        assert isinstance(sent_group, GroupResult) and len(sent_group) == 3
        collected = {r.id: value for r, value in result.collect(timeout=TIMEOUT)}
    assert collected[result.id] == 3
    assert collected[sent_group.id] == [0, 2, 4]
    assert [collected[member.id] for member in sent_group] == [0, 2, 4]
    assert collected[sent_task.id] == 6


def test_a_revoked_group_runs_none_of_its_members(threads_stack: Stack) -> None:
    wf = threads_stack.wf
    result = group(wf.note.s(i) for i in range(3)).apply_async()
    result.revoke()
    with threads_stack.worker():
        values = result.get(timeout=TIMEOUT, propagate=False)
        with pytest.raises(TaskRevokedError):
            result.get(timeout=TIMEOUT)
    assert all(isinstance(value, TaskRevokedError) for value in values)
    assert threads_stack.records("note") == []
