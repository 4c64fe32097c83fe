"""The result backend contract, run over every backend celeriac ships.

Adding a backend is one entry in ``CASES``: how to open a backend on a store no other test
writes to (``open(tmp_path, token, options)``, ``token`` being unique to the test), and
what the backend cannot do by design, so the tests that need it are skipped for it:

- ``rpc://`` results are private to the client that sent the task, so two backend objects
  never share a store, and groups are not stored. Its case stores to its own reply queue
  (a worker uses the request's ``reply_to``) and waits until the reply is received, so a
  store is readable once it returns, as on the other backends.
- Redis expires keys itself: ``cleanup`` has nothing left to delete.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from celeriac import states
from celeriac.backends import backend_from_url
from celeriac.backends.base import ResultBackend, StoreItem, Write
from celeriac.backends.rpc import RPCBackend
from celeriac.exceptions import ContentDisallowed, RemoteError, TaskRevokedError, TimeoutError
from celeriac.testing import service_url

REDIS_URL = "redis://127.0.0.1:6379/14"


class SelfAddressedRPC(RPCBackend):
    """``rpc://`` whose stores go to its own reply queue, readable once they return."""

    def store_many(self, items: Iterable[StoreItem]) -> list[dict[str, Any]]:
        addressed = [
            (task_id, result, state, tb, {**(request or {}), "reply_to": self.oid})
            for task_id, result, state, tb, request in items
        ]
        target = self.received + len(addressed)
        metas = super().store_many(addressed)
        deadline = time.monotonic() + 5
        while self.received < target:
            assert time.monotonic() < deadline, "the replies never came back"
            time.sleep(0.001)
        return metas


def open_rpc(_tmp: Path, token: str, options: dict[str, Any]) -> ResultBackend:
    backend = SelfAddressedRPC("rpc://", broker_url=f"memory://contract-{token}", **options)
    backend.ensure_reply_queue()
    backend.receive_replies()
    return backend


def open_redis(_tmp: Path, token: str, options: dict[str, Any]) -> ResultBackend:
    transport_options = {**options.pop("options", {}), "global_keyprefix": f"contract-{token}:"}
    return backend_from_url(service_url(REDIS_URL), options=transport_options, **options)


def forget_redis_keys(token: str) -> None:
    """Delete what a test left on the shared Redis (its keys alone, by their prefix)."""
    import redis

    with redis.Redis.from_url(REDIS_URL) as client:
        keys = list(client.scan_iter(match=f"*contract-{token}:*", count=1000))
        if keys:
            client.delete(*keys)


@dataclass(frozen=True)
class BackendCase:
    """How the contract opens one kind of backend, and what it cannot do by design."""

    open: Callable[[Path, str, dict[str, Any]], ResultBackend]
    shares_store: bool = True
    stores_groups: bool = True
    cleanup_deletes: bool = True
    teardown: Callable[[str], None] | None = None


CASES: dict[str, BackendCase] = {
    "memory": BackendCase(lambda _tmp, token, o: backend_from_url(f"memory://{token}", **o)),
    "sqlite": BackendCase(
        lambda tmp, _token, o: backend_from_url(f"sqlite:///{tmp / 'r.db'}", **o)
    ),
    "redis": BackendCase(open_redis, cleanup_deletes=False, teardown=forget_redis_keys),
    "rpc": BackendCase(open_rpc, shares_store=False, stores_groups=False),
}


class OrderRejected(Exception):
    """A custom exception class of this (already imported) test module."""


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest) -> BackendCase:
    return CASES[request.param]


@pytest.fixture
def open_backend(case: BackendCase, tmp_path: Path) -> Iterator[Callable[..., ResultBackend]]:
    """Opens backends on this test's store; closes them afterwards."""
    opened: list[ResultBackend] = []
    token = uuid.uuid4().hex

    def make(**options: Any) -> ResultBackend:
        backend = case.open(tmp_path, token, options)
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        backend.close()
    if case.teardown is not None and opened:
        case.teardown(token)


