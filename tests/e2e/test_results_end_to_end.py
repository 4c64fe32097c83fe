"""Results and states end to end: a task sent, run by a worker, its outcome read back.

Each test with a worker runs over every transport with every pool it works with (``stack``);
those without one over both transports (``threads_stack``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest
from e2e_support import Stack
from e2e_tasks import Boom

from celeriac import states
from celeriac.exceptions import TimeoutError as CeleriacTimeoutError

TIMEOUT = 10


def test_delay_returns_a_result_whose_get_is_the_return_value(stack: Stack) -> None:
    with stack.worker():
        assert stack.tasks.add.delay(2, 3).get(timeout=TIMEOUT) == 5


def test_apply_async_passes_args_and_kwargs_to_the_task(stack: Stack) -> None:
    with stack.worker():
        result = stack.tasks.add.apply_async((2,), {"y": 40})
        assert result.get(timeout=TIMEOUT) == 42


def test_a_succeeded_task_is_ready_successful_and_not_failed(stack: Stack) -> None:
    with stack.worker():
        result = stack.tasks.add.delay(1, 1)
        result.get(timeout=TIMEOUT)
    assert (result.state, result.ready(), result.successful(), result.failed()) == (
        states.SUCCESS,
        True,
        True,
        False,
    )
    assert result.result == 2


def test_get_raises_the_failed_tasks_exception_with_its_type_and_args(stack: Stack) -> None:
    with stack.worker():
        result = stack.tasks.fail.delay("broken")
        with pytest.raises(ValueError) as raised:
            result.get(timeout=TIMEOUT)
    assert raised.value.args == ("broken", 42)


def test_get_with_propagate_false_returns_the_exception(stack: Stack) -> None:
    with stack.worker():
        value = stack.tasks.fail.delay("quiet").get(timeout=TIMEOUT, propagate=False)
    assert isinstance(value, ValueError)
    assert value.args == ("quiet", 42)


def test_a_failed_task_is_ready_failed_and_keeps_its_traceback(stack: Stack) -> None:
    with stack.worker():
        result = stack.tasks.fail.delay("tb")
        result.get(timeout=TIMEOUT, propagate=False)
    assert (result.state, result.ready(), result.successful(), result.failed()) == (
        states.FAILURE,
        True,
        False,
        True,
    )
    assert isinstance(result.result, ValueError)
    assert result.traceback is not None
    assert "ValueError" in result.traceback


def test_a_user_defined_exception_is_rebuilt_as_its_own_class(stack: Stack) -> None:
    with stack.worker():
        result = stack.tasks.boom.delay()
        with pytest.raises(Boom, match="user error"):
            result.get(timeout=TIMEOUT)


def test_date_done_is_when_the_task_finished(stack: Stack) -> None:
    before = datetime.now(UTC)
    with stack.worker():
        result = stack.tasks.add.delay(1, 2)
        result.get(timeout=TIMEOUT)
    after = datetime.now(UTC)
    done = result.date_done
    assert done is not None
    done = done if done.tzinfo is not None else done.replace(tzinfo=UTC)
    assert before <= done <= after


def test_a_pending_result_has_no_date_done(threads_stack: Stack) -> None:
    result = threads_stack.tasks.add.delay(1, 2)
    assert (result.state, result.date_done, result.ready()) == (states.PENDING, None, False)


def test_forget_makes_a_finished_result_pending_again(stack: Stack) -> None:
    with stack.worker():
        result = stack.tasks.add.delay(1, 2)
        result.get(timeout=TIMEOUT)
    result.forget()
    assert stack.app.AsyncResult(result.id).state == states.PENDING
    assert result.state == states.PENDING


def test_get_raises_timeout_error_when_the_task_does_not_finish_in_time(
    threads_stack: Stack,
) -> None:
    started = time.monotonic()
    with pytest.raises(CeleriacTimeoutError):
        threads_stack.tasks.add.delay(1, 2).get(timeout=0.3)
    assert 0.25 <= time.monotonic() - started < 3


def test_on_message_sees_each_progress_update_in_order_then_success(stack: Stack) -> None:
    seen: list[dict[str, Any]] = []
    with stack.worker():
        result = stack.tasks.hello.delay(10)
        value = result.get(timeout=TIMEOUT, on_message=seen.append, propagate=False)
    assert value == "hello world: 10"
    assert [(m["status"], m["result"]) for m in seen] == [
        ("PROGRESS", {"step": 0}),
        ("PROGRESS", {"step": 1}),
        ("SUCCESS", "hello world: 10"),
    ]
    for meta in seen:
        assert {"task_id", "result", "children", "status", "traceback"} <= set(meta)
        assert meta["task_id"] == result.id


def test_track_started_reports_started_before_success(stack: Stack) -> None:
    seen: list[dict[str, Any]] = []
    with stack.worker():
        stack.tasks.tracked.delay().get(timeout=TIMEOUT, on_message=seen.append)
    assert [m["status"] for m in seen] == [states.STARTED, states.SUCCESS]


def test_self_request_carries_the_id_hostname_and_delivery_info(stack: Stack) -> None:
    with stack.worker(hostname="e2e@%h"):
        result = stack.tasks.whoami.delay()
        request = result.get(timeout=TIMEOUT)
    assert request["id"] == result.id
    assert request["root_id"] == result.id
    assert request["parent_id"] is None
    assert request["retries"] == 0
    assert request["is_eager"] is False
    assert request["hostname"].startswith("e2e@")
    assert request["routing_key"] == "celery"
