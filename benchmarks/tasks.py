"""Task benchmark: publish, drain and round trip on SQLite, celeriac beside Celery and Huey.

Run with ``make bench`` (peers installed by ``make bench-deps``) or ``python
benchmarks/tasks.py --help``. Prints a Markdown table; ``--write`` also records it in
``benchmarks/RESULTS.md``. For each framework and each worker set-up (pool, concurrency:
one row each), in a fresh temporary directory with a fresh SQLite file:

- publish: a client process sends the no-op task ``--count`` times, ``delay()`` in a loop,
  one thread, results ignored (timed after one warm-up send);
- drain: then ONE worker is started as a subprocess (``celeriac``/``celery`` ``worker -P
  POOL -c N``, ``huey_consumer -k TYPE -w N``) on those queued tasks; every task counts
  itself (``peers/tally.py``) and the one that completes the count stamps the time. The
  rate is given from the first task that ran to the last, and from the worker's spawn to the
  last (start-up included);
- round trip: with that worker still running, a client calls ``add(1, 1)`` and waits for
  the result, ``--roundtrips`` times one after another: p50 and p99 latency.

Publish and drain are repeated ``--repeat`` times (``--celery-repeat`` for Celery), with a
fresh file each time, and the best is kept; the round trip runs once, after the last drain.
Peers that are not installed, or fail, get a row saying so. Each framework has a time
budget (``--timebox``); a step that would overrun it is stopped and recorded as such.
Every worker runs in its own process group, killed at the end of its run: no process
outlives the benchmark. See ``benchmarks/README.md`` for the method.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from results import write_section

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
#: DESIGN.md's targets for the embedded SQLite broker, drain and publish (tasks/s).
TARGET = 10_000


@dataclass(frozen=True)
class Setup:
    """One worker configuration: pool, concurrency and any further worker options."""

    pool: str
    concurrency: int
    extra: tuple[str, ...] = ()
    #: A prefetch window deeper than the default (``worker_prefetch_multiplier`` 4 x a
    #: concurrency of at most 4): the targets are judged with and without these.
    deep: bool = False


@dataclass
class Framework:
    """One framework under test: how to start its worker, which set-ups to try."""

    name: str
    setups: list[Setup]
    count: int
    roundtrips: int
    repeat: int
    stop_signal: int = signal.SIGTERM

    def worker_command(self, setup: Setup) -> list[str]:
        if self.name == "huey":
            return [
                str(BIN / "huey_consumer"),
                "peers.huey_app.huey",
                "-k",
                setup.pool,
                "-w",
                str(setup.concurrency),
                "-q",  # warnings only, like the others' -l WARNING
                *setup.extra,
            ]
        command = [
            str(BIN / self.name),
            "-A",
            f"peers.{self.name}_app",
            "worker",
            "-P",
            setup.pool,
            "-c",
            str(setup.concurrency),
            "-l",
            "WARNING",
            *setup.extra,
        ]
        if self.name == "celery":
            # Cluster chatter off, as Celery advises for throughput (celeriac has none yet).
            command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        return command

    def label(self, setup: Setup) -> str:
        flags = ("-k", "-w") if self.name == "huey" else ("-P", "-c")
        words = [flags[0], setup.pool, flags[1], str(setup.concurrency), *setup.extra]
        return f"`{' '.join(words)}`"

    def version(self) -> str | None:
        """The installed version; None when the framework cannot be imported here."""
        if importlib.util.find_spec(self.name) is None:
            return None
        return importlib.metadata.version(self.name)


@dataclass
class Row:
    """What one framework and set-up measured (a note says what went wrong)."""

    framework: str
    setup: str
    count: int
    publish: float | None = None
    drain: float | None = None
    drain_with_start: float | None = None
    latencies: list[float] = field(default_factory=list)
    note: str = ""
    deep: bool = False  # see Setup.deep


class OutOfTime(Exception):
    """The framework's time budget ran out."""


