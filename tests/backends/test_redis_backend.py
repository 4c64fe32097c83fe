"""The Redis result backend beyond the contract: Celery's format on the wire, pub/sub waiting
from many threads and event loops, and surviving a Redis restart.

Tests on the shared server use db 14 and unique task ids, and delete their own keys. The
restart and round-trip counting tests run a private ``redis-server`` on a free port.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from celeriac import states
from celeriac.backends import backend_from_url
from celeriac.backends.redis import RedisBackend, content_type_of, history_key
from celeriac.testing.servers import PrivateRedis


@pytest.fixture
def open_backend(shared_url: str) -> Iterator[Callable[..., RedisBackend]]:
    """Backends on the shared server; closed afterwards, their task ids' keys deleted."""
    opened: list[RedisBackend] = []

    def make(url: str = shared_url, **options: Any) -> RedisBackend:
        backend = backend_from_url(url, **options)
        assert isinstance(backend, RedisBackend)
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        backend.close()


def celery_meta(task_id: str, status: str, result: Any) -> bytes:
    """A meta as Celery 5 writes it (JSON, its key order)."""
    meta = {
        "status": status,
        "result": result,
        "traceback": None,
        "children": [],
        "date_done": "2024-01-01T00:00:00+00:00" if status in states.READY_STATES else None,
        "task_id": task_id,
    }
    return json.dumps(meta).encode()


def celery_store(client: redis.Redis, task_id: str, status: str, result: Any) -> None:
    """Store a state exactly as Celery's Redis backend does: SETEX, then PUBLISH, pipelined."""
    key = f"celery-task-meta-{task_id}"
    value = celery_meta(task_id, status, result)
    with client.pipeline() as pipe:
        pipe.execute_command("SETEX", key, 86400, value)
        pipe.publish(key, value)
        pipe.execute()


def later(delay: float, work: Callable[[], object]) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        work()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


# -- Celery's format, both ways -----------------------------------------------------------------
def test_a_result_is_stored_under_celerys_key_as_plain_json_with_the_expiry(
    open_backend: Callable[..., RedisBackend], raw: redis.Redis, task_ids: Callable[[], str]
) -> None:
    backend = open_backend(expires=600)
    task_id = task_ids()
    backend.mark_as_done(task_id, {"total": 3})
    key = f"celery-task-meta-{task_id}"
    stored = json.loads(raw.get(key) or b"null")
    assert (stored["status"], stored["result"], stored["task_id"]) == (
        "SUCCESS",
        {"total": 3},
        task_id,
    )
    assert 590_000 < raw.pttl(key) <= 600_000
    # A result stored once needs no bookkeeping beside Celery's key.
    assert raw.exists(history_key(key)) == 0


def test_a_store_is_published_on_the_keys_channel_with_the_value(
    open_backend: Callable[..., RedisBackend], raw: redis.Redis, task_ids: Callable[[], str]
) -> None:
    backend = open_backend()
    task_id = task_ids()
    key = f"celery-task-meta-{task_id}"
    pubsub = raw.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(key)
    try:
        assert pubsub.get_message(timeout=1) is None  # The subscription is in place.
        backend.mark_as_done(task_id, 7)
        message = pubsub.get_message(timeout=5)
        assert message is not None
        assert (message["channel"], message["data"]) == (key.encode(), raw.get(key))
    finally:
        pubsub.close()


def test_a_result_celery_wrote_is_read(
    open_backend: Callable[..., RedisBackend], raw: redis.Redis, task_ids: Callable[[], str]
) -> None:
    task_id = task_ids()
    celery_store(
        raw,
        task_id,
        "FAILURE",
        {"exc_type": "KeyError", "exc_message": ["k"], "exc_module": "builtins"},
    )
    meta = open_backend().get_task_meta(task_id)
    assert meta["status"] == "FAILURE"
    assert type(meta["result"]) is KeyError and meta["result"].args == ("k",)


@pytest.mark.parametrize("follow", [True, False], ids=["on_message", "result_only"])
def test_a_waiter_wakes_when_celery_replaces_the_state_in_place(
    open_backend: Callable[..., RedisBackend],
    raw: redis.Redis,
    task_ids: Callable[[], str],
    follow: bool,
) -> None:
    # A Celery worker with track_started: STARTED, then SUCCESS over it, no history kept.
    backend = open_backend()
    task_id = task_ids()
    celery_store(raw, task_id, "STARTED", {"pid": 1})
    seen: list[str] = []
    thread = later(0.2, lambda: celery_store(raw, task_id, "SUCCESS", 42))
    started = time.monotonic()
    on_message = (lambda m: seen.append(m["status"])) if follow else None
    # interval=30: only the PUBLISH can wake it in time.
    meta = backend.wait_for(task_id, timeout=10, interval=30, on_message=on_message)
    thread.join()
    assert meta["result"] == 42
    assert seen == (["STARTED", "SUCCESS"] if follow else [])
    assert time.monotonic() - started < 2


