"""Workers as processes: prefork children dying and timing out, SIGTERM and SIGKILL.

The worker runs as ``celeriac -A proj worker`` in a subprocess on the SQLite broker, so
signals reach it as they would in production.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest
from e2e_support import Stack, running_worker, stack_id, wait_until

from celeriac import states
from celeriac.exceptions import TimeLimitExceeded, WorkerLostError

TIMEOUT = 15
MakeStack = Callable[..., Stack]


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


# -- prefork children ----------------------------------------------------------------------


def test_a_child_killed_mid_task_with_reject_on_worker_lost_runs_it_again_exactly_once(
    prefork_stack: Stack,
) -> None:
    stack = prefork_stack
    with stack.worker():
        result = stack.tasks.survivor.delay()
        (pid,) = wait_until(lambda: stack.records("survivor"), what="the task to start")
        kill(pid)
        assert result.get(timeout=TIMEOUT) == {"redelivered": True}
    assert len(stack.records("survivor")) == 2
    assert stack.queue_length() == 0


def test_a_child_killed_mid_task_without_reject_on_worker_lost_fails_with_worker_lost(
    prefork_stack: Stack,
) -> None:
    stack = prefork_stack
    with stack.worker():
        result = stack.tasks.lost.delay()
        (pid,) = wait_until(lambda: stack.records("lost"), what="the task to start")
        kill(pid)
        with pytest.raises(WorkerLostError):
            result.get(timeout=TIMEOUT)
    assert result.state == states.FAILURE
    assert len(stack.records("lost")) == 1
    assert stack.queue_length() == 0


def test_a_killed_child_is_replaced_and_the_pool_keeps_working(prefork_stack: Stack) -> None:
    stack = prefork_stack
    with stack.worker(concurrency=1):
        result = stack.tasks.lost.delay()
        (pid,) = wait_until(lambda: stack.records("lost"), what="the task to start")
        kill(pid)
        result.get(timeout=TIMEOUT, propagate=False)
        assert stack.tasks.sleepy.delay(0).get(timeout=TIMEOUT) == "slept"
    (new_pid,) = stack.records("sleepy")
    assert new_pid != pid


def test_a_hard_time_limit_fails_the_task_with_time_limit_exceeded(prefork_stack: Stack) -> None:
    stack = prefork_stack
    with stack.worker():
        started = time.monotonic()
        with pytest.raises(TimeLimitExceeded):
            stack.tasks.hard_limited.delay().get(timeout=TIMEOUT)
    assert time.monotonic() - started < 5


def test_the_pool_keeps_working_after_a_hard_time_limit(prefork_stack: Stack) -> None:
    stack = prefork_stack
    with stack.worker(concurrency=1):
        stack.tasks.hard_limited.delay().get(timeout=TIMEOUT, propagate=False)
        assert stack.tasks.add.delay(1, 2).get(timeout=TIMEOUT) == 3


@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_a_soft_time_limit_raises_soft_time_limit_exceeded_inside_the_task(
    make_stack: MakeStack, pool: str
) -> None:
    stack = make_stack("sqlite", pool)
    stack.spawn()  # solo enforces soft limits only on the main thread: a process of its own
    assert stack.tasks.soft_limited.delay().get(timeout=TIMEOUT) == "cleaned up"


def test_the_workers_time_limit_option_applies_to_every_task(prefork_stack: Stack) -> None:
    stack = prefork_stack
    with stack.worker(time_limit=0.5), pytest.raises(TimeLimitExceeded):
        stack.tasks.sleepy.delay(10).get(timeout=TIMEOUT)


def test_max_tasks_per_child_replaces_a_child_after_its_tasks(prefork_stack: Stack) -> None:
    stack = prefork_stack
    with stack.worker(concurrency=1, max_tasks_per_child=1):
        for _ in range(2):
            stack.tasks.sleepy.delay(0).get(timeout=TIMEOUT)
    first, second = stack.records("sleepy")
    assert first != second


# -- the asyncio pool's time limit ---------------------------------------------------------


def test_a_hard_time_limit_cancels_an_async_task_on_the_asyncio_pool(make_stack: MakeStack) -> None:
    stack = make_stack("memory", "asyncio")
    with stack.worker():
        with pytest.raises(TimeLimitExceeded):
            stack.tasks.async_hard_limited.delay().get(timeout=TIMEOUT)
        assert stack.tasks.add.delay(1, 2).get(timeout=TIMEOUT) == 3


# -- whole workers -------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_a_warm_shutdown_lets_the_running_task_finish_and_store_its_result_then_exits_0(
    make_stack: MakeStack, pool: str, signum: int
) -> None:
    stack = make_stack("sqlite", pool)
    worker = stack.spawn()
    result = stack.tasks.sleepy.delay(0.5)
    wait_until(lambda: stack.records("sleepy"), what="the task to start")
    worker.signal(signum)
    assert worker.wait() == 0
    assert result.state == states.SUCCESS
    assert result.get(timeout=1) == "slept"


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_sigterm_returns_a_held_countdown_task_to_the_broker(
    make_stack: MakeStack, pool: str
) -> None:
    stack = make_stack("sqlite", pool)
    worker = stack.spawn()
    held = stack.tasks.add.apply_async((1, 2), countdown=300)
    wait_until(lambda: stack.queue_length() == 0, what="the worker to take the task")
    time.sleep(0.1)
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    assert stack.queue_length() == 1
    assert held.state == states.PENDING


#: A SIGKILLed worker's messages come back: at once on SQLite and RabbitMQ (the session or
#: channel closes), within the connection-loss grace (10 s) on Redis.
REDELIVERY_TIMEOUT = 30


KILLED_WORKER_STACKS = [
    ("sqlite", "threads"),
    ("sqlite", "prefork"),
    ("redis", "prefork"),
    ("amqp", "prefork"),
]


@pytest.mark.parametrize(
    ("transport", "pool"), KILLED_WORKER_STACKS, ids=[stack_id(s) for s in KILLED_WORKER_STACKS]
)
def test_a_sigkilled_worker_loses_nothing_and_its_acks_late_task_runs_again_once(
    make_stack: MakeStack, transport: str, pool: str
) -> None:
    stack = make_stack(transport, pool)
    worker = stack.spawn(concurrency=1)
    result = stack.tasks.survivor.delay()
    wait_until(lambda: stack.records("survivor"), what="the task to start")
    waiting = [stack.tasks.add.delay(i, i) for i in range(6)]  # prefetched, not yet acked
    time.sleep(0.2)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    with running_worker(stack.app, "threads"):
        assert result.get(timeout=REDELIVERY_TIMEOUT) == {"redelivered": True}
        assert [r.get(timeout=REDELIVERY_TIMEOUT) for r in waiting] == [2 * i for i in range(6)]
    assert len(stack.records("survivor")) == 2
    assert stack.records("survivor")[1] == os.getpid()


def test_a_second_sigterm_stops_a_worker_waiting_for_a_long_task(make_stack: MakeStack) -> None:
    stack = make_stack("sqlite", "prefork")
    worker = stack.spawn()
    stack.tasks.sleepy.delay(30)
    wait_until(lambda: stack.records("sleepy"), what="the task to start")
    worker.signal(signal.SIGTERM)
    time.sleep(0.3)
    assert worker.process.poll() is None  # warm: waiting for the task
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    worker.wait(timeout=10)
    assert time.monotonic() - started < 5


def test_a_cold_shutdown_returns_a_running_acks_late_task_to_the_broker(
    make_stack: MakeStack,
) -> None:
    stack = make_stack("sqlite", "prefork")
    worker = stack.spawn()
    result = stack.tasks.lost.delay()
    wait_until(lambda: stack.records("lost"), what="the task to start")
    worker.signal(signal.SIGQUIT)
    worker.wait(timeout=10)
    assert stack.queue_length() == 1
    assert result.state == states.PENDING