class Budget:
    """A framework's time box: each step gets what is left of it."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise OutOfTime
        return left


def run_client(
    framework: str, action: str, count: int, env: dict[str, str], budget: Budget
) -> dict[str, Any]:
    """Run one ``peers.client`` step in a fresh process; its JSON answer."""
    command = [sys.executable, "-m", "peers.client", framework, action, str(count)]
    try:
        done = subprocess.run(
            command,
            check=False,
            env=env,
            cwd=env["BENCH_DIR"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=budget.left(),
        )
    except subprocess.TimeoutExpired:
        raise OutOfTime from None
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{action} failed: {tail[0]}")
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


class WorkerProcess:
    """A worker subprocess in its own process group (so its children die with it)."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.spawned = time.time()
            self.process = subprocess.Popen(
                command,
                cwd=env["BENCH_DIR"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self, sig: int, grace: float = 10.0) -> None:
        """Ask it to stop with ``sig``; after at most ``grace`` s kill its whole group."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # leftovers: pool children
        self.process.wait()

    def tail(self, lines: int = 2) -> str:
        text = [line.strip() for line in self.log.read_text(errors="replace").splitlines()]
        return " / ".join([line for line in text if line][-lines:])


def wait_drained(tally: Path, worker: WorkerProcess, budget: Budget) -> float:
    """Wait until the task that completes the count stamps the end; that time."""
    end = tally / "end"
    while not end.exists():
        if worker.process.poll() is not None:
            raise RuntimeError(f"worker exited ({worker.process.returncode}): {worker.tail()}")
        budget.left()
        time.sleep(0.01)
    for _ in range(1000):  # the stamp is written just after the file is created
        text = end.read_text()
        if text:
            return float(text)
        time.sleep(0.001)
    raise RuntimeError("the end stamp stayed empty")


def forget_wake_directory(fw: Framework, db: str) -> None:
    """Remove celeriac's wake-up socket directories for ``db`` (broker and results)."""
    if fw.name != "celeriac":
        return
    from celeriac.backends.sqlite import WAKE_SUFFIX
    from celeriac.transports.wakeup import wake_directory

    for key in (db, db + WAKE_SUFFIX):
        shutil.rmtree(wake_directory(key), ignore_errors=True)


def run_once(
    fw: Framework, setup: Setup, workdir: Path, budget: Budget, roundtrips: int
) -> tuple[float, float, float, list[float]]:
    """Publish, drain, and round trips if asked, in a fresh directory and file.

    Returns the publish rate, the drain rate from the first task, the drain rate from the
    worker's spawn, and the round-trip latencies.
    """
    rundir = Path(tempfile.mkdtemp(prefix=f"{fw.name}-{setup.pool}-", dir=workdir))
    tally = rundir / "tally"
    tally.mkdir()
    path = [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(path),
        "BENCH_DIR": str(rundir),
        "BENCH_DB": str(rundir / "bench.db"),
        "BENCH_TALLY": str(tally),
        "BENCH_COUNT": str(fw.count),
    }
    try:
        publish = run_client(fw.name, "publish", fw.count, env, budget)["rate"]
    except BaseException:
        forget_wake_directory(fw, env["BENCH_DB"])
        raise
    worker = WorkerProcess(fw.worker_command(setup), env, rundir / "worker.log")
    try:
        end = wait_drained(tally, worker, budget)
        first = min(
            float((tally / name).read_text())
            for name in os.listdir(tally)
            if name.startswith("first-")
        )
        ran = (tally / "ran").stat().st_size
        if ran < fw.count:
            raise RuntimeError(f"only {ran} of {fw.count} tasks ran")
        latencies: list[float] = []
        if roundtrips:
            latencies = run_client(fw.name, "roundtrip", roundtrips, env, budget)["latencies"]
    finally:
        worker.stop(fw.stop_signal)
        forget_wake_directory(fw, env["BENCH_DB"])
    return publish, fw.count / (end - first), fw.count / (end - worker.spawned), latencies


def measure(fw: Framework, setup: Setup, workdir: Path, budget: Budget) -> Row:
    """The best publish and drain of ``fw.repeat`` runs; round trips in the last one."""
    row = Row(fw.name, fw.label(setup), fw.count, deep=setup.deep)
    try:
        for attempt in range(fw.repeat):
            last = attempt == fw.repeat - 1
            publish, drain, with_start, latencies = run_once(
                fw, setup, workdir, budget, fw.roundtrips if last else 0
            )
            row.publish = max(row.publish or 0.0, publish)
            if drain > (row.drain or 0.0):
                row.drain, row.drain_with_start = drain, with_start
            row.latencies = latencies
    except OutOfTime:
        row.note = "stopped: time box ran out"
    except RuntimeError as exc:
        row.note = str(exc).replace("|", "/")
    return row


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}/s"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms" if seconds < 0.1 else f"{seconds * 1000:,.0f} ms"