@pytest.fixture
def backend(open_backend: Callable[..., ResultBackend]) -> ResultBackend:
    return open_backend()


def needs(case: BackendCase, capability: str) -> None:
    """Skip the test for backends that lack ``capability`` by design."""
    if not getattr(case, capability):
        pytest.skip(f"this backend does not offer {capability} (by design)")


def stored_meta(backend: ResultBackend, task_id: str) -> dict[str, Any]:
    """The meta exactly as stored (JSON decoded by hand, no exception rebuilding)."""
    record = backend._get(backend.task_key(task_id))
    assert record is not None
    assert record.content_type == "application/json"
    meta: dict[str, Any] = json.loads(record.value)
    return meta


def progress(n: int) -> tuple[str, Any, str, None, None]:
    return ("t1", {"step": n}, "PROGRESS", None, None)


def later(delay: float, work: Callable[[], object]) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        work()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


# -- the meta format (PROTOCOL.md, "Result meta") --------------------------------------------
def test_a_success_is_stored_as_celerys_meta_field_by_field(backend: ResultBackend) -> None:
    request = {"id": "t1", "group": "g1", "parent_id": "p1", "children": [[["c1", None], None]]}
    backend.mark_as_done("t1", {"total": 3}, request=request)
    meta = stored_meta(backend, "t1")
    assert list(meta) == [
        "status", "result", "traceback", "children", "date_done", "group_id", "parent_id",
        "task_id",
    ]  # fmt: skip
    assert meta["status"] == "SUCCESS"
    assert meta["result"] == {"total": 3}
    assert meta["traceback"] is None
    assert meta["children"] == [[["c1", None], None]]
    assert (meta["group_id"], meta["parent_id"], meta["task_id"]) == ("g1", "p1", "t1")
    done = datetime.fromisoformat(meta["date_done"])
    assert done.utcoffset() is not None and done.utcoffset().total_seconds() == 0
    assert abs((datetime.now(UTC) - done).total_seconds()) < 5


def test_a_result_without_request_has_no_group_or_parent(backend: ResultBackend) -> None:
    backend.mark_as_done("t1", 42)
    meta = stored_meta(backend, "t1")
    assert list(meta) == ["status", "result", "traceback", "children", "date_done", "task_id"]
    assert meta["children"] == []


def test_a_state_that_is_not_ready_has_no_date_done(backend: ResultBackend) -> None:
    backend.mark_as_started("t1", {"pid": 7, "hostname": "w1"})
    meta = stored_meta(backend, "t1")
    assert (meta["status"], meta["result"], meta["date_done"]) == (
        "STARTED",
        {"pid": 7, "hostname": "w1"},
        None,
    )


def test_extended_results_carry_the_request(open_backend: Callable[..., ResultBackend]) -> None:
    backend = open_backend(extended=True)
    request = {
        "id": "t1", "task": "shop.order", "args": [1, 2], "kwargs": {"x": 3},
        "hostname": "w1@host", "retries": 2, "delivery_info": {"routing_key": "orders"},
    }  # fmt: skip
    backend.mark_as_done("t1", None, request=request)
    meta = stored_meta(backend, "t1")
    assert {k: meta[k] for k in ("name", "args", "kwargs", "worker", "retries", "queue")} == {
        "name": "shop.order",
        "args": [1, 2],
        "kwargs": {"x": 3},
        "worker": "w1@host",
        "retries": 2,
        "queue": "orders",
    }
    assert list(meta)[-1] == "task_id"


def test_results_are_not_extended_unless_asked(backend: ResultBackend) -> None:
    backend.mark_as_done("t1", None, request={"id": "t1", "task": "shop.order"})
    assert "name" not in stored_meta(backend, "t1")


def test_an_unknown_task_reads_as_pending(backend: ResultBackend) -> None:
    assert backend.get_task_meta("never-sent") == {
        "status": "PENDING",
        "result": None,
        "traceback": None,
        "children": [],
        "date_done": None,
        "task_id": "never-sent",
    }