def test_a_success_celery_wrote_is_never_overwritten(
    open_backend: Callable[..., RedisBackend], raw: redis.Redis, task_ids: Callable[[], str]
) -> None:
    task_id = task_ids()
    celery_store(raw, task_id, "SUCCESS", "celery's")
    open_backend().mark_as_failure(task_id, ValueError("late"))
    assert json.loads(raw.get(f"celery-task-meta-{task_id}") or b"null")["result"] == "celery's"


@pytest.mark.parametrize("serializer", ["pickle", "msgpack"])
def test_a_success_is_kept_whatever_the_serializer(
    open_backend: Callable[..., RedisBackend], task_ids: Callable[[], str], serializer: str
) -> None:
    backend = open_backend(serializer=serializer, accept=[serializer])
    task_id = task_ids()
    backend.mark_as_started(task_id)
    backend.mark_as_done(task_id, "first")
    backend.mark_as_failure(task_id, ValueError("late"))
    meta = backend.get_task_meta(task_id)
    assert (meta["status"], meta["result"]) == ("SUCCESS", "first")


def test_racing_stores_never_replace_a_success(
    open_backend: Callable[..., RedisBackend], task_ids: Callable[[], str]
) -> None:
    backend = open_backend()
    ids = [task_ids() for _ in range(100)]
    barrier = threading.Barrier(2)

    def store(state: str) -> None:
        barrier.wait()
        for task_id in ids:
            backend.store_result(task_id, state, state)

    threads = [threading.Thread(target=store, args=(s,)) for s in (states.SUCCESS, states.FAILURE)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # FAILURE first then SUCCESS, or SUCCESS kept over FAILURE: SUCCESS either way.
    assert {backend.get_task_meta(task_id)["status"] for task_id in ids} == {"SUCCESS"}


def test_replaced_states_are_kept_with_the_keys_expiry_for_on_message(
    open_backend: Callable[..., RedisBackend], raw: redis.Redis, task_ids: Callable[[], str]
) -> None:
    backend = open_backend(expires=600)
    task_id = task_ids()
    key = f"celery-task-meta-{task_id}"
    backend.mark_as_started(task_id)
    backend.store_result(task_id, {"step": 1}, "PROGRESS")
    backend.mark_as_done(task_id, "ok")
    assert 590_000 < raw.pttl(history_key(key)) <= 600_000
    seen: list[str] = []
    backend.wait_for(task_id, timeout=1, on_message=lambda m: seen.append(m["status"]))
    assert seen == ["STARTED", "PROGRESS", "SUCCESS"]


def test_history_beyond_the_limit_drops_the_oldest_states(
    open_backend: Callable[..., RedisBackend], task_ids: Callable[[], str]
) -> None:
    backend = open_backend(options={"history_limit": 2})
    task_id = task_ids()
    for step in range(5):
        backend.store_result(task_id, step, "PROGRESS")
    backend.mark_as_done(task_id, "ok")
    seen: list[Any] = []
    backend.wait_for(task_id, timeout=1, on_message=lambda m: seen.append(m["result"]))
    assert seen == [3, 4, "ok"]


def test_the_global_keyprefix_is_put_before_celerys_keys(
    open_backend: Callable[..., RedisBackend], raw: redis.Redis
) -> None:
    prefix = f"h3{uuid.uuid4().hex[:8]}"
    backend = open_backend(options={"global_keyprefix": prefix})
    backend.mark_as_done("t1", 1)
    backend.save_group("g1", ["t1"])
    try:
        assert raw.exists(f"{prefix}_celery-task-meta-t1", f"{prefix}_celery-taskset-meta-g1") == 2
        assert backend.restore_group("g1") == ["t1"]
    finally:
        raw.delete(f"{prefix}_celery-task-meta-t1", f"{prefix}_celery-taskset-meta-g1")


def test_values_are_told_apart_by_their_first_bytes() -> None:
    assert content_type_of(b'{"status": "SUCCESS"}', "application/x-yaml") == "application/json"
    assert content_type_of(b"\x80\x04\x95", "application/json") == "application/x-python-serialize"
    assert content_type_of(b"\x86\xa6status", "application/json") == "application/x-msgpack"
    assert content_type_of(b"status: SUCCESS\n", "application/x-yaml") == "application/x-yaml"


# -- many waiters, one listener -----------------------------------------------------------------
def test_many_threads_wait_at_once_on_one_listener(
    open_backend: Callable[..., RedisBackend], task_ids: Callable[[], str]
) -> None:
    backend = open_backend()
    ids = [task_ids() for _ in range(10)]
    results: dict[int, Any] = {}

    def wait(n: int) -> None:
        results[n] = backend.wait_for(ids[n % len(ids)], timeout=10, interval=30)["result"]

    threads = [threading.Thread(target=wait, args=(n,)) for n in range(30)]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    started = time.monotonic()
    backend.store_many([(task_id, i, states.SUCCESS, None, None) for i, task_id in enumerate(ids)])
    for thread in threads:
        thread.join(10)
    assert results == {n: n % len(ids) for n in range(30)}
    assert time.monotonic() - started < 2
    assert backend.listener.connections == 1
    names = [t.name for t in threading.enumerate() if t.name == "celeriac-redis-results"]
    assert len(names) == 1


def test_many_asyncio_waiters_share_the_listener(
    open_backend: Callable[..., RedisBackend], task_ids: Callable[[], str]
) -> None:
    backend = open_backend()
    ids = [task_ids() for _ in range(20)]

    async def main() -> list[Any]:
        waiters = [backend.await_for(task_id, timeout=10, interval=30) for task_id in ids]
        store = asyncio.to_thread(
            lambda: (
                time.sleep(0.1),
                backend.store_many([(t, t, "SUCCESS", None, None) for t in ids]),
            )
        )
        metas, _ = await asyncio.gather(asyncio.gather(*waiters), store)
        return [meta["result"] for meta in metas]

    started = time.monotonic()
    assert asyncio.run(main()) == ids
    assert time.monotonic() - started < 2


# -- a private redis-server: restarts and round trips -------------------------------------------
@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path, appendonly=False)
    server.start()
    yield server
    server.stop()


