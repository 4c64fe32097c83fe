"""Workflows inside workflows: the nestings users build, and failures in their middle."""

from __future__ import annotations

import pytest
from e2e_support import Stack
from workflow_support import TIMEOUT

from celeriac import GroupResult, chain, chord, group
from celeriac.exceptions import ChordError


def test_a_chain_through_a_group(stack: Stack) -> None:
    wf = stack.wf
    with stack.worker():
        workflow = chain(wf.add.s(1, 1), group(wf.add.s(10), wf.add.s(20)), wf.tsum.s())
        result = workflow.apply_async()
        assert result.get(timeout=TIMEOUT) == 34
        assert result.parent.get(timeout=TIMEOUT) == [12, 22]


def test_a_chain_of_two_groups_runs_the_second_with_the_first_ones_results(
    threads_stack: Stack,
) -> None:
    wf = threads_stack.wf
    with threads_stack.worker():
        workflow = chain(group(wf.add.s(1, 1), wf.add.s(2, 2)), group(wf.tsum.s(), wf.note.s()))
        result = workflow.apply_async()
        assert isinstance(result, GroupResult)
        assert result.get(timeout=TIMEOUT) == [6, [2, 4]]


def test_a_chain_ending_in_a_group(threads_stack: Stack) -> None:
    wf = threads_stack.wf
    with threads_stack.worker():
        result = (wf.add.s(1, 1) | group(wf.mul.s(2), wf.mul.s(3))).apply_async()
        assert isinstance(result, GroupResult)
        assert result.get(timeout=TIMEOUT) == [4, 6]
        assert result.parent.get(timeout=TIMEOUT) == 2


def test_a_group_of_chains(stack: Stack) -> None:
    wf = stack.wf
    with stack.worker():
        result = group(wf.add.s(i, i) | wf.mul.s(10) for i in range(5)).apply_async()
        assert result.get(timeout=TIMEOUT) == [20 * i for i in range(5)]
        assert result[2].parent.get(timeout=TIMEOUT) == 4


def test_a_failure_in_one_chain_of_a_group_leaves_the_others(threads_stack: Stack) -> None:
    wf = threads_stack.wf
    with threads_stack.worker():
        result = group(wf.add.s(1, 1) | wf.fail.s(), wf.add.s(2, 2) | wf.mul.s(2)).apply_async()
        values = result.get(timeout=TIMEOUT, propagate=False)
    assert isinstance(values[0], ValueError) and values[1] == 8


def test_a_chord_inside_a_chain(stack: Stack) -> None:
    wf = stack.wf
    with stack.worker():
        workflow = chain(
            wf.add.s(1, 1), chord([wf.add.s(1), wf.add.s(2)], wf.tsum.s()), wf.mul.s(10)
        )
        result = workflow.apply_async()
        assert result.get(timeout=TIMEOUT) == 70
        body = result.parent
        assert body.get(timeout=TIMEOUT) == 7
        header = body.parent
        assert isinstance(header, GroupResult)
        assert header.get(timeout=TIMEOUT) == [3, 4]
        assert header.parent.get(timeout=TIMEOUT) == 2


def test_a_failure_in_a_chord_inside_a_chain_stops_the_chain(threads_stack: Stack) -> None:
    wf = threads_stack.wf
    with threads_stack.worker():
        workflow = chain(
            wf.add.s(1, 1), chord([wf.add.s(1), wf.fail.s()], wf.tsum.s()), wf.note.s()
        )
        result = workflow.apply_async()
        with pytest.raises(ChordError):
            result.get(timeout=TIMEOUT)
        with pytest.raises(ChordError):
            result.parent.get(timeout=TIMEOUT)
    assert threads_stack.records("note") == []


def test_a_chord_whose_header_holds_chains(stack: Stack) -> None:
    wf = stack.wf
    with stack.worker():
        header = [wf.add.s(1, 1) | wf.mul.s(2), wf.add.s(2, 2) | wf.mul.s(3), wf.add.s(5, 5)]
        result = chord(header, wf.note.s()).apply_async()
        assert result.get(timeout=TIMEOUT) == [4, 12, 10]


def test_a_failure_in_a_chain_of_a_chord_header_fails_the_chord(threads_stack: Stack) -> None:
    wf = threads_stack.wf
    with threads_stack.worker():
        header = [wf.add.s(1, 1) | wf.fail.s(), wf.add.s(2, 2)]
        result = chord(header, wf.body.s()).apply_async()
        with pytest.raises(ChordError, match="Dependency"):
            result.get(timeout=TIMEOUT)
    assert threads_stack.records("body") == []


def test_a_chord_inside_a_chord_header(threads_stack: Stack) -> None:
    wf = threads_stack.wf
    with threads_stack.worker():
        inner = chord([wf.add.s(1, 1), wf.add.s(2, 2)], wf.tsum.s())
        result = chord([inner, wf.add.s(10, 10)], wf.note.s()).apply_async()
        assert result.get(timeout=TIMEOUT) == [6, 20]


def test_a_chord_whose_body_is_a_chord(threads_stack: Stack) -> None:
    wf = threads_stack.wf
    with threads_stack.worker():
        second = chord([wf.tsum.s(), wf.note.s()], wf.note.s())
        result = chord([wf.add.s(1, 1), wf.add.s(2, 2)], second).apply_async()
        assert result.get(timeout=TIMEOUT) == [6, [2, 4]]
