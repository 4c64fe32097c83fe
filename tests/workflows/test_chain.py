"""Chains end to end: results passed on, parents walked back, failures stopping the chain."""

from __future__ import annotations

import pytest
from e2e_support import Stack, wait_until
from workflow_support import TIMEOUT

from celeriac import chain, states


def test_each_result_passes_to_the_next_step_and_parents_walk_back(key_stack: Stack) -> None:
    wf = key_stack.wf
    with key_stack.worker():
        result = (wf.add.s(1, 1) | wf.add.s(10) | wf.mul.s(3)).apply_async()
        assert result.get(timeout=TIMEOUT) == 36
        assert result.parent.get(timeout=TIMEOUT) == 12
        assert result.parent.parent.get(timeout=TIMEOUT) == 2
    assert result.parent.parent.parent is None


def test_an_immutable_step_ignores_the_previous_result(threads_stack: Stack) -> None:
    wf = threads_stack.wf
    with threads_stack.worker():
        result = chain(wf.add.s(1, 1), wf.add.si(5, 5), wf.add.s(1)).apply_async()
        assert result.get(timeout=TIMEOUT) == 11


def test_steps_share_the_root_id_and_each_has_the_previous_as_parent(
    threads_stack: Stack,
) -> None:
    whoami = threads_stack.wf.whoami
    with threads_stack.worker():
        result = chain(whoami.s(), whoami.s(), whoami.s()).apply_async()
        third = result.get(timeout=TIMEOUT)
        second = result.parent.get(timeout=TIMEOUT)
        first = result.parent.parent.get(timeout=TIMEOUT)
    assert first["root_id"] == first["id"] and first["parent_id"] is None
    assert second["root_id"] == third["root_id"] == first["id"]
    assert (second["parent_id"], third["parent_id"]) == (first["id"], second["id"])


def test_a_step_is_recorded_as_a_child_of_the_step_before_it(threads_stack: Stack) -> None:
    wf = threads_stack.wf
    with threads_stack.worker():
        result = (wf.add.s(1, 1) | wf.add.s(2)).apply_async()
        result.get(timeout=TIMEOUT)
        first = result.parent
        assert [child.id for child in first.children] == [result.id]
        assert [(r.id, value) for r, value in first.collect(timeout=TIMEOUT)] == [
            (first.id, 2),
            (result.id, 4),
        ]


def test_a_failing_step_stops_the_chain_and_runs_its_errbacks(key_stack: Stack) -> None:
    wf = key_stack.wf
    workflow = chain(wf.add.s(1, 1), wf.fail.s(), wf.note.s())
    workflow.link_error(wf.on_error.s())
    workflow.link_error(wf.on_error_id.s())
    with key_stack.worker():
        result = workflow.apply_async()
        failed = result.parent
        with pytest.raises(ValueError, match=r"wf\.fail"):
            failed.get(timeout=TIMEOUT)
        assert result.parent.parent.get(timeout=TIMEOUT) == 2
        wait_until(lambda: key_stack.records("on_error_id"), what="the task-id errback")
        wait_until(lambda: key_stack.records("on_error"), what="the request errback")
    assert key_stack.records("on_error_id") == [failed.id]
    (called,) = key_stack.records("on_error")
    assert (called["id"], called["type"]) == (failed.id, "ValueError")
    assert key_stack.records("note") == []
    # The steps after the failure never run; waiting on them raises the failure.
    assert result.state == states.FAILURE
    with pytest.raises(ValueError, match=r"wf\.fail"):
        result.get(timeout=TIMEOUT)


def test_partial_arguments_reach_the_first_step(threads_stack: Stack) -> None:
    wf = threads_stack.wf
    with threads_stack.worker():
        result = chain(wf.add.s(1), wf.mul.s(2)).apply_async((4,))
        assert result.get(timeout=TIMEOUT) == 10
