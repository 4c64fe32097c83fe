"""Bad input never crashes a worker and is never dropped: it goes to the dead-letter queue.

Each kind of bad message is published raw to the ``celery`` queue (as a buggy or foreign
client would), then a good task proves the worker carries on.
"""

from __future__ import annotations

import json
import logging
import pickle
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from e2e_support import Stack

from celeriac.app.protocol import build_task_message
from celeriac.messaging import Producer

DEAD_LETTER = "celeriac.dead_letter"
TIMEOUT = 10


@dataclass(frozen=True)
class Bad:
    """A raw message and the dead-letter kind the worker must give it."""

    kind: str
    body: bytes
    headers: dict[str, Any]
    content_type: str = "application/json"
    content_encoding: str = "utf-8"


def v2_headers(task_id: str, name: str = "e2e.add", **changes: Any) -> dict[str, Any]:
    headers = build_task_message(task_id, name, (1, 2), {}).headers
    headers.update(changes)
    return headers


V2_BODY = json.dumps([[1, 2], {}, {"callbacks": None, "errbacks": None}]).encode()


def bad_message(case: str, task_id: str) -> Bad:
    if case == "undecodable body":
        return Bad("undecodable", b'{"not json', v2_headers(task_id))
    if case == "pickle content type":
        body = pickle.dumps([[1, 2], {}, {}])
        return Bad(
            "content-disallowed",
            body,
            v2_headers(task_id),
            "application/x-python-serialize",
            "binary",
        )
    if case == "unknown task":
        return Bad("unregistered", V2_BODY, v2_headers(task_id, "e2e.no_such_task"))
    if case == "missing id header":
        headers = v2_headers(task_id)
        del headers["id"]
        return Bad("invalid", V2_BODY, headers)
    if case == "ill-typed retries":
        return Bad("invalid", V2_BODY, v2_headers(task_id, retries="three"))
    if case == "protocol v1":
        body = {"task": "e2e.add", "id": task_id, "args": [1, 2], "kwargs": {}, "retries": 0}
        return Bad("invalid", json.dumps(body).encode(), {})
    raise AssertionError(case)


CASES = [
    "undecodable body",
    "pickle content type",
    "unknown task",
    "missing id header",
    "ill-typed retries",
    "protocol v1",
]


def publish_raw(stack: Stack, bad: Bad, task_id: str) -> None:
    with stack.app.connection() as conn:
        Producer(conn).publish(
            bad.body,
            "celery",
            headers=bad.headers,
            content_type=bad.content_type,
            content_encoding=bad.content_encoding,
            correlation_id=task_id,
        )


@pytest.mark.parametrize("case", CASES)
def test_a_bad_message_lands_in_the_dead_letter_queue_with_its_kind(
    threads_stack: Stack, case: str
) -> None:
    stack = threads_stack
    task_id = str(uuid.uuid4())
    bad = bad_message(case, task_id)
    with stack.worker():
        publish_raw(stack, bad, task_id)
        (dead,) = stack.fetch(DEAD_LETTER, timeout=TIMEOUT)
    assert dead.headers["x-celeriac-dead-letter-kind"] == bad.kind
    assert dead.headers["x-celeriac-original-queue"] == "celery"
    assert dead.headers["x-celeriac-dead-letter-reason"]
    assert dead.body == bad.body
    assert dead.content_type == bad.content_type


@pytest.mark.parametrize("case", CASES)
def test_the_worker_runs_good_tasks_after_a_bad_message(threads_stack: Stack, case: str) -> None:
    stack = threads_stack
    task_id = str(uuid.uuid4())
    with stack.worker():
        publish_raw(stack, bad_message(case, task_id), task_id)
        assert stack.tasks.add.delay(1, 2).get(timeout=TIMEOUT) == 3
        stack.fetch(DEAD_LETTER, timeout=TIMEOUT)
    # Neither left in the queue nor held unacked (the worker is gone: held ones come back).
    assert stack.queue_length("celery") == 0
    assert stack.queue_length(DEAD_LETTER) == 0


@pytest.mark.parametrize("case", CASES)
def test_the_worker_logs_one_error_naming_the_bad_messages_id(
    threads_stack: Stack, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    stack = threads_stack
    task_id = str(uuid.uuid4())
    with caplog.at_level(logging.ERROR, logger="celeriac"), stack.worker():
        publish_raw(stack, bad_message(case, task_id), task_id)
        stack.fetch(DEAD_LETTER, timeout=TIMEOUT)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1, lines
    assert task_id in lines[0]
    assert DEAD_LETTER in lines[0]


def test_a_bad_message_is_dead_lettered_by_a_prefork_worker(prefork_stack: Stack) -> None:
    stack = prefork_stack
    task_id = str(uuid.uuid4())
    bad = bad_message("unknown task", task_id)
    with stack.worker():
        publish_raw(stack, bad, task_id)
        assert stack.tasks.add.delay(1, 2).get(timeout=TIMEOUT) == 3
        (dead,) = stack.fetch(DEAD_LETTER, timeout=TIMEOUT)
    assert dead.headers["x-celeriac-dead-letter-kind"] == "unregistered"
    assert stack.queue_length("celery") == 0
