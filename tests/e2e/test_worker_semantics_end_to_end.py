"""What the worker does with a task beyond running it: timing, retries, links, routing, acks.

Pool-independent behaviour runs over every transport and pool (``stack``); what only the
broker file can show runs over SQLite with every pool (``sqlite_stack``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from e2e_support import Stack, wait_until

from celeriac import states
from celeriac.exceptions import MaxRetriesExceededError, TaskRevokedError

TIMEOUT = 10
REJECTS = 30


# -- countdown, eta, expires ----------------------------------------------------------------


def test_a_countdown_task_does_not_start_before_it_is_due(stack: Stack) -> None:
    with stack.worker():
        sent = time.time()
        started = stack.tasks.stamp.apply_async(countdown=0.5).get(timeout=TIMEOUT)
    assert started >= sent + 0.5


def test_an_eta_task_does_not_start_before_its_eta(stack: Stack) -> None:
    eta = datetime.now(UTC) + timedelta(seconds=0.5)
    with stack.worker():
        started = stack.tasks.stamp.apply_async(eta=eta).get(timeout=TIMEOUT)
    assert started >= eta.timestamp()


def test_other_tasks_run_while_a_countdown_task_is_held(stack: Stack) -> None:
    with stack.worker(concurrency=1):
        held = stack.tasks.stamp.apply_async(countdown=1.0)
        assert stack.tasks.add.delay(1, 2).get(timeout=TIMEOUT) == 3
        assert held.state == states.PENDING
        assert held.get(timeout=TIMEOUT) > 0


def test_a_task_that_expired_before_it_was_received_is_revoked_and_not_run(
    stack: Stack,
) -> None:
    with stack.worker():
        expired = stack.tasks.sleepy.apply_async(
            (0,), expires=datetime.now(UTC) - timedelta(seconds=1)
        )
        with pytest.raises(TaskRevokedError):
            expired.get(timeout=TIMEOUT)
        assert stack.tasks.add.delay(1, 2).get(timeout=TIMEOUT) == 3
    assert expired.state == states.REVOKED
    assert stack.records("sleepy") == []


def test_a_held_countdown_task_that_expires_before_it_is_due_is_revoked_and_not_run(
    stack: Stack,
) -> None:
    with stack.worker():
        result = stack.tasks.sleepy.apply_async((0,), countdown=0.4, expires=0.2)
        with pytest.raises(TaskRevokedError):
            result.get(timeout=TIMEOUT)
    assert stack.records("sleepy") == []


# -- retries, Reject, Ignore ---------------------------------------------------------------


def test_retry_runs_the_task_max_retries_more_times_then_fails_with_its_exception(
    stack: Stack,
) -> None:
    with stack.worker():
        result = stack.tasks.flaky.delay()
        with pytest.raises(ValueError) as raised:
            result.get(timeout=TIMEOUT)
    assert raised.value.args == ("flaky", 1)
    assert stack.records("flaky") == [0, 1, 2]


def test_a_retrying_task_reports_retry_states_before_its_failure(stack: Stack) -> None:
    seen: list[str] = []
    with stack.worker():
        stack.tasks.flaky.delay().get(
            timeout=TIMEOUT, propagate=False, on_message=lambda m: seen.append(m["status"])
        )
    assert seen == [states.RETRY, states.RETRY, states.FAILURE]


def test_a_retry_is_sent_only_after_its_retry_state_is_stored(stack: Stack) -> None:
    """Otherwise the next attempt could store its states first, and a late RETRY overwrite
    them (its FAILURE, say)."""
    with stack.worker():
        assert stack.tasks.retry_sees_state.delay().get(timeout=TIMEOUT) == states.RETRY


def test_autoretry_for_retries_with_exponential_backoff_then_fails(stack: Stack) -> None:
    with stack.worker():
        result = stack.tasks.auto.delay()
        with pytest.raises(KeyError):
            result.get(timeout=TIMEOUT)
    first, second, third = stack.records("auto")
    assert second - first >= 0.1  # retry_backoff=0.1: 0.1 * 2**0
    assert third - second >= 0.2  # then 0.1 * 2**1


def test_retry_without_an_exception_past_max_retries_fails_with_max_retries_exceeded(
    stack: Stack,
) -> None:
    with stack.worker():
        result = stack.tasks.retry_without_exc.delay()
        with pytest.raises(MaxRetriesExceededError):
            result.get(timeout=TIMEOUT)
    assert stack.records("retry_without_exc") == [0, 1]


def test_an_acks_late_task_rejected_without_requeue_leaves_the_queue_and_is_not_rerun(
    stack: Stack,
) -> None:
    with stack.worker():
        result = stack.tasks.reject_late.delay()
        wait_until(lambda: stack.records("reject_late"), what="the task to run")
        assert stack.tasks.add.delay(1, 2).get(timeout=TIMEOUT) == 3
    # A message left unsettled would be back in the queue now that the worker is gone.
    assert stack.queue_length() == 0
    assert stack.records("reject_late") == [""]
    assert result.state == states.PENDING


def test_tasks_raising_reject_without_acks_late_do_not_stop_the_worker(stack: Stack) -> None:
    # Without acks_late the message was acked before the task ran, so Reject changes
    # nothing (as in Celery); the worker must go on fetching. Many tasks, as settling a
    # Reject must not race the batched early ack of a later message.
    with stack.worker():
        for _ in range(REJECTS):
            stack.tasks.reject.delay()
        wait_until(lambda: len(stack.records("reject")) == REJECTS, what="the tasks to run")
        assert stack.tasks.add.delay(1, 2).get(timeout=TIMEOUT) == 3
    assert stack.queue_length() == 0
    assert len(stack.records("reject")) == REJECTS


def test_reject_with_requeue_delivers_the_task_again(stack: Stack) -> None:
    with stack.worker():
        assert stack.tasks.reject_once.delay().get(timeout=TIMEOUT) == "second delivery"
    assert len(stack.records("reject_once")) == 2


def test_ignore_acks_the_message_and_stores_no_state(stack: Stack) -> None:
    with stack.worker():
        result = stack.tasks.ignore.delay()
        wait_until(lambda: stack.records("ignore"), what="the task to run")
        assert stack.tasks.add.delay(1, 2).get(timeout=TIMEOUT) == 3
    assert stack.queue_length() == 0
    assert stack.records("ignore") == [""]
    assert result.state == states.PENDING


# -- links ---------------------------------------------------------------------------------


def test_a_link_callback_receives_the_parents_result(stack: Stack) -> None:
    callback = stack.tasks.add.s(16)
    child = callback.freeze()
    with stack.worker():
        stack.tasks.add.apply_async((2, 2), link=callback)
        assert child.get(timeout=TIMEOUT) == 20


def test_every_callback_of_a_list_of_links_receives_the_parents_result(stack: Stack) -> None:
    callbacks = [stack.tasks.add.s(16), stack.tasks.add.s(100)]
    children = [callback.freeze() for callback in callbacks]
    with stack.worker():
        stack.tasks.add.apply_async((2, 2), link=callbacks)
        assert [child.get(timeout=TIMEOUT) for child in children] == [20, 104]


def test_a_link_callback_knows_its_parent_and_root(stack: Stack) -> None:
    callback = stack.tasks.whoami.si()
    child = callback.freeze()
    with stack.worker():
        parent = stack.tasks.add.apply_async((1, 1), link=callback)
        request = child.get(timeout=TIMEOUT)
    assert (request["parent_id"], request["root_id"]) == (parent.id, parent.id)


def test_a_link_callback_is_not_sent_when_the_task_fails(stack: Stack) -> None:
    callback = stack.tasks.add.s(16)
    child = callback.freeze()
    with stack.worker():
        stack.tasks.fail.apply_async(("x",), link=callback).get(timeout=TIMEOUT, propagate=False)
    assert stack.queue_length() == 0
    assert child.state == states.PENDING


def test_a_link_error_task_is_called_with_the_failed_request_exception_and_traceback(
    stack: Stack,
) -> None:
    with stack.worker():
        failed = stack.tasks.fail.apply_async(("bad",), link_error=stack.tasks.on_err.s())
        failed.get(timeout=TIMEOUT, propagate=False)
        (call,) = wait_until(lambda: stack.records("on_err"), what="the errback")
    assert call == {
        "id": failed.id,
        "task": "e2e.fail",
        "args": ["bad"],
        "type": "ValueError",
        "exc_args": ["bad", 42],
        "traceback": True,
    }


def test_a_link_error_task_taking_one_argument_is_sent_the_failed_tasks_id(
    stack: Stack,
) -> None:
    errback = stack.tasks.on_err_id.s()
    sent = errback.freeze()
    with stack.worker():
        failed = stack.tasks.fail.apply_async(("bad",), link_error=errback)
        assert sent.get(timeout=TIMEOUT) == failed.id


def test_a_link_error_task_is_not_called_when_the_task_succeeds(stack: Stack) -> None:
    with stack.worker():
        stack.tasks.add.apply_async((1, 2), link_error=stack.tasks.on_err.s()).get(timeout=TIMEOUT)
    assert stack.records("on_err") == []


# -- routing -------------------------------------------------------------------------------


def test_task_routes_send_a_task_to_its_queue(threads_stack: Stack) -> None:
    stack = threads_stack
    stack.tasks.routed.delay()
    assert (stack.queue_length("special"), stack.queue_length("celery")) == (1, 0)


def test_a_worker_consuming_one_queue_runs_only_that_queues_tasks(stack: Stack) -> None:
    with stack.worker(queues=["special"]):
        other = stack.tasks.add.delay(1, 2)
        assert stack.tasks.routed.delay().get(timeout=TIMEOUT) == "routed"
        assert stack.tasks.add.apply_async((2, 3), queue="special").get(timeout=TIMEOUT) == 5
    assert other.state == states.PENDING
    assert stack.queue_length("celery") == 1


# -- acknowledgement -----------------------------------------------------------------------


def test_a_task_is_acked_before_it_runs_by_default(sqlite_stack: Stack) -> None:
    stack = sqlite_stack
    with stack.worker():
        result = stack.tasks.gate.delay("early")
        wait_until(lambda: stack.records("early"), what="the task to start")
        wait_until(lambda: stack.messages_in_broker() == 0, what="the early ack")
        stack.open_gate("early")
        assert result.get(timeout=TIMEOUT) == "released"


def test_an_acks_late_task_is_acked_only_after_it_finished(sqlite_stack: Stack) -> None:
    stack = sqlite_stack
    with stack.worker():
        result = stack.tasks.gate_late.delay("late")
        wait_until(lambda: stack.records("late"), what="the task to start")
        time.sleep(0.2)  # time enough for an early ack to have happened
        assert stack.messages_in_broker() == 1
        stack.open_gate("late")
        assert result.get(timeout=TIMEOUT) == "released"
        wait_until(lambda: stack.messages_in_broker() == 0, what="the late ack")


# -- rate limits ---------------------------------------------------------------------------


def test_a_rate_limit_of_10_per_second_spaces_five_tasks_over_0_4_seconds(
    threads_stack: Stack,
) -> None:
    stack = threads_stack
    with stack.worker(concurrency=5):
        results = [stack.tasks.limited.delay() for _ in range(5)]
        starts = sorted(result.get(timeout=TIMEOUT) for result in results)
    assert starts[-1] - starts[0] >= 0.38
