"""Workflows, remote control and events across Celery and celeriac (RabbitMQ, Redis results).

A chain and a chord built by one framework's client run on the other framework's worker;
each side's remote control (ping, inspect, status) sees the other's worker; Celery's event
receiver decodes the events of a celeriac worker.
"""

from __future__ import annotations

import contextlib
import importlib
import subprocess
import time
from typing import Any

import pytest
from interop_support import BIN, BROKER, Pair
from interop_tasks import ADD, FAIL, TSUM, WHO

TIMEOUT = 20


def canvas(pair: Pair) -> Any:
    """The client's framework module (``celery`` or ``celeriac``) for chain/group/chord."""
    return importlib.import_module(pair.client_framework)


def node_name(pair: Pair) -> str:
    return f"{pair.worker.framework}-{pair.worker.queue}@"


def test_a_chain_passes_each_result_to_the_next_step(pair: Pair) -> None:
    add = pair.tasks[ADD]
    result = canvas(pair).chain(add.s(1, 2), add.s(3), add.s(4)).apply_async()
    assert result.get(timeout=TIMEOUT) == 10
    assert result.parent.get(timeout=TIMEOUT) == 6


def test_a_chord_runs_its_body_once_with_the_header_results_in_order(pair: Pair) -> None:
    add, tsum = pair.tasks[ADD], pair.tasks[TSUM]
    header = [add.s(i, i) for i in range(20)]
    result = canvas(pair).chord(header)(tsum.s())
    assert result.get(timeout=TIMEOUT) == sum(2 * i for i in range(20))


def test_a_group_returns_its_results_in_member_order(pair: Pair) -> None:
    add = pair.tasks[ADD]
    result = canvas(pair).group(add.s(i, 1) for i in range(10)).apply_async()
    assert result.get(timeout=TIMEOUT) == [i + 1 for i in range(10)]


def test_a_failing_chain_step_reaches_the_chains_error_callback(pair: Pair) -> None:
    add, fail = pair.tasks[ADD], pair.tasks[FAIL]
    # An errback taking no arguments is sent as a task by both frameworks (Celery calls a
    # task taking two or more in place with (request, exc, traceback) instead).
    errback = pair.tasks[WHO].si()
    errback_result = errback.freeze()
    workflow = canvas(pair).chain(add.s(1, 1), fail.si("stop here"), add.s(5))
    result = workflow.apply_async(link_error=errback)
    # The step after the failure never runs (a Celery worker leaves it PENDING), so the
    # failure is read from the failed step itself.
    ran_on = pair.app.AsyncResult(errback_result.id).get(timeout=TIMEOUT)
    assert ran_on[0] == pair.worker.framework
    failed = result.parent
    try:
        failed.get(timeout=TIMEOUT)
    except ValueError as exc:
        assert "stop here" in str(exc)
    else:
        raise AssertionError("the chain step did not fail")
    assert failed.parent.get(timeout=TIMEOUT) == 2


def test_inspect_ping_and_stats_reach_the_other_frameworks_worker(pair: Pair) -> None:
    name = node_name(pair)
    replies: dict[str, Any] = {}
    deadline = time.monotonic() + TIMEOUT
    while not any(node.startswith(name) for node in replies) and time.monotonic() < deadline:
        replies = pair.app.control.inspect(timeout=1.0).ping() or {}
    ours = {node: reply for node, reply in replies.items() if node.startswith(name)}
    assert list(ours.values()) == [{"ok": "pong"}], replies
    (node,) = ours
    stats = pair.app.control.inspect(destination=[node], timeout=2.0).stats() or {}
    assert node in stats
    assert "pool" in stats[node]


def test_each_frameworks_status_command_lists_the_other_frameworks_worker(pair: Pair) -> None:
    command = [str(BIN / pair.client_framework), "-b", BROKER, "status"]
    deadline = time.monotonic() + TIMEOUT
    output = ""
    while node_name(pair) not in output and time.monotonic() < deadline:
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
        output = done.stdout + done.stderr
    assert node_name(pair) in output, output
    assert "OK" in output or "pong" in output, output


def test_celerys_event_receiver_decodes_a_celeriac_workers_heartbeats(pair: Pair) -> None:
    """Worker heartbeats are sent always (every 2 s), so no -E is needed to see them."""
    from celery import Celery as CeleryApp

    if pair.worker.framework != "celeriac":
        pytest.skip("the Celery worker here runs --without-heartbeat; this is about ours")

    app = CeleryApp("interop-events", broker=BROKER)
    seen: list[dict[str, Any]] = []

    def on_heartbeat(event: dict[str, Any]) -> None:
        if event["hostname"].startswith(node_name(pair)):
            seen.append(event)

    try:
        with app.connection_for_read() as conn:
            receiver = app.events.Receiver(conn, handlers={"worker-heartbeat": on_heartbeat})
            deadline = time.monotonic() + TIMEOUT
            with contextlib.suppress(TimeoutError):  # itercapture's socket timeout
                for _ in receiver.itercapture(limit=None, timeout=TIMEOUT, wakeup=False):
                    if seen or time.monotonic() > deadline:
                        break
    finally:
        app.close()
    assert seen, "no heartbeat of the worker was received"
    event = seen[0]
    assert event["type"] == "worker-heartbeat"
    assert {"freq", "sw_ident", "sw_ver", "sw_sys", "active", "processed"} <= set(event)