def test_a_waiter_survives_a_redis_restart_and_sees_what_was_stored_meanwhile(
    private_redis: PrivateRedis,
) -> None:
    backend = backend_from_url(private_redis.url)
    assert isinstance(backend, RedisBackend)
    got: list[Any] = []
    waiter = threading.Thread(
        target=lambda: got.append(backend.wait_for("t1", timeout=20, interval=30)["result"])
    )
    try:
        waiter.start()
        deadline = time.monotonic() + 5
        while backend.listener.connections < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        private_redis.stop()
        private_redis.start()
        # Stored (and published) at once, most likely before the listener is back: only
        # the re-read after reconnecting can see it, the waiter's nap being 30 s.
        with redis.Redis(port=private_redis.port) as client:
            celery_store(client, "t1", "SUCCESS", "after the restart")
        waiter.join(10)
        assert got == ["after the restart"]
        assert backend.listener.connections >= 2
        # Storing and waiting work on as before.
        backend.mark_as_done("t2", 2)
        assert backend.wait_for("t2", timeout=5)["result"] == 2
    finally:
        backend.close()
        waiter.join(1)


def test_a_store_and_a_batch_of_stores_are_one_round_trip_each(private_redis: PrivateRedis) -> None:
    backend = backend_from_url(private_redis.url)
    try:
        backend.mark_as_done("warm-up", 0)  # Loads the script once.
        with redis.Redis(port=private_redis.port) as client:
            client.config_resetstat()
            backend.mark_as_done("t1", 1)
            backend.store_many([(f"b{i}", i, states.SUCCESS, None, None) for i in range(300)])
            stats = client.info("commandstats")
        commands = {name: stat["calls"] for name, stat in stats.items()}
        # One EVALSHA for the single store, two (256 + 44 writes) pipelined for the batch,
        # and no SCRIPT EXISTS, MULTI or other command of a round trip of its own (the
        # GET, SET, PUBLISH... that the script runs inside Redis are counted too).
        assert commands["cmdstat_evalsha"] == 3
        assert not {"cmdstat_script", "cmdstat_multi", "cmdstat_eval"} & set(commands)
        assert backend.get_task_meta("b299")["result"] == 299
    finally:
        backend.close()
