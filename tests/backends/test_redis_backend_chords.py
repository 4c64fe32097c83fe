"""Chords on the Redis result backend: Celery's key layout, exactly-once completion, and
chords that Celery workers and celeriac workers complete together.

The counting rules every backend shares are in ``tests/workflows/test_chord_counting.py``
(which runs on Redis too); here is what is Redis's own. Tests use the shared server's db 14
under a key prefix of their own, deleted afterwards.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from celeriac import states
from celeriac.backends.base import ChordOutcome
from celeriac.backends.redis import RedisBackend
from celeriac.backends.redis_chords import RETRY_WINDOW_MS, chord_keys
from celeriac.testing import service_url

SHARED = "redis://127.0.0.1:6379/14"


@pytest.fixture
def prefix() -> str:
    return f"h7-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def raw(prefix: str) -> Iterator[redis.Redis]:
    """A plain client on the shared db; deletes the test's keys afterwards."""
    client = redis.Redis.from_url(service_url(SHARED))
    yield client
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def make_backend(prefix: str, raw: redis.Redis) -> Iterator[Callable[..., RedisBackend]]:
    opened: list[RedisBackend] = []

    def make(**options: Any) -> RedisBackend:
        backend = RedisBackend(SHARED, options={"global_keyprefix": prefix}, **options)
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        backend.close()


def group_key(prefix: str, group_id: str) -> str:
    return f"{prefix}celery-taskset-meta-{group_id}"


def report(backend: RedisBackend, group_id: str, index: int | None, size: int | None) -> Any:
    return backend.add_chord_part(
        group_id, f"t{index}", index, states.SUCCESS, (index or 0) * 10, size
    )


# -- the layout ----------------------------------------------------------------------------
def test_reports_are_kept_in_celerys_keys_with_the_result_expiry(
    make_backend: Callable[..., RedisBackend], raw: redis.Redis, prefix: str
) -> None:
    backend = make_backend(expires=600)
    backend.set_chord_size("g", 3)
    report(backend, "g", 1, None)
    report(backend, "g", 0, None)
    g = group_key(prefix, "g")
    assert raw.get(g + ".s") == b"3"
    entries = raw.zrange(g + ".j", 0, -1, withscores=True)
    assert [(json.loads(value), score) for value, score in entries] == [
        ([1, "t0", "SUCCESS", 0], 0.0),
        ([1, "t1", "SUCCESS", 10], 1.0),
    ]
    assert raw.smembers(g + ".d") == {b"t0:0", b"t1:1"}
    for suffix in (".j", ".s", ".d"):
        assert 590_000 < raw.pttl(g + suffix) <= 600_000
    assert raw.exists(g + ".c") == 0


def test_the_completing_report_leaves_only_the_done_mark(
    make_backend: Callable[..., RedisBackend], raw: redis.Redis, prefix: str
) -> None:
    backend = make_backend(expires=600)
    backend.set_chord_size("g", 2)
    report(backend, "g", 0, None)
    outcomes = report(backend, "g", 1, None)
    assert outcomes == [
        ChordOutcome("t0", states.SUCCESS, 0),
        ChordOutcome("t1", states.SUCCESS, 10),
    ]
    g = group_key(prefix, "g")
    assert raw.get(g + ".c") == b"done"
    assert 590_000 < raw.pttl(g + ".c") <= 600_000
    assert raw.exists(g + ".j", g + ".t", g + ".s", g + ".d") == 0
    # Kept only for a retry of the completing call, and not for long.
    assert 0 < raw.pttl(g + ".celeriac-parts") <= RETRY_WINDOW_MS


def test_a_task_without_group_index_is_scored_last_as_celery_does(
    make_backend: Callable[..., RedisBackend], raw: redis.Redis, prefix: str
) -> None:
    backend = make_backend()
    report(backend, "g", None, 3)
    report(backend, "g", 0, 3)
    g = group_key(prefix, "g")
    assert raw.zscore(g + ".j", raw.zrange(g + ".j", -1, -1)[0]) == float("inf")
    assert raw.smembers(g + ".d") == {b"tNone:+inf", b"t0:0"}
    outcomes = report(backend, "g", 1, 3)
    assert [o.task_id for o in outcomes] == ["t0", "t1", "tNone"]


def test_the_size_celery_stored_completes_a_chord_whose_body_carries_none(
    make_backend: Callable[..., RedisBackend], raw: redis.Redis, prefix: str
) -> None:
    backend = make_backend()
    raw.set(group_key(prefix, "g") + ".s", 2)  # what Celery's set_chord_size does
    assert report(backend, "g", 0, None) is None
    assert [o.result for o in report(backend, "g", 1, None)] == [0, 10]


def test_parts_added_to_a_running_chord_are_waited_for(
    make_backend: Callable[..., RedisBackend], raw: redis.Redis, prefix: str
) -> None:
    backend = make_backend()
    raw.incr(group_key(prefix, "g") + ".t")  # Celery's add_to_chord
    assert report(backend, "g", 0, 2) is None
    assert report(backend, "g", 1, 2) is None
    assert [o.result for o in report(backend, "g", 2, 2)] == [0, 10, 20]


def test_reports_that_come_before_a_celery_client_stored_the_size_are_counted(
    make_backend: Callable[..., RedisBackend], raw: redis.Redis, prefix: str
) -> None:
    # A Celery client stores .s just before sending the LAST header task, and its chord
    # body carries no chord_size: the first tasks may report before any size is known.
    backend = make_backend()
    assert report(backend, "g", 0, None) is None
    assert report(backend, "g", 1, None) is None
    raw.set(group_key(prefix, "g") + ".s", 3)
    assert [o.result for o in report(backend, "g", 2, None)] == [0, 10, 20]


