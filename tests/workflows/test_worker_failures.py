"""Tasks the worker ends itself (a hard time limit, expiry, a revoke) in workflows and rpc.

The tracer never sees these tasks end, so the worker records them: the chord a header task
belongs to must fail with ChordError instead of waiting for ever, and an rpc client must
get the state, addressed to its reply queue.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from e2e_support import Stack, wait_until
from workflow_support import TIMEOUT

from celeriac import chord
from celeriac.exceptions import ChordError, TaskRevokedError, TimeLimitExceeded

PAST = timedelta(seconds=-30)


def header_failure(stack: Stack, header: list[Any], failing: int, error: str) -> None:
    """Run a chord whose header task ``failing`` the worker ends; check the chord failed."""
    wf = stack.wf
    body = wf.body.s()
    body.link_error(wf.on_error_id.s())
    result = chord(header, body).apply_async()
    culprit = result.parent[failing]
    with pytest.raises(ChordError, match=f"Dependency {culprit.id} raised {error}"):
        result.get(timeout=TIMEOUT)
    wait_until(lambda: stack.records("on_error_id"), what="the body's errback")
    assert stack.records("on_error_id") == [result.id]
    assert stack.records("body") == []


def test_a_header_task_stopped_by_its_hard_time_limit_fails_the_chord(
    prefork_stack: Stack,
) -> None:
    stack = prefork_stack
    header = [stack.wf.add.s(1, 1), stack.tasks.hard_limited.s(), stack.wf.add.s(2, 2)]
    with stack.worker():
        header_failure(stack, header, 1, "TimeLimitExceeded")


def test_a_chain_step_stopped_by_its_hard_time_limit_fails_the_rest_and_calls_its_errback(
    prefork_stack: Stack,
) -> None:
    stack = prefork_stack
    first = stack.tasks.hard_limited.si().on_error(stack.wf.on_error_id.s())
    with stack.worker():
        result = (first | stack.wf.add.s(1)).apply_async()
        with pytest.raises(TimeLimitExceeded):
            result.get(timeout=TIMEOUT)  # the step after it, which never ran
        wait_until(lambda: stack.records("on_error_id"), what="the step's errback")
    assert stack.records("on_error_id") == [result.parent.id]


def test_a_header_task_that_expired_fails_the_chord(threads_stack: Stack) -> None:
    stack = threads_stack
    expired = stack.wf.add.s(2, 2).set(expires=datetime.now(UTC) + PAST)
    with stack.worker():
        header_failure(stack, [stack.wf.add.s(1, 1), expired], 1, "TaskRevokedError")


def test_a_header_task_revoked_before_it_started_fails_the_chord(threads_stack: Stack) -> None:
    stack = threads_stack
    wf = stack.wf
    body = wf.body.s()
    body.link_error(wf.on_error_id.s())
    result = chord([wf.add.s(1, 1), wf.add.s(2, 2)], body).apply_async()
    revoked = result.parent[0]
    revoked.revoke()  # no worker yet: the one started next reads the revoke
    with stack.worker():
        with pytest.raises(ChordError, match=f"Dependency {revoked.id} raised TaskRevokedError"):
            result.get(timeout=TIMEOUT)
        wait_until(lambda: stack.records("on_error_id"), what="the body's errback")
    assert stack.records("body") == []


@pytest.mark.parametrize("transport", ["sqlite", "redis"])
def test_an_rpc_client_gets_the_failure_of_a_task_stopped_by_its_time_limit(
    make_stack: Any, transport: str
) -> None:
    stack = make_stack(transport, "prefork", backend="rpc://")
    with stack.worker(), pytest.raises(TimeLimitExceeded):
        stack.tasks.hard_limited.delay().get(timeout=TIMEOUT)


def test_an_rpc_client_gets_the_revoke_of_a_task_that_expired(make_stack: Any) -> None:
    stack = make_stack("memory", "threads", backend="rpc://")
    with stack.worker(), pytest.raises(TaskRevokedError, match="expired"):
        stack.wf.add.apply_async((1, 1), expires=datetime.now(UTC) + PAST).get(timeout=TIMEOUT)
