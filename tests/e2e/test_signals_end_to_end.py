"""Signals sent by a worker running in this process (solo, threads and asyncio pools)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from e2e_support import Stack, wait_until

from celeriac import signals

TIMEOUT = 10
WATCHED = ["task_prerun", "task_postrun", "task_success", "task_failure", "worker_ready"]


@pytest.fixture
def fired() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """``(signal name, arguments)`` of every watched signal sent during the test."""
    events: list[tuple[str, dict[str, Any]]] = []
    receivers = []
    for name in WATCHED:

        def receiver(name: str = name, **kwargs: Any) -> None:
            events.append((name, kwargs))

        getattr(signals, name).connect(receiver)
        receivers.append((name, receiver))
    yield events
    for name, receiver in receivers:
        getattr(signals, name).disconnect(receiver)


def named(events: list[tuple[str, dict[str, Any]]], name: str) -> list[dict[str, Any]]:
    return [kwargs for signal, kwargs in events if signal == name]


def test_worker_ready_is_sent_once_with_the_worker(
    in_process_stack: Stack, fired: list[tuple[str, dict[str, Any]]]
) -> None:
    with in_process_stack.worker() as worker:
        (ready,) = named(fired, "worker_ready")
    assert ready["sender"] is worker


def test_a_succeeding_task_sends_prerun_success_and_postrun_in_order(
    in_process_stack: Stack, fired: list[tuple[str, dict[str, Any]]]
) -> None:
    stack = in_process_stack
    with stack.worker():
        result = stack.tasks.add.delay(2, 2)
        result.get(timeout=TIMEOUT)
        wait_until(lambda: named(fired, "task_postrun"), what="task_postrun")
    task_events = [(name, kwargs) for name, kwargs in fired if name != "worker_ready"]
    assert [name for name, _ in task_events] == ["task_prerun", "task_success", "task_postrun"]
    prerun, success, postrun = (kwargs for _, kwargs in task_events)
    assert (prerun["task_id"], tuple(prerun["args"])) == (result.id, (2, 2))
    assert success["result"] == 4
    assert success["sender"] is stack.tasks.add
    assert (postrun["task_id"], postrun["retval"], postrun["state"]) == (result.id, 4, "SUCCESS")


def test_a_failing_task_sends_task_failure_with_its_exception(
    in_process_stack: Stack, fired: list[tuple[str, dict[str, Any]]]
) -> None:
    stack = in_process_stack
    with stack.worker():
        result = stack.tasks.fail.delay("signal")
        result.get(timeout=TIMEOUT, propagate=False)
        wait_until(lambda: named(fired, "task_postrun"), what="task_postrun")
    (failure,) = named(fired, "task_failure")
    assert failure["task_id"] == result.id
    assert isinstance(failure["exception"], ValueError)
    assert named(fired, "task_success") == []
    (postrun,) = named(fired, "task_postrun")
    assert postrun["state"] == "FAILURE"
