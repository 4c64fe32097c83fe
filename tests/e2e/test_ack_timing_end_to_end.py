"""When a task's message is acked: a started task (without ``acks_late``) is not left
unacked while long tasks fill the worker's window, so killing the worker does not run it
again (Celery's early ack), while the tasks still waiting in its pool come back. On the
SQLite broker a killed worker's unacked messages come back at once."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from e2e_support import Stack, wait_until

MakeStack = Callable[..., Stack]


def test_a_long_task_is_acked_while_it_runs_with_the_window_full(make_stack: MakeStack) -> None:
    stack = make_stack("sqlite", "threads")
    worker = stack.spawn(concurrency=1)  # a window of 4: the four tasks are fetched at once
    stack.tasks.add.delay(1, 1)
    stack.tasks.sleepy.delay(30)  # starts once the first is done, the window still full
    waiting = [stack.tasks.add.delay(2, 2), stack.tasks.add.delay(3, 3)]
    wait_until(lambda: stack.records("sleepy"), what="the long task to start")
    time.sleep(0.3)  # well past the ack delay of an idle worker with a full window
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    back = stack.fetch("celery", count=3, timeout=1.0)
    assert sorted(m.headers["id"] for m in back) == sorted(r.id for r in waiting)
    assert len(stack.records("sleepy")) == 1
