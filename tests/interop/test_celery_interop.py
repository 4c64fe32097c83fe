"""A Celery client with a celeriac worker, and a celeriac client with a Celery worker.

Both over RabbitMQ with the Redis result backend: results, failures (type and message),
retries, countdown and link callbacks cross between the two, and each side reads results
the other wrote.
"""

from __future__ import annotations

import time

from interop_support import Pair
from interop_tasks import ADD, FAIL, RETRY_ONCE, WHO

TIMEOUT = 20


def test_a_task_runs_on_the_other_frameworks_worker_and_its_result_reads_back(pair: Pair) -> None:
    result = pair.tasks[WHO].delay()
    framework, pid = result.get(timeout=TIMEOUT)
    assert framework == pair.worker.framework
    assert pid != 0
    assert pair.tasks[ADD].delay(2, 3).get(timeout=TIMEOUT) == 5
    assert pair.tasks[ADD].apply_async((20, 22)).state in {"PENDING", "SUCCESS"}


def test_a_failure_arrives_with_its_exception_type_and_message(pair: Pair) -> None:
    result = pair.tasks[FAIL].delay("bad input 42")
    try:
        result.get(timeout=TIMEOUT)
    except ValueError as exc:
        assert "bad input 42" in str(exc)
    else:
        raise AssertionError("the failure was not raised")
    assert result.state == "FAILURE"
    assert isinstance(result.result, ValueError)
    assert result.traceback and "ValueError" in result.traceback


def test_a_retried_task_succeeds_on_its_second_run(pair: Pair) -> None:
    assert pair.tasks[RETRY_ONCE].delay(7).get(timeout=TIMEOUT) == [7, 1]


def test_a_countdown_is_honoured(pair: Pair) -> None:
    sent = time.monotonic()
    result = pair.tasks[ADD].apply_async((1, 1), countdown=1.5)
    assert result.get(timeout=TIMEOUT) == 2
    assert time.monotonic() - sent >= 1.3


def test_a_link_callback_gets_the_parent_result(pair: Pair) -> None:
    callback = pair.tasks[ADD].s(10)
    callback_result = callback.freeze()
    parent = pair.tasks[ADD].apply_async((2, 2), link=callback)
    assert parent.get(timeout=TIMEOUT) == 4
    callback_id = callback_result.id
    assert pair.app.AsyncResult(callback_id).get(timeout=TIMEOUT) == 14