def test_a_frozen_chord_sent_again_counts_afresh(
    make_backend: Callable[..., RedisBackend],
) -> None:
    backend = make_backend()
    backend.set_chord_size("g", 1)
    assert report(backend, "g", 0, None) is not None
    assert report(backend, "g", 0, None) is None  # done: a late copy is refused
    backend.set_chord_size("g", 1)  # the same chord, sent again
    assert report(backend, "g", 0, None) is not None


def test_the_completing_call_run_again_after_a_lost_reply_gets_the_parts_again(
    make_backend: Callable[..., RedisBackend], prefix: str
) -> None:
    # redis-py runs a command again when the connection drops before the reply came: the
    # second run of the completing script must not be taken for a late report.
    backend = make_backend()
    report(backend, "g", 0, 2)
    keys = chord_keys(group_key(prefix, "g"))
    args = ["t1:1", json.dumps([1, "t1", "SUCCESS", 10]), "1", 2, 0, "token-1", 60_000]
    first = backend._chord_script(keys=keys, args=args)
    again = backend._chord_script(keys=keys, args=args)
    assert first == again and len(first) == 4
    other = backend._chord_script(keys=keys, args=[*args[:5], "token-2", 60_000])
    assert other is None


# -- reading many results at once -----------------------------------------------------------
def test_many_results_are_read_in_one_go_with_the_positions_single_reads_give(
    make_backend: Callable[..., RedisBackend],
) -> None:
    backend = make_backend()
    ids = [f"m{i}" for i in range(300)]  # more than one script call's worth
    backend.store_many([(i, n, states.SUCCESS, None, None) for n, i in enumerate(ids[:-1])])
    backend.mark_as_started("replaced")
    backend.mark_as_done("replaced", "ok")
    keys = [backend.task_key(i) for i in [*ids, "replaced"]]
    records = backend._get_many(keys)
    assert backend.task_key(ids[-1]) not in records  # never stored
    assert len(records) == 300
    for key, record in records.items():
        assert record == backend._get(key)
    metas = backend.get_task_metas(["m3", "replaced", "m299"])
    assert (metas["m3"]["result"], metas["replaced"]["result"]) == (3, "ok")
    assert "m299" not in metas


# -- with Celery's own Redis backend ----------------------------------------------------------
@pytest.fixture
def celery_app(prefix: str) -> Iterator[Any]:
    """A Celery 5 app on the same results (its chord bodies go to an in-memory broker)."""
    celery = pytest.importorskip("celery")
    app = celery.Celery(
        "h7",
        broker=f"memory://{uuid.uuid4().hex}",
        backend=service_url(SHARED),
        set_as_current=False,
    )
    app.conf.result_backend_transport_options = {"global_keyprefix": prefix}
    yield app
    app.close()


def celery_report(app: Any, group_id: str, index: int, body: dict[str, Any], state: str) -> None:
    from celery.app.task import Context

    request = Context(id=f"t{index}", group=group_id, group_index=index, chord=body)
    result: Any = index * 10 if state == states.SUCCESS else ValueError(f"bad {index}")
    app.backend.on_chord_part_return(request, state, result)


def test_a_chord_celery_workers_started_is_completed_by_a_celeriac_worker(
    make_backend: Callable[..., RedisBackend], celery_app: Any
) -> None:
    body = {"task": "body", "args": [], "kwargs": {}, "options": {}, "chord_size": 3}
    celery_app.backend.set_chord_size("g", 3)
    celery_report(celery_app, "g", 0, body, states.SUCCESS)
    celery_report(celery_app, "g", 2, body, states.FAILURE)
    outcomes = make_backend().add_chord_part("g", "t1", 1, states.SUCCESS, 10, None)
    assert [(o.task_id, o.state) for o in outcomes] == [
        ("t0", "SUCCESS"),
        ("t1", "SUCCESS"),
        ("t2", "FAILURE"),
    ]
    assert [o.result for o in outcomes[:2]] == [0, 10]
    failed = outcomes[2].result
    assert isinstance(failed, ValueError) and failed.args == ("bad 2",)


def test_a_chord_celeriac_workers_started_is_completed_by_a_celery_worker_once(
    make_backend: Callable[..., RedisBackend], celery_app: Any
) -> None:
    backend = make_backend()
    body = {"task": "proj.body", "args": [], "kwargs": {}, "options": {}, "chord_size": 3}
    backend.set_chord_size("g", 3)
    assert backend.add_chord_part("g", "t0", 0, states.SUCCESS, 0, 3) is None
    assert backend.add_chord_part("g", "t2", 2, states.SUCCESS, 20, 3) is None
    celery_report(celery_app, "g", 1, body, states.SUCCESS)
    with celery_app.connection_for_read() as conn:
        queue = conn.SimpleQueue("celery")
        message = queue.get(timeout=5)
        args, _kwargs, _embed = message.decode()
        message.ack()
        assert message.headers["task"] == "proj.body"
        assert args == [[0, 10, 20]]
        # The chord is done for both: a late report from either side completes nothing.
        assert backend.add_chord_part("g", "t1", 1, states.SUCCESS, 10, 3) is None
        celery_report(celery_app, "g", 0, body, states.SUCCESS)
        with pytest.raises(queue.Empty):
            queue.get(timeout=0.2)
        queue.close()