def test_a_stored_success_is_never_overwritten_by_a_later_state(backend: ResultBackend) -> None:
    backend.mark_as_done("t1", "first")
    backend.mark_as_failure("t1", ValueError("late"))
    backend.mark_as_started("t1")
    backend.store_result("t1", "second", states.SUCCESS)
    meta = backend.get_task_meta("t1")
    assert (meta["status"], meta["result"]) == ("SUCCESS", "first")


def test_a_failure_may_be_replaced_by_a_later_state(backend: ResultBackend) -> None:
    backend.mark_as_failure("t1", ValueError("first try"))
    backend.mark_as_done("t1", "redelivered and done")
    assert backend.get_task_meta("t1")["result"] == "redelivered and done"


# -- exceptions ------------------------------------------------------------------------------
def test_a_failure_round_trips_a_builtin_exception(backend: ResultBackend) -> None:
    backend.mark_as_failure("t1", ValueError("boom", 3), traceback="Traceback...")
    assert stored_meta(backend, "t1")["result"] == {
        "exc_type": "ValueError",
        "exc_message": ["boom", 3],
        "exc_module": "builtins",
    }
    meta = backend.get_task_meta("t1")
    assert type(meta["result"]) is ValueError
    assert meta["result"].args == ("boom", 3)
    assert (meta["status"], meta["traceback"]) == ("FAILURE", "Traceback...")


def test_a_custom_exception_of_an_imported_module_is_rebuilt_as_its_class(
    backend: ResultBackend,
) -> None:
    backend.mark_as_failure("t1", OrderRejected("out of stock"))
    exc = backend.get_task_meta("t1")["result"]
    assert type(exc) is OrderRejected
    assert exc.args == ("out of stock",)


def test_an_exception_of_an_unknown_module_reads_as_remote_error(backend: ResultBackend) -> None:
    stored = {"exc_type": "Boom", "exc_message": ["x"], "exc_module": "no_such_module_4f2a"}
    backend.store_result("t1", stored, states.FAILURE)
    exc = backend.get_task_meta("t1")["result"]
    assert isinstance(exc, RemoteError)
    assert (exc.exc_type, exc.exc_module, exc.exc_args) == ("Boom", "no_such_module_4f2a", ("x",))


def test_exception_arguments_the_serializer_refuses_are_stored_as_reprs(
    backend: ResultBackend,
) -> None:
    odd = object()
    backend.mark_as_failure("t1", ValueError("boom", odd))
    exc = backend.get_task_meta("t1")["result"]
    assert type(exc) is ValueError
    assert exc.args == ("boom", repr(odd))


def test_a_revoked_task_reads_as_task_revoked_error(backend: ResultBackend) -> None:
    backend.mark_as_revoked("t1", reason="expired")
    meta = backend.get_task_meta("t1")
    assert meta["status"] == "REVOKED"
    assert isinstance(meta["result"], TaskRevokedError)
    assert meta["result"].args == ("expired",)


def test_a_retry_stores_its_exception(backend: ResultBackend) -> None:
    backend.mark_as_retry("t1", ConnectionError("flaky"))
    meta = backend.get_task_meta("t1")
    assert (meta["status"], type(meta["result"])) == ("RETRY", ConnectionError)


# -- custom states and on_message ------------------------------------------------------------
def test_a_custom_state_with_a_meta_dict_is_readable(backend: ResultBackend) -> None:
    backend.store_result("t1", {"done": 3, "total": 10}, "PROGRESS")
    meta = backend.get_task_meta("t1")
    assert (meta["status"], meta["result"], meta["date_done"]) == (
        "PROGRESS",
        {"done": 3, "total": 10},
        None,
    )


def test_on_message_sees_states_stored_before_the_waiter_looked_in_order_once_each(
    backend: ResultBackend,
) -> None:
    backend.store_many([progress(1), progress(2)])
    backend.mark_as_done("t1", "ok")
    seen: list[dict[str, Any]] = []
    meta = backend.wait_for("t1", timeout=5, on_message=seen.append)
    assert [(m["status"], m["result"]) for m in seen] == [
        ("PROGRESS", {"step": 1}),
        ("PROGRESS", {"step": 2}),
        ("SUCCESS", "ok"),
    ]
    assert meta == seen[-1]