def table(rows: list[Row], versions: dict[str, str | None]) -> list[str]:
    lines = [
        "| framework | worker | tasks | publish | drain | drain incl. start-up "
        "| round trip p50 | p99 | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        name = f"{row.framework} {versions.get(row.framework) or ''}".strip()
        p50 = p99 = "-"
        if row.latencies:
            p50 = f"{ms(percentile(row.latencies, 0.5))} (n={len(row.latencies)})"
            p99 = ms(percentile(row.latencies, 0.99))
        lines.append(
            f"| {name} | {row.setup} | {row.count:,} | {rate(row.publish)} "
            f"| {rate(row.drain)} | {rate(row.drain_with_start)} | {p50} | {p99} | {row.note} |"
        )
    return lines


def verdict(value: float) -> str:
    """Met or not; "narrowly" within 20% above the target (about one run's noise here)."""
    if value < TARGET:
        return "NOT met"
    return "met, narrowly" if value < 1.2 * TARGET else "met"


def targets(rows: list[Row]) -> list[str]:
    """DESIGN.md's SQLite targets, met or not, judged on celeriac's rows."""
    ours = [r for r in rows if r.framework == "celeriac"]
    publishes = [r.publish for r in ours if r.publish is not None]
    lines = []
    if publishes:
        value = statistics.median(publishes)
        met = verdict(value)
        lines.append(
            f"- Publish on SQLite ≥ {TARGET:,} tasks/s: **{met}** (median of the "
            f"{len(publishes)} rows: {value:,.0f}/s; best {max(publishes):,.0f}/s)."
        )
    best = max(((r.drain, r.setup) for r in ours if r.drain is not None), default=None)
    usual = max(
        ((r.drain, r.setup) for r in ours if r.drain is not None and not r.deep), default=None
    )
    if best is not None:
        met = verdict(best[0])
        line = (
            f"- Drain on SQLite ≥ {TARGET:,} tasks/s: **{met}** (best {best[0]:,.0f}/s, {best[1]})"
        )
        if usual is not None and usual != best:
            line += (
                f"; with the default prefetch window: **{verdict(usual[0])}** "
                f"(best {usual[0]:,.0f}/s, {usual[1]})"
            )
        lines.append(line + ".")
    return lines


def parse_setups(text: str) -> list[Setup]:
    """``"solo:1,threads:4"`` -> ``[Setup("solo", 1), Setup("threads", 4)]``."""
    setups = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        pool, _, concurrency = item.partition(":")
        setups.append(Setup(pool, int(concurrency or 1)))
    return setups


def frameworks(args: argparse.Namespace) -> list[Framework]:
    known = {
        "celeriac": Framework(
            "celeriac",
            [
                Setup("solo", 1),
                Setup("threads", 4),
                Setup("prefork", 2),
                Setup("asyncio", 4),
                # Deeper prefetch windows: bigger fetch and ack batches on SQLite.
                Setup("solo", 1, ("--prefetch-multiplier", "64"), deep=True),
                Setup("asyncio", 64, deep=True),
            ],
            args.count,
            args.roundtrips,
            args.repeat,
        ),
        "celery": Framework(
            "celery",
            [Setup("solo", 1), Setup("threads", 4), Setup("prefork", 2)],
            args.celery_count,
            args.celery_roundtrips,
            args.celery_repeat,
        ),
        "huey": Framework(
            "huey",
            [Setup("thread", 1), Setup("thread", 4), Setup("process", 2)],
            args.count,
            args.huey_roundtrips,
            args.repeat,
            stop_signal=signal.SIGINT,  # huey_consumer's graceful signal
        ),
    }
    chosen = []
    for name in filter(None, (part.strip() for part in args.frameworks.split(","))):
        if name not in known:
            raise SystemExit(f"unknown framework {name!r}; known: {', '.join(known)}")
        fw = known[name]
        if args.setups:
            fw.setups = parse_setups(args.setups)
        chosen.append(fw)
    return chosen


def run(args: argparse.Namespace) -> tuple[list[Row], dict[str, str | None]]:
    workdir = Path(tempfile.mkdtemp(prefix="celeriac-bench-tasks-"))
    rows: list[Row] = []
    versions: dict[str, str | None] = {}
    try:
        for fw in frameworks(args):
            versions[fw.name] = fw.version()
            if versions[fw.name] is None:
                note = f"not installed here (`make bench-deps`): `import {fw.name}` fails"
                rows.append(Row(fw.name, "-", fw.count, note=note))
                continue
            budget = Budget(args.timebox)
            for setup in fw.setups:
                if budget.deadline <= time.monotonic():
                    row = Row(fw.name, fw.label(setup), fw.count, note="not run: time box")
                else:
                    row = measure(fw, setup, workdir, budget)
                print(table([row], versions)[-1], file=sys.stderr, flush=True)
                rows.append(row)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return rows, versions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="tasks per publish/drain")
    parser.add_argument("--celery-count", type=int, default=1_000, help="for Celery (slow)")
    parser.add_argument("--roundtrips", type=int, default=500)
    parser.add_argument("--celery-roundtrips", type=int, default=10)
    parser.add_argument("--huey-roundtrips", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3, help="publish+drain runs, best kept")
    parser.add_argument("--celery-repeat", type=int, default=1)
    parser.add_argument("--timebox", type=float, default=120.0, help="seconds per framework")
    parser.add_argument("--frameworks", default="celeriac,celery,huey")
    parser.add_argument("--setups", help="override the pools tried, e.g. solo:1,threads:4")
    parser.add_argument("--write", action="store_true", help="record in RESULTS.md")
    args = parser.parse_args()

    rows, versions = run(args)
    header = (
        f"Measured {datetime.date.today()} on {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}; celeriac at "
        f"{celeriac_revision()}. No-op tasks, "
        f"{args.count:,} per publish and drain, best of {args.repeat} runs (Celery: "
        f"{args.celery_count:,}, best of {args.celery_repeat}); round trips: n calls after the "
        f"last drain. Time box {args.timebox:.0f} s per framework."
    )
    report = "\n".join([header, "", *table(rows, versions), "", *targets(rows), ""])
    print(report)
    if args.write:
        write_results(report)


def celeriac_revision() -> str:
    """The git commit of the celeriac being measured (``+changes`` when its tree differs)."""
    spec = importlib.util.find_spec("celeriac")
    if spec is None or spec.origin is None:
        return "not importable"
    where = str(Path(spec.origin).parent)
    try:
        commit = subprocess.run(
            ["git", "-C", where, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "-C", where, "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"
    return f"{commit}+changes" if changes else commit


def write_results(report: str) -> None:
    """Replace the marked tasks section of RESULTS.md (appended when missing)."""
    write_section("tasks", "Tasks (`benchmarks/tasks.py`)", report)


if __name__ == "__main__":
    sys.exit(main())
