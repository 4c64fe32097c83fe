"""Remote control of running workers on memory and SQLite (workers in threads).

Broadcasts name their destinations wherever they can, so each call returns as soon as
those workers replied rather than after its timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from e2e_support import Stack, wait_until

from celeriac import states
from celeriac.exceptions import TaskRevokedError
from celeriac.utils.url import mask_password

TIMEOUT = 10.0
A, B = "a@control", "b@control"


def one(stack: Stack, node: str = A, timeout: float = 5.0) -> object:
    """An inspector addressed to ``node`` alone."""
    return stack.app.control.inspect(destination=[node], timeout=timeout)


def started(stack: Stack, gate: str) -> None:
    wait_until(lambda: stack.records(gate), what=f"task {gate} to start")


def test_status_lists_the_two_running_workers(stack: Stack) -> None:
    with stack.worker(hostname=A), stack.worker(hostname=B):
        replies = stack.app.control.ping(destination=[A, B], timeout=5)
        assert replies is not None
        assert sorted(replies, key=str) == [{A: {"ok": "pong"}}, {B: {"ok": "pong"}}]
        everyone = stack.app.control.inspect(timeout=0.5).ping()
        assert everyone == {A: {"ok": "pong"}, B: {"ok": "pong"}}


def test_a_destination_addresses_one_worker_only(stack: Stack) -> None:
    with stack.worker(hostname=A), stack.worker(hostname=B):
        assert stack.app.control.inspect(destination=[B], timeout=0.5).ping() == {B: {"ok": "pong"}}
        by_pattern = stack.app.control.inspect(timeout=0.5, pattern="a@*", matcher="glob")
        assert by_pattern.ping() == {A: {"ok": "pong"}}


def test_no_worker_means_no_reply_after_the_timeout(stack: Stack) -> None:
    began = time.monotonic()
    assert stack.app.control.inspect(timeout=0.3).ping() is None
    assert 0.3 <= time.monotonic() - began < 2


def test_inspect_active_shows_the_running_task_and_query_task_finds_it(stack: Stack) -> None:
    with stack.worker(hostname=A):
        result = stack.tasks.gate.delay("active")
        started(stack, "active")
        active = one(stack).active()
        [info] = active[A]
        assert info["id"] == result.id
        assert info["name"] == info["type"] == "e2e.gate"
        assert info["args"] == ["active"] and info["kwargs"] == {}
        assert info["hostname"] == A and info["acknowledged"] is True
        assert info["worker_pid"] > 0 and info["time_start"] <= time.time()
        assert info["delivery_info"]["routing_key"] == "celery"
        safe = one(stack).active(safe=True)[A][0]
        assert safe["args"] == "('active',)"
        found = one(stack).query_task(result.id)[A]
        assert found[result.id][0] == "active"
        stack.open_gate("active")
        assert result.get(timeout=TIMEOUT) == "released"
        # The result is stored before the pool reports the task done: soon, not at once.
        wait_until(lambda: one(stack).active() == {A: []}, what="no task to be active")


def test_inspect_reserved_and_scheduled_show_waiting_tasks(stack: Stack) -> None:
    with stack.worker(hostname=A, concurrency=1):
        running = stack.tasks.gate.delay("busy")
        started(stack, "busy")
        waiting = stack.tasks.add.delay(1, 2)
        # Due within worker_eta_hold_max_delay (10 min), so the worker holds it; a task due
        # later waits in the broker instead (deferred) and is not the worker's to show.
        later = stack.tasks.add.apply_async((3, 4), countdown=300)
        wait_until(lambda: one(stack).reserved()[A], what="the second task to be reserved")
        assert [t["id"] for t in one(stack).reserved()[A]] == [waiting.id]
        [entry] = wait_until(lambda: one(stack).scheduled()[A], what="the ETA task")
        assert entry["request"]["id"] == later.id and entry["eta"]
        where = one(stack).query_task(waiting.id, later.id)[A]
        assert (where[waiting.id][0], where[later.id][0]) == ("reserved", "scheduled")
        stack.open_gate("busy")
        assert running.get(timeout=TIMEOUT) == "released"
        assert waiting.get(timeout=TIMEOUT) == 3


def test_a_revoked_task_waiting_in_the_worker_never_runs(stack: Stack) -> None:
    with stack.worker(hostname=A, concurrency=1):
        running = stack.tasks.gate.delay("first")
        started(stack, "first")
        waiting = stack.tasks.gate.delay("second")
        wait_until(lambda: one(stack).reserved()[A], what="the second task to be reserved")
        replies = stack.app.control.revoke(waiting.id, destination=[A], reply=True, timeout=5)
        assert replies == [{A: {"ok": f"tasks {waiting.id} flagged as revoked"}}]
        with pytest.raises(TaskRevokedError):
            waiting.get(timeout=TIMEOUT)
        assert waiting.state == states.REVOKED
        assert one(stack).revoked()[A] == [waiting.id]
        stack.open_gate("first")
        stack.open_gate("second")
        assert running.get(timeout=TIMEOUT) == "released"
    assert stack.records("second") == []


def test_a_revoked_eta_task_is_discarded_at_once(stack: Stack) -> None:
    with stack.worker(hostname=A):
        later = stack.tasks.add.apply_async((1, 1), countdown=300)  # held: within 10 min
        wait_until(lambda: one(stack).scheduled()[A], what="the ETA task to be held")
        later.revoke()
        with pytest.raises(TaskRevokedError):
            later.get(timeout=TIMEOUT)
        assert one(stack).scheduled() == {A: []}


def test_a_revoke_sent_before_a_worker_starts_is_honoured_by_it(stack: Stack) -> None:
    result = stack.tasks.add.delay(1, 2)
    result.revoke()
    assert stack.app.control.inspect(timeout=0.2).ping() is None  # nobody heard the broadcast
    with stack.worker(hostname=A):
        assert one(stack).revoked()[A] == [result.id]
        with pytest.raises(TaskRevokedError):
            result.get(timeout=TIMEOUT)
        assert stack.tasks.add.delay(2, 2).get(timeout=TIMEOUT) == 4


def test_terminate_on_a_pool_that_cannot_stop_a_running_task_says_so(stack: Stack) -> None:
    with stack.worker(hostname=A):
        result = stack.tasks.gate.delay("unstoppable")
        started(stack, "unstoppable")
        [reply] = stack.app.control.terminate(result.id, destination=[A], reply=True)
        assert "cannot stop a running task" in reply[A]["error"]
        stack.open_gate("unstoppable")
        assert result.get(timeout=TIMEOUT) == "released"


def test_rate_limit_changes_a_running_workers_rate(stack: Stack) -> None:
    with stack.worker(hostname=A):
        [reply] = stack.app.control.rate_limit("e2e.add", "1/m", destination=[A], reply=True)
        assert reply == {A: {"ok": "new rate limit set successfully"}}
        first, second = stack.tasks.add.delay(1, 1), stack.tasks.add.delay(2, 2)
        assert first.get(timeout=TIMEOUT) == 2
        held = wait_until(lambda: one(stack).reserved()[A], what="the second to be held")
        assert [t["id"] for t in held] == [second.id]
        time.sleep(0.3)
        assert second.state == states.PENDING
        bad = stack.app.control.rate_limit("e2e.add", "fast", destination=[A], reply=True)
        assert "Invalid rate limit" in bad[0][A]["error"]
        unknown = stack.app.control.rate_limit("nope", "1/s", destination=[A], reply=True)
        assert unknown == [{A: {"error": "unknown task"}}]


def test_shutdown_stops_the_named_worker_only(stack: Stack) -> None:
    with stack.worker(hostname=A) as first, stack.worker(hostname=B):
        [reply] = stack.app.control.shutdown(destination=[A], reply=True, timeout=5)
        assert reply == {A: {"ok": "shutting down"}}
        wait_until(lambda: first.exitcode == 0 and first._loop.is_closed(), what="A to stop")
        assert stack.app.control.inspect(timeout=0.5).ping() == {B: {"ok": "pong"}}
        assert stack.tasks.add.delay(1, 2).get(timeout=TIMEOUT) == 3


def test_the_pool_grows_and_shrinks(stack: Stack) -> None:
    with stack.worker(hostname=A, concurrency=1):
        assert stack.app.control.pool_grow(2, destination=[A], reply=True) == [
            {A: {"ok": "pool will grow"}}
        ]
        stats = one(stack).stats()[A]
        assert stats["pool"]["max-concurrency"] == 3
        gates = [stack.tasks.gate.delay(f"g{i}") for i in range(3)]
        for i in range(3):
            started(stack, f"g{i}")  # three run at once
        for i in range(3):
            stack.open_gate(f"g{i}")
        assert [g.get(timeout=TIMEOUT) for g in gates] == ["released"] * 3
        stack.app.control.pool_shrink(2, destination=[A], reply=True)
        assert one(stack).stats()[A]["pool"]["max-concurrency"] == 1
        too_far = stack.app.control.pool_shrink(1, destination=[A], reply=True)
        assert too_far == [{A: {"error": "the pool cannot shrink below one"}}]


def test_the_solo_pool_cannot_grow(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("memory", "solo")
    with stack.worker(hostname=A):
        [reply] = stack.app.control.pool_grow(1, destination=[A], reply=True)
        assert "at most 1" in reply[A]["error"]


def test_add_and_cancel_consumer_change_the_queues_consumed(stack: Stack) -> None:
    with stack.worker(hostname=A, queues=["celery"]):
        routed = stack.tasks.routed.delay()  # to the "special" queue, not consumed yet
        assert [q["name"] for q in one(stack).active_queues()[A]] == ["celery"]
        reply = stack.app.control.add_consumer("special", destination=[A], reply=True)
        assert reply == [{A: {"ok": "add consumer special"}}]
        assert routed.get(timeout=TIMEOUT) == "routed"
        names = [q["name"] for q in one(stack).active_queues()[A]]
        assert names == ["celery", "special"]
        stack.app.control.cancel_consumer("special", destination=[A], reply=True)
        assert [q["name"] for q in one(stack).active_queues()[A]] == ["celery"]
        again = stack.tasks.routed.delay()
        time.sleep(0.3)
        assert again.state == states.PENDING


def test_stats_registered_conf_and_report_describe_the_worker(stack: Stack) -> None:
    with stack.worker(hostname=A, concurrency=2):
        stack.tasks.add.delay(1, 2).get(timeout=TIMEOUT)
        stats = one(stack).stats()[A]
        assert stats["total"] == {"e2e.add": 1}
        assert stats["pool"]["max-concurrency"] == 2 and stats["prefetch_count"] == 8
        assert stats["broker"]["transport"] == stack.transport
        assert "password" not in stats["broker"] and stats["uptime"] >= 0
        registered = one(stack).registered("rate_limit")[A]
        assert "e2e.add" in registered and "e2e.limited [rate_limit=10/s]" in registered
        conf = one(stack).conf()[A]
        assert conf["broker_url"] == mask_password(stack.url)  # a password is never sent out
        assert "task_serializer" not in conf  # defaults only when asked for
        assert one(stack).conf(with_defaults=True)[A]["task_serializer"] == "json"
        assert "software -> celeriac:" in one(stack).report()[A]["ok"]
        assert int(one(stack).clock()[A]["clock"]) > 0


def test_time_limit_sets_a_task_types_limits(stack: Stack) -> None:
    with stack.worker(hostname=A):
        control = stack.app.control
        reply = control.time_limit("e2e.add", soft=5, hard=10, destination=[A], reply=True)
        assert reply == [{A: {"ok": "time limits set successfully"}}]
        task = stack.app.tasks["e2e.add"]
        assert (task.soft_time_limit, task.time_limit) == (5, 10)


def test_task_events_are_switched_on_and_off(stack: Stack) -> None:
    with stack.worker(hostname=A):
        control = stack.app.control
        assert control.enable_events(destination=[A], reply=True) == [
            {A: {"ok": "task events enabled"}}
        ]
        assert control.enable_events(destination=[A], reply=True) == [
            {A: {"ok": "task events already enabled"}}
        ]
        assert control.disable_events(destination=[A], reply=True) == [
            {A: {"ok": "task events disabled"}}
        ]


def test_an_unknown_command_gets_an_error_reply(stack: Stack) -> None:
    with stack.worker(hostname=A):
        reply = stack.app.control.broadcast("nope", destination=[A], reply=True, timeout=5)
        assert reply == [{A: {"error": "unknown command 'nope'"}}]


def test_the_asyncio_face_broadcasts_without_blocking_the_loop(stack: Stack) -> None:
    async def main() -> tuple[object, object]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticking = asyncio.ensure_future(ticker())
        inspect = stack.app.control.inspect(timeout=0.5)
        replies = await asyncio.gather(
            inspect.arequest("ping"),
            stack.app.control.abroadcast("ping", destination=[A], reply=True),
        )
        ticking.cancel()
        assert ticks > 10  # the loop went on while the replies were awaited
        return replies[0], replies[1]

    with stack.worker(hostname=A):
        everyone, one_reply = asyncio.run(main())
        assert everyone == {A: {"ok": "pong"}}
        assert one_reply == [{A: {"ok": "pong"}}]


def test_hello_shares_revoked_ids_between_workers(stack: Stack) -> None:
    with stack.worker(hostname=A):
        stack.app.control.revoke("known-here", destination=[A], reply=True)
        reply = one(stack).hello("other@node", revoked=["known-there"])[A]
        assert set(reply["revoked"]) == {"known-here", "known-there"}
        assert reply["clock"] > 0
        assert set(one(stack).revoked()[A]) == {"known-here", "known-there"}


def test_a_connection_can_be_given_and_reused(stack: Stack) -> None:
    with stack.worker(hostname=A), stack.app.connection() as conn:
        for _ in range(2):
            assert stack.app.control.ping(destination=[A], connection=conn) == [{A: {"ok": "pong"}}]


def test_a_worker_without_remote_control_does_not_answer(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack("memory", "threads", worker_enable_remote_control=False)
    with stack.worker(hostname=A):
        assert stack.app.control.inspect(timeout=0.3).ping() is None
        assert stack.tasks.add.delay(1, 2).get(timeout=TIMEOUT) == 3