def test_on_message_sees_states_stored_by_another_thread_while_waiting(
    backend: ResultBackend,
) -> None:
    def work() -> None:
        backend.store_many([progress(1)])
        time.sleep(0.05)
        # One write, so the waiter cannot read between these two states.
        backend.store_many([progress(2), ("t1", "ok", states.SUCCESS, None, None)])

    seen: list[str] = []
    thread = later(0.1, work)
    backend.wait_for("t1", timeout=10, on_message=lambda m: seen.append(str(m["result"])))
    thread.join()
    assert seen == ["{'step': 1}", "{'step': 2}", "ok"]


def test_on_message_is_called_only_for_new_states(backend: ResultBackend) -> None:
    backend.store_many([progress(1)])
    seen: list[Any] = []
    thread = later(0.2, lambda: backend.mark_as_done("t1", "ok"))
    # interval is short, so the waiter looks many times at PROGRESS(1) before SUCCESS.
    backend.wait_for("t1", timeout=10, interval=0.01, on_message=lambda m: seen.append(m["result"]))
    thread.join()
    assert seen == [{"step": 1}, "ok"]


# -- waiting ---------------------------------------------------------------------------------
def test_wait_for_returns_the_ready_meta(backend: ResultBackend) -> None:
    backend.mark_as_failure("t1", KeyError("k"))
    meta = backend.wait_for("t1", timeout=1)
    assert (meta["status"], type(meta["result"])) == ("FAILURE", KeyError)


def test_wait_for_wakes_promptly_when_another_thread_stores(backend: ResultBackend) -> None:
    thread = later(0.1, lambda: backend.mark_as_done("t1", 5))
    started = time.monotonic()
    meta = backend.wait_for("t1", timeout=10, interval=30)
    thread.join()
    assert meta["result"] == 5
    assert time.monotonic() - started < 1.0


def test_wait_for_raises_timeout_error_promptly(backend: ResultBackend) -> None:
    backend.store_result("t1", {"step": 1}, "PROGRESS")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        backend.wait_for("t1", timeout=0.2, interval=30)
    assert 0.15 < time.monotonic() - started < 1.0


def test_await_for_waits_without_blocking_the_event_loop(backend: ResultBackend) -> None:
    async def main() -> tuple[dict[str, Any], int, list[Any]]:
        ticks = 0
        seen: list[Any] = []

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        tick_task = asyncio.create_task(ticker())
        thread = later(
            0.2, lambda: backend.store_many([progress(1), ("t1", 9, "SUCCESS", None, None)])
        )
        meta = await backend.await_for(
            "t1", timeout=10, interval=30, on_message=lambda m: seen.append(m["result"])
        )
        tick_task.cancel()
        thread.join()
        return meta, ticks, seen

    started = time.monotonic()
    meta, ticks, seen = asyncio.run(main())
    assert meta["result"] == 9
    assert seen == [{"step": 1}, 9]
    assert ticks >= 5  # The loop kept running while the result was awaited.
    assert time.monotonic() - started < 1.5


def test_await_for_raises_timeout_error(backend: ResultBackend) -> None:
    async def main() -> None:
        await backend.await_for("t1", timeout=0.1, interval=30)

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        asyncio.run(main())
    assert time.monotonic() - started < 1.0


# -- forgetting and expiry -------------------------------------------------------------------
def test_forget_makes_a_result_pending_again(backend: ResultBackend) -> None:
    backend.store_many([progress(1)])
    backend.mark_as_done("t1", "ok")
    backend.forget("t1")
    assert backend.get_task_meta("t1")["status"] == "PENDING"
    assert backend._history(backend.task_key("t1"), 0) == []


