"""Chords end to end: the body runs once with the header's results; failures fail the chord.

The header's reports are counted in the result backend and the last one sends the body,
from whichever worker (or prefork child) ran it.
"""

from __future__ import annotations

from typing import Any

import pytest
from e2e_support import Stack, wait_until
from workflow_support import TIMEOUT

from celeriac import GroupResult, chord, group
from celeriac.exceptions import ChordError


def test_the_body_gets_the_header_results_in_header_order(key_stack: Stack) -> None:
    wf = key_stack.wf
    with key_stack.worker():
        result = chord((wf.add.s(i, i) for i in range(10)), wf.note.s()).apply_async()
        assert result.get(timeout=TIMEOUT) == [2 * i for i in range(10)]
        header = result.parent
        assert isinstance(header, GroupResult)
        assert header.get(timeout=TIMEOUT) == [2 * i for i in range(10)]


def test_a_thousand_member_chord_completes_exactly_once(key_stack: Stack) -> None:
    wf = key_stack.wf
    with key_stack.worker(concurrency=4):
        result = chord((wf.add.s(i, i) for i in range(1000)), wf.body.s()).apply_async()
        assert result.get(timeout=60) == sum(2 * i for i in range(1000))
    # The worker stopped warm: anything the chord sent has run or is still queued.
    assert key_stack.records("body") == [1000]
    assert key_stack.queue_length() == 0


def test_a_failed_header_task_fails_the_chord_naming_it_and_runs_the_body_errbacks(
    key_stack: Stack,
) -> None:
    wf = key_stack.wf
    body = wf.body.s()
    body.link_error(wf.on_error.s())
    body.link_error(wf.on_error_id.s())
    with key_stack.worker():
        result = chord([wf.add.s(1, 1), wf.fail.s("header"), wf.add.s(2, 2)], body).apply_async()
        failed = result.parent[1]
        with pytest.raises(ChordError, match=f"Dependency {failed.id} raised ValueError"):
            result.get(timeout=TIMEOUT)
        wait_until(lambda: key_stack.records("on_error_id"), what="the task-id errback")
        wait_until(lambda: key_stack.records("on_error"), what="the request errback")
    (called,) = key_stack.records("on_error")
    assert (called["id"], called["type"]) == (result.id, "ChordError")
    assert failed.id in called["message"]
    assert key_stack.records("on_error_id") == [result.id]
    assert key_stack.records("body") == []
    assert result.parent.completed_count() == 2


def test_a_group_piped_into_a_task_is_a_chord(threads_stack: Stack) -> None:
    wf = threads_stack.wf
    with threads_stack.worker():
        result = (group(wf.add.s(i, 1) for i in range(4)) | wf.tsum.s()).apply_async()
        assert result.get(timeout=TIMEOUT) == 10


def test_a_chord_called_with_its_body(threads_stack: Stack) -> None:
    wf = threads_stack.wf
    with threads_stack.worker():
        result = chord([wf.add.s(1, 1), wf.add.s(2, 2)])(wf.tsum.s())
        assert result.get(timeout=TIMEOUT) == 6


def test_partial_arguments_go_to_every_header_task(threads_stack: Stack) -> None:
    wf = threads_stack.wf
    with threads_stack.worker():
        result = chord([wf.add.s(1), wf.add.s(2)], wf.note.s()).apply_async((10,))
        assert result.get(timeout=TIMEOUT) == [11, 12]


def test_an_empty_header_runs_the_body_with_an_empty_list(memory_stack: Stack) -> None:
    wf = memory_stack.wf
    with memory_stack.worker():
        assert chord([], wf.note.s()).apply_async().get(timeout=TIMEOUT) == []


def test_the_body_may_be_a_chain(threads_stack: Stack) -> None:
    wf = threads_stack.wf
    with threads_stack.worker():
        result = chord([wf.add.s(1, 1), wf.add.s(2, 2)], wf.tsum.s() | wf.mul.s(10)).apply_async()
        assert result.get(timeout=TIMEOUT) == 60
        assert result.parent.get(timeout=TIMEOUT) == 6
        assert isinstance(result.parent.parent, GroupResult)


def test_a_body_that_fails_fails_the_chord_result(threads_stack: Stack) -> None:
    wf = threads_stack.wf
    with threads_stack.worker():
        result = chord([wf.add.s(1, 1)], wf.fail.s()).apply_async()
        with pytest.raises(ValueError, match="wf"):
            result.get(timeout=TIMEOUT)


def test_the_rpc_backend_refuses_chords_when_sent_and_names_the_backends_that_count_them(
    make_stack: Any,
) -> None:
    stack = make_stack("memory", "threads", backend="rpc://")
    wf = stack.wf
    for workflow in (
        chord([wf.add.s(1, 1)], wf.tsum.s()),
        group(wf.add.s(1, 1), wf.add.s(2, 2)) | wf.tsum.s(),
    ):
        with pytest.raises(NotImplementedError, match=r"rpc:// .* redis://, sqlite:// or memory"):
            workflow.apply_async()
    assert stack.queue_length() == 0  # nothing of either chord was sent
