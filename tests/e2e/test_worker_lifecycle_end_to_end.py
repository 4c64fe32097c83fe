"""The worker's own life: stopping promptly, purging, and bounded holding of ETA tasks."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from e2e_support import Stack, wait_until

from celeriac import states

TIMEOUT = 10


def test_a_warm_stop_of_an_idle_worker_takes_well_under_a_second(
    in_process_stack: Stack,
) -> None:
    stack = in_process_stack
    stops: list[float] = []
    for _ in range(8):
        with stack.worker():
            stack.tasks.add.delay(1, 2).get(timeout=TIMEOUT)
            stopping = time.monotonic()
        stops.append(time.monotonic() - stopping)
    assert max(stops) < 0.5, stops


def test_purge_deletes_the_waiting_tasks_before_the_worker_starts(threads_stack: Stack) -> None:
    stack = threads_stack
    waiting = stack.tasks.add.delay(1, 2)
    with stack.worker(purge=True):
        assert stack.tasks.add.delay(2, 3).get(timeout=TIMEOUT) == 5
    assert waiting.state == states.PENDING
    assert stack.queue_length() == 0


def test_eta_tasks_beyond_the_hold_limit_stay_in_the_broker(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack("sqlite", "threads", worker_eta_hold_limit=2)
    for _ in range(3):  # waiting before the worker starts: its first fetch could take all
        stack.tasks.add.apply_async((1, 2), countdown=300)
    with stack.worker():
        wait_until(lambda: stack.queue_length() <= 1, what="the worker to hold two")
        time.sleep(0.2)
        assert stack.queue_length() == 1
    assert stack.queue_length() == 3


def test_a_full_eta_hold_does_not_block_tasks_that_are_due(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack("sqlite", "threads", worker_eta_hold_limit=2)
    with stack.worker():
        for _ in range(3):
            stack.tasks.add.apply_async((1, 2), countdown=300)
        wait_until(lambda: stack.queue_length() <= 1, what="the worker to hold the tasks")
        time.sleep(0.2)
        assert stack.tasks.add.delay(2, 3).get(timeout=3) == 5


@pytest.mark.parametrize("transport", ["sqlite", "redis", "amqp"])
def test_eta_tasks_due_beyond_the_hold_delay_wait_in_the_broker_not_the_worker(
    make_stack: Callable[..., Stack], transport: str
) -> None:
    stack = make_stack(transport, "threads", worker_eta_hold_max_delay=5)
    with stack.worker() as worker:
        far = stack.tasks.add.apply_async((1, 2), countdown=3600)
        near = stack.tasks.add.apply_async((2, 2), countdown=0.5)
        # Sent first, so received before ``near`` ran: deferred, not held.
        assert near.get(timeout=TIMEOUT) == 4
        assert far.id not in worker.consumer.held  # type: ignore[union-attr]
        if transport != "amqp":  # RabbitMQ's delay queues are not the queue's length
            wait_until(lambda: stack.queue_length() == 1, what="the deferred task")
    assert far.state == states.PENDING
