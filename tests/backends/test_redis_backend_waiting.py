"""Waiting for one result on Redis with as few round trips as correctness allows.

A waiter subscribes, reads once, then takes the final state from the published message
itself; a client that sends a task subscribes to its key first (as Celery does), and a
final state published before anyone waits is kept for the waiter that comes. Tests use db
14 of the shared server with unique task ids, and delete their keys.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from celeriac import Celery, states
from celeriac.backends import backend_from_url, redis_pubsub
from celeriac.backends.redis import RedisBackend


@pytest.fixture
def backend(shared_url: str) -> Iterator[RedisBackend]:
    opened = backend_from_url(shared_url)
    assert isinstance(opened, RedisBackend)
    yield opened
    opened.close()


@pytest.fixture
def reads(backend: RedisBackend, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every key the backend reads from Redis, in order."""
    seen: list[str] = []
    get = backend._get

    def counting(key: str) -> Any:
        seen.append(key)
        return get(key)

    monkeypatch.setattr(backend, "_get", counting)
    return seen


def subscribers(raw: redis.Redis, channel: str) -> int:
    ((_, count),) = raw.pubsub_numsub(channel)
    return int(count)


def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "the condition never came true"
        time.sleep(0.005)


def test_a_final_state_published_to_a_waiter_ends_the_wait_without_another_read(
    backend: RedisBackend, task_ids: Callable[[], str], reads: list[str]
) -> None:
    task_id = task_ids()
    key = backend.task_key(task_id)
    got: list[Any] = []
    waiter = threading.Thread(
        target=lambda: got.append(backend.wait_for(task_id, timeout=10, interval=30))
    )
    waiter.start()
    eventually(lambda: len(reads) == 1)  # subscribed, then read once: nothing yet
    backend.mark_as_started(task_id)  # not final: the wait goes on (and reads again)
    time.sleep(0.05)
    assert not got
    backend.mark_as_done(task_id, 42)
    waiter.join(10)
    assert got[0]["status"] == states.SUCCESS and got[0]["result"] == 42
    assert reads == [key, key]  # the first look, and one after the STARTED wake-up


def test_a_state_stored_before_the_wait_is_read_once(
    backend: RedisBackend, task_ids: Callable[[], str], reads: list[str]
) -> None:
    task_id = task_ids()
    backend.mark_as_done(task_id, "early")
    meta = backend.wait_for(task_id, timeout=5, interval=30)
    assert meta["result"] == "early"
    assert reads == [backend.task_key(task_id)]


def test_a_result_expected_before_it_was_stored_needs_no_read_at_all(
    backend: RedisBackend, task_ids: Callable[[], str], reads: list[str], raw: redis.Redis
) -> None:
    task_id = task_ids()
    key = backend.task_key(task_id)
    backend.on_task_call(task_id)  # what a client does before sending the task
    eventually(lambda: subscribers(raw, key) == 1)
    backend.mark_as_done(task_id, "kept")
    eventually(lambda: subscribers(raw, key) == 0)  # final: no longer subscribed
    assert backend.wait_for(task_id, timeout=5, interval=30)["result"] == "kept"
    assert reads == []


def test_expected_keys_are_bounded_the_oldest_unsubscribed_first(
    backend: RedisBackend,
    task_ids: Callable[[], str],
    raw: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redis_pubsub, "MAX_EXPECTED", 3)
    ids = [task_ids() for _ in range(4)]
    for task_id in ids:
        backend.on_task_call(task_id)
    keys = [backend.task_key(task_id) for task_id in ids]
    eventually(lambda: [subscribers(raw, key) for key in keys] == [0, 1, 1, 1])


def test_the_asyncio_face_takes_the_published_state_too(
    backend: RedisBackend, task_ids: Callable[[], str], reads: list[str]
) -> None:
    task_id = task_ids()

    async def scenario() -> Any:
        waiting = asyncio.ensure_future(backend.await_for(task_id, timeout=10, interval=30))
        while not reads:
            await asyncio.sleep(0.005)
        await asyncio.to_thread(backend.mark_as_failure, task_id, ValueError("no"), "tb")
        return await waiting

    meta = asyncio.run(scenario())
    assert meta["status"] == states.FAILURE
    assert isinstance(meta["result"], ValueError)
    assert len(reads) == 1


def test_a_client_that_reads_results_subscribes_when_it_sends(
    shared_url: str, task_ids: Callable[[], str], raw: redis.Redis
) -> None:
    app = Celery("waiting", broker=f"memory://{uuid.uuid4().hex}", backend=shared_url)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(ignore_result=True)
    def fire_and_forget() -> None:
        pass

    try:
        before = add.apply_async((1, 2), task_id=task_ids())  # no backend open yet
        assert app._backend is None
        assert app.backend.get_task_meta(before.id)["status"] == states.PENDING
        sent = add.apply_async((1, 2), task_id=task_ids())
        ignored = fire_and_forget.apply_async(task_id=task_ids())
        eventually(lambda: subscribers(raw, app.backend.task_key(sent.id)) == 1)
        assert subscribers(raw, app.backend.task_key(before.id)) == 0
        assert subscribers(raw, app.backend.task_key(ignored.id)) == 0
    finally:
        app.close()
