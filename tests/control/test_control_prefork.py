"""Remote control of prefork workers in other processes (SQLite and server brokers)."""

from __future__ import annotations

import pytest
from e2e_support import Stack, wait_until

from celeriac import states
from celeriac.exceptions import TaskRevokedError

TIMEOUT = 15.0
NODE = "pre@control"


def test_revoke_with_terminate_stops_the_running_task_and_records_revoked(
    prefork_stack: Stack,
) -> None:
    stack = prefork_stack
    stack.spawn(hostname=NODE)
    result = stack.tasks.gate.delay("stuck")  # its gate is never opened
    [child_pid] = wait_until(lambda: stack.records("stuck"), what="the task to start")
    inspect = stack.app.control.inspect(destination=[NODE], timeout=5)
    [info] = inspect.active()[NODE]
    assert (info["id"], info["worker_pid"]) == (result.id, child_pid)

    replies = stack.app.control.revoke(
        result.id, destination=[NODE], terminate=True, signal="SIGKILL", reply=True, timeout=5
    )
    assert replies == [{NODE: {"ok": f"terminate: {result.id}"}}]
    with pytest.raises(TaskRevokedError, match="terminated"):
        result.get(timeout=TIMEOUT)
    assert result.state == states.REVOKED
    # The pool replaced the child, and the worker goes on.
    assert stack.tasks.add.delay(1, 2).get(timeout=TIMEOUT) == 3
    # The child stores the result before it tells the worker it is done: soon, not at once.
    wait_until(lambda: inspect.active() == {NODE: []}, what="no task to be active")
    assert stack.records("stuck") == [child_pid]  # it ran once and never again


def test_a_revoke_made_while_no_worker_runs_is_honoured_by_the_next(
    prefork_stack: Stack,
) -> None:
    stack = prefork_stack
    revoked = stack.tasks.gate.delay("never")
    stack.app.control.revoke(revoked.id)
    stack.spawn(hostname=NODE)
    with pytest.raises(TaskRevokedError):
        revoked.get(timeout=TIMEOUT)
    assert stack.tasks.add.delay(2, 3).get(timeout=TIMEOUT) == 5
    assert stack.records("never") == []


def test_the_prefork_pool_grows_and_shrinks_and_shutdown_stops_the_worker(
    prefork_stack: Stack,
) -> None:
    stack = prefork_stack
    process = stack.spawn(hostname=NODE, concurrency=2)
    control = stack.app.control
    inspect = control.inspect(destination=[NODE], timeout=5)

    def processes() -> list[int]:
        return list(inspect.stats()[NODE]["pool"]["processes"])

    before = processes()
    assert len(before) == 2
    assert control.pool_grow(1, destination=[NODE], reply=True) == [
        {NODE: {"ok": "pool will grow"}}
    ]
    grown = wait_until(lambda: len(processes()) == 3 and processes(), what="a third child")
    assert set(before) < set(grown)
    control.pool_shrink(2, destination=[NODE], reply=True)
    wait_until(lambda: len(processes()) == 1, what="two children to retire")
    assert stack.tasks.add.delay(1, 1).get(timeout=TIMEOUT) == 2

    assert control.shutdown(destination=[NODE], reply=True, timeout=5) == [
        {NODE: {"ok": "shutting down"}}
    ]
    assert process.wait(timeout=TIMEOUT) == 0
    assert control.inspect(timeout=0.3).ping() is None
