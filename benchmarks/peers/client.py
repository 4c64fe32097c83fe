"""The client side of one benchmark step, run in its own process by ``tasks.py``.

``python -m peers.client FRAMEWORK publish N`` sends N no-op tasks (one ``delay()`` per
task, one thread) after one warm-up send, and prints ``{"rate": tasks_per_second}``.

``python -m peers.client celeriac batch N`` sends N no-op tasks as one
``group(...).apply_async()`` (one batch publish) and prints ``{"rate": ...}``.

``python -m peers.client FRAMEWORK group N`` (celeriac or Celery) runs a group of N
``add(i, i)`` and waits for all results; ``... chord N`` a chord of N ``add(i, i)`` with a
``tsum`` body, waiting for its result. Both print ``{"seconds": wall time}``.

``python -m peers.client FRAMEWORK roundtrip N`` makes N ``add(1, 1)`` calls each waiting
for its result (after one warm-up call), and prints ``{"latencies": [seconds, ...]}``.

A fresh process per step: each framework reads ``BENCH_DB`` when its module is imported,
and a framework never shares a process with another.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from collections.abc import Callable
from typing import Any

TIMEOUT = 30.0


def _celeriac(module: Any) -> tuple[Callable[[], Any], Callable[[], Any]]:
    return module.noop.delay, lambda: module.add.delay(1, 1).get(timeout=TIMEOUT)


def _celery(module: Any) -> tuple[Callable[[], Any], Callable[[], Any]]:
    return module.noop.delay, lambda: module.add.delay(1, 1).get(timeout=TIMEOUT)


def _huey(module: Any) -> tuple[Callable[[], Any], Callable[[], Any]]:
    return module.noop, lambda: module.add(1, 1).get(blocking=True, timeout=TIMEOUT)


def _dramatiq(module: Any) -> tuple[Callable[[], Any], Callable[[], Any]]:
    def call() -> Any:
        return module.add.send(1, 1).get_result(block=True, timeout=int(TIMEOUT * 1000))

    return module.noop.send, call


CALLS = {"celeriac": _celeriac, "celery": _celery, "huey": _huey, "dramatiq": _dramatiq}
#: A first send that connects (and declares, creates tables) before the clock starts.
WARM_UP: dict[str, Callable[[Any], Any]] = {
    "celeriac": lambda module: module.add.delay(0, 0),
    "celery": lambda module: module.add.delay(0, 0),
    "huey": lambda module: module.add(0, 0),
    "dramatiq": lambda module: module.add.send(0, 0),
}


def batch(module: Any, count: int) -> dict[str, Any]:
    """celeriac only: ``count`` no-op tasks published as one group."""
    from celeriac import group

    WARM_UP["celeriac"](module)
    signatures = [module.noop.s() for _ in range(count)]
    started = time.perf_counter()
    group(signatures).apply_async()
    return {"rate": count / (time.perf_counter() - started)}


def workflow(framework: str, module: Any, action: str, count: int) -> dict[str, Any]:
    """A group or a chord of ``count`` ``add(i, i)``, timed from sending to its result."""
    canvas = importlib.import_module("celeriac" if framework == "celeriac" else "celery")
    assert module.add.delay(1, 1).get(timeout=TIMEOUT) == 2  # the worker is up
    header = [module.add.s(i, i) for i in range(count)]
    expected = [2 * i for i in range(count)]
    started = time.perf_counter()
    if action == "group":
        got = canvas.group(header).apply_async().get(timeout=TIMEOUT * 10)
    else:
        got = canvas.chord(header)(module.tsum.s()).get(timeout=TIMEOUT * 10)
        expected = sum(expected)
    seconds = time.perf_counter() - started
    if got != expected:
        raise SystemExit(f"{action} returned a wrong result")
    return {"seconds": seconds}


def main(framework: str, action: str, count: int) -> dict[str, Any]:
    module = importlib.import_module(f"peers.{framework}_app")
    if action in {"group", "chord"}:
        return workflow(framework, module, action, count)
    send, call = CALLS[framework](module)
    if action == "batch":
        return batch(module, count)
    if action == "publish":
        WARM_UP[framework](module)  # connects, creates tables; not counted, not a no-op task
        started = time.perf_counter()
        for _ in range(count):
            send()
        return {"rate": count / (time.perf_counter() - started)}
    if action == "roundtrip":
        expected = call()  # warm-up: connections, tables, the worker's first task
        assert expected == 2, expected
        latencies = []
        for _ in range(count):
            started = time.perf_counter()
            call()
            latencies.append(time.perf_counter() - started)
        return {"latencies": latencies}
    raise SystemExit(f"unknown action {action!r}")


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))), flush=True)
