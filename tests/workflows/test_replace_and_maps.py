"""``Task.replace``, ``chunks``, ``map`` and ``starmap`` end to end."""

from __future__ import annotations

from e2e_support import Stack
from workflow_support import TIMEOUT

from celeriac import GroupResult, chain, chord


def test_chunks_map_and_starmap_run_on_the_worker(stack: Stack) -> None:
    add = stack.wf.add
    with stack.worker():
        parts = add.chunks([(i, i) for i in range(7)], 3).apply_async()
        assert isinstance(parts, GroupResult)
        assert parts.get(timeout=TIMEOUT) == [[0, 2, 4], [6, 8, 10], [12]]
        assert add.starmap([(1, 2), (3, 4)]).apply_async().get(timeout=TIMEOUT) == [3, 7]
        assert stack.wf.note.map([1, "a"]).delay().get(timeout=TIMEOUT) == [1, "a"]


def test_a_task_replaced_by_a_task_finishes_under_its_own_id(threads_stack: Stack) -> None:
    replaced = threads_stack.wf.replaced
    with threads_stack.worker():
        result = replaced.delay("task", 5)
        assert result.get(timeout=TIMEOUT) == 105


def test_a_task_replaced_by_a_chain_has_the_chains_result(threads_stack: Stack) -> None:
    replaced = threads_stack.wf.replaced
    with threads_stack.worker():
        assert replaced.delay("chain", 5).get(timeout=TIMEOUT) == 60


def test_a_task_replaced_by_a_group_has_the_list_of_its_results(stack: Stack) -> None:
    replaced = stack.wf.replaced
    with stack.worker():
        assert replaced.delay("group", 5).get(timeout=TIMEOUT) == [5, 6, 7]


def test_a_replaced_step_of_a_chain_hands_its_result_to_the_next_step(
    threads_stack: Stack,
) -> None:
    wf = threads_stack.wf
    with threads_stack.worker():
        result = chain(wf.replaced.s("task", 1), wf.add.s(1), wf.mul.s(2)).apply_async()
        assert result.get(timeout=TIMEOUT) == 204


def test_a_replaced_task_in_a_chord_header_is_counted_once(threads_stack: Stack) -> None:
    wf = threads_stack.wf
    with threads_stack.worker():
        header = [wf.replaced.s("chain", 1), wf.replaced.s("group", 0), wf.add.s(1, 1)]
        result = chord(header, wf.note.s()).apply_async()
        assert result.get(timeout=TIMEOUT) == [20, [0, 1, 2], 2]
    assert threads_stack.records("note") == [[20, [0, 1, 2], 2]]


def test_replace_runs_the_replacement_at_once_in_eager_mode(threads_stack: Stack) -> None:
    threads_stack.app.conf.task_always_eager = True
    assert threads_stack.wf.replaced.delay("chain", 1).get() == 20
