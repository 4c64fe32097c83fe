"""End-to-end demo (``make demo``): a worker on the embedded SQLite broker, and a client.

Starts ``celeriac -A proj worker`` as a subprocess in a fresh temporary directory (so the
broker and results live in a new ``celeriac.db`` every run), sends the example tasks of
``examples/proj/proj/tasks.py`` and prints what comes back, then stops the worker with
SIGTERM and checks that it shut down warmly (exit code 0). Exits non-zero when anything
does not behave as shown.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent / "proj"
WORKER_ARGS = ["-A", "proj", "worker", "-l", "INFO", "-c", "2", "-P", "prefork"]
READY_TIMEOUT = 20.0
RESULT_TIMEOUT = 10.0


class DemoFailed(Exception):
    """Something did not behave as the demo shows."""


def check(condition: bool, what: str) -> None:
    if not condition:
        raise DemoFailed(what)


class WorkerProcess:
    """The worker subprocess, its output collected line by line in a background thread."""

    def __init__(self, workdir: Path) -> None:
        command = [str(Path(sys.executable).with_name("celeriac")), *WORKER_ARGS]
        paths = [str(PROJECT), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        print("$", "celeriac", *WORKER_ARGS, flush=True)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for_line(self, wanted: Callable[[str], bool], timeout: float) -> str | None:
        """The first output line for which ``wanted`` is true, waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((line for line in self.lines if wanted(line)), None)
                remaining = deadline - time.monotonic()
                if found is not None or remaining <= 0 or self.process.poll() is not None:
                    return found
                self._changed.wait(min(remaining, 0.2))

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (warm shutdown); returns the exit code."""
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise DemoFailed(f"the worker did not exit within {timeout}s of SIGTERM") from None
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def output(self, start: int = 0, stop: int | None = None) -> str:
        with self._changed:
            return "\n".join(f"  | {line}" for line in self.lines[start:stop])


def show(call: str, outcome: Any) -> None:
    print(f"{call:<52} -> {outcome}", flush=True)


def run_tasks(worker: WorkerProcess) -> None:
    from proj.tasks import add, error_handler, fail, fetch_title, hello

    show("add.delay(2, 2).get()", add.delay(2, 2).get(timeout=RESULT_TIMEOUT))

    started = time.monotonic()
    value = add.apply_async((2, 2), countdown=1).get(timeout=RESULT_TIMEOUT)
    waited = time.monotonic() - started
    show("add.apply_async((2, 2), countdown=1).get()", f"{value} after {waited:.2f}s")
    check(value == 4 and waited >= 1.0, "the countdown task ran no earlier than due")

    callback = add.s(16)
    callback_result = callback.freeze()  # fixes the callback's task id before sending
    value = add.apply_async((2, 2), link=callback).get(timeout=RESULT_TIMEOUT)
    linked = callback_result.get(timeout=RESULT_TIMEOUT)
    show("add.apply_async((2, 2), link=add.s(16))", f"{value}; callback add(4, 16) -> {linked}")
    check((value, linked) == (4, 20), "the link callback got the parent's result")

    failing = fail.apply_async(link_error=error_handler.s())
    try:
        failing.get(timeout=RESULT_TIMEOUT)
    except ValueError as exc:
        show("fail.apply_async(link_error=error_handler.s()).get()", f"raised {exc!r}")
    else:
        raise DemoFailed("get() of a failing task did not raise ValueError")
    errback_line = worker.wait_for_line(lambda line: f"Task {failing.id} raised" in line, 5.0)
    check(errback_line is not None, "the errback ran (its line is in the worker's output)")
    print(f"{'  errback in the worker printed':<52}    {errback_line}", flush=True)

    states: list[str] = []

    def print_meta(meta: dict[str, Any]) -> None:
        states.append(meta["status"])
        print(f"    {meta['status']:<9} {meta['result']!r}", flush=True)

    print("hello.delay(10).get(on_message=print_meta, propagate=False):", flush=True)
    value = hello.delay(10).get(timeout=RESULT_TIMEOUT, on_message=print_meta, propagate=False)
    check(states == ["PROGRESS", "PROGRESS", "SUCCESS"], f"state changes were {states}")
    check(value == "hello world: 10", f"hello returned {value!r}")

    value = fetch_title.delay("https://example.com").get(timeout=RESULT_TIMEOUT)
    show('fetch_title.delay("https://example.com").get()', repr(value))
    check(value == "title of https://example.com", "the async def task returned its title")


def warm_shutdown(worker: WorkerProcess) -> None:
    """SIGTERM while a task runs: the worker finishes it, then exits 0."""
    from proj.tasks import hello

    running = hello.delay(20)
    deadline = time.monotonic() + RESULT_TIMEOUT
    while running.state != "PROGRESS":
        check(time.monotonic() < deadline, "hello(20) started")
        time.sleep(0.02)
    print("\nSIGTERM to the worker while hello(20) runs (warm shutdown)...", flush=True)
    code = worker.stop()
    print(f"worker exited with code {code}; the last lines of its log:", flush=True)
    print(worker.output(-4), flush=True)
    check(code == 0, f"the worker exited with {code} after SIGTERM, not 0")
    value = running.get(timeout=1)
    show("hello(20), running at SIGTERM, finished", repr(value))
    check(value == "hello world: 20", "the running task finished before the worker exited")


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="celeriac-demo-"))
    os.chdir(workdir)  # the client finds ./celeriac.db here, as the worker does
    sys.path.insert(0, str(PROJECT))
    print(f"celeriac demo: broker and results in {workdir / 'celeriac.db'} (embedded SQLite)\n")
    started = time.monotonic()
    worker = WorkerProcess(workdir)
    try:
        ready = worker.wait_for_line(lambda line: line.endswith(" ready."), READY_TIMEOUT)
        check(ready is not None, "the worker became ready")
        print(worker.output(stop=worker.lines.index(ready) + 1))
        print(f"worker ready in {time.monotonic() - started:.1f}s\n", flush=True)
        run_tasks(worker)
        warm_shutdown(worker)
    except Exception as exc:
        worker.kill()
        print(f"\nDEMO FAILED: {exc!r}\nworker output:\n{worker.output(-60)}", file=sys.stderr)
        return 1
    finally:
        worker.kill()  # only if it is still running (an interrupted demo)
        os.chdir(PROJECT.parent)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\ndemo finished in {time.monotonic() - started:.1f}s: all as shown.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