def test_an_expired_result_reads_as_pending(open_backend: Callable[..., ResultBackend]) -> None:
    backend = open_backend(expires=0.05)
    backend.mark_as_done("t1", "ok")
    assert backend.get_task_meta("t1")["status"] == "SUCCESS"
    time.sleep(0.1)
    assert backend.get_task_meta("t1")["status"] == "PENDING"


def test_cleanup_deletes_expired_results_only(
    case: BackendCase, open_backend: Callable[..., ResultBackend]
) -> None:
    needs(case, "shares_store")
    short = open_backend(expires=0.05)
    kept = open_backend(expires=None)
    short.store_many([progress(1)])
    short.mark_as_done("t1", "ok")
    kept.mark_as_done("t2", "ok")
    time.sleep(0.1)
    # Where the store expires keys itself, there is nothing left for cleanup to count.
    assert short.cleanup() == (1 if case.cleanup_deletes else 0)
    assert short.cleanup() == 0
    assert short._history(short.task_key("t1"), 0) == []
    assert kept.get_task_meta("t2")["status"] == "SUCCESS"


def test_an_expired_success_may_be_stored_afresh(
    open_backend: Callable[..., ResultBackend],
) -> None:
    backend = open_backend(expires=0.05)
    backend.mark_as_done("t1", "old")
    time.sleep(0.1)
    backend.store_result("t1", {"step": 1}, "PROGRESS")
    seen: list[Any] = []
    with pytest.raises(TimeoutError):
        backend.wait_for("t1", timeout=0.01, on_message=lambda m: seen.append(m["result"]))
    assert seen == [{"step": 1}]


# -- batches, groups, content ----------------------------------------------------------------
def test_store_many_stores_every_item_in_order(backend: ResultBackend) -> None:
    metas = backend.store_many(
        [
            ("a", 1, states.SUCCESS, None, None),
            ("b", ValueError("no"), states.FAILURE, "tb", None),
            ("a", 2, states.SUCCESS, None, None),  # Refused: "a" already succeeded.
            ("c", {"step": 1}, "PROGRESS", None, {"group": "g"}),
        ]
    )
    assert [m["task_id"] for m in metas] == ["a", "b", "a", "c"]
    assert backend.get_task_meta("a")["result"] == 1
    assert type(backend.get_task_meta("b")["result"]) is ValueError
    assert backend.get_task_meta("c")["group_id"] == "g"
    assert backend.store_many([]) == []


def test_a_saved_group_is_restored(case: BackendCase, backend: ResultBackend) -> None:
    needs(case, "stores_groups")
    meta = backend.save_group("g1", ["a", "b"])
    assert meta == {"result": [["g1", None], [[["a", None], None], [["b", None], None]]]}
    assert backend.restore_group("g1") == ["a", "b"]
    backend.save_group("g1", ["a", "b", "c"])  # Saving again replaces it.
    assert backend.restore_group("g1") == ["a", "b", "c"]
    backend.delete_group("g1")
    assert backend.restore_group("g1") is None
    assert backend.restore_group("never-saved") is None


def test_a_group_saved_in_celery_4s_format_is_restored(
    case: BackendCase, backend: ResultBackend
) -> None:
    needs(case, "stores_groups")
    body = json.dumps({"result": ["g1", [["a", None], ["b", None]]]}).encode()
    backend._store_many([Write(backend.group_key("g1"), "GROUP", "application/json", body, None)])
    assert backend.restore_group("g1") == ["a", "b"]


def test_a_pickled_result_is_refused_by_a_json_only_backend(
    case: BackendCase, open_backend: Callable[..., ResultBackend]
) -> None:
    needs(case, "shares_store")
    writer = open_backend(serializer="pickle", accept=["pickle"])
    reader = open_backend()
    writer.mark_as_done("t1", {1, 2})
    assert writer.get_task_meta("t1")["result"] == {1, 2}
    with pytest.raises(ContentDisallowed):
        reader.get_task_meta("t1")
    with pytest.raises(ContentDisallowed):
        reader.wait_for("t1", timeout=1)
