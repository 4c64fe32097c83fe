"""Task benchmark: publish, drain and round trip, celeriac beside Celery, Huey and Dramatiq.

``--broker sqlite`` (the default) runs celeriac, Celery and Huey on SQLite; ``--broker redis``
and ``--broker amqp`` run celeriac, Celery and Dramatiq on the local Redis or RabbitMQ with
results on Redis, each run on a fresh queue (deleted afterwards). On those brokers celeriac
also gets a batch publish (one ``group(...).apply_async()``) and, on RabbitMQ, a publish
with publisher confirms on.

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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from results import write_section

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
#: DESIGN.md's targets for the embedded SQLite broker, drain and publish (tasks/s).
TARGET = 10_000
#: DESIGN.md's targets on RabbitMQ and Redis: drain multiples of the peers' best, publish
#: multiple of Dramatiq's, batch publish rate, round trip p50 (seconds).
DRAIN_VS_DRAMATIQ = 3
DRAIN_VS_CELERY = 6
PUBLISH_VS_DRAMATIQ = 2
BATCH_TARGET = 50_000
ROUNDTRIP_P50_TARGET = 0.0005
#: Server brokers: celeriac's (and Celery's) URL, and where results go.
SERVER_BROKERS = {
    "redis": "redis://127.0.0.1:6379/12",
    "amqp": "amqp://guest:guest@127.0.0.1:5672//",
}
RESULTS_URL = "redis://127.0.0.1:6379/12"


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
    broker: str = "sqlite"

    def worker_command(self, setup: Setup) -> list[str]:
        if self.name == "dramatiq":
            # Setup.pool is the number of worker processes, concurrency the threads in each.
            return [
                str(BIN / "dramatiq"),
                "peers.dramatiq_app",
                "-p",
                setup.pool,
                "-t",
                str(setup.concurrency),
                *setup.extra,
            ]
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
            # Cluster chatter off, as Celery advises for throughput (celeriac's only chatter
            # is one heartbeat event every 2 s).
            command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        return command

    def label(self, setup: Setup) -> str:
        flags = {"huey": ("-k", "-w"), "dramatiq": ("-p", "-t")}.get(self.name, ("-P", "-c"))
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
    batch: float | None = None  # celeriac on a server broker: one group publish
    confirmed: float | None = None  # celeriac on RabbitMQ: publish with confirms on
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


def server_env(broker: str, queue: str) -> dict[str, str]:
    """The environment that points a peer app at a server broker and a fresh queue."""
    if broker == "sqlite":
        return {}
    return {
        "BENCH_BROKER": SERVER_BROKERS[broker],
        "BENCH_BACKEND": RESULTS_URL,
        "BENCH_QUEUE": queue,
    }


def delete_server_queue(broker: str, queue: str) -> None:
    """Remove what a run left on a server broker: its queue (and Dramatiq's side queues)."""
    if broker == "redis":
        import redis

        redis.Redis.from_url(SERVER_BROKERS["redis"]).flushdb()  # db 12: benchmarks only
    elif broker == "amqp":
        import amqp

        with amqp.Connection("127.0.0.1:5672", userid="guest", password="guest") as conn:
            channel = conn.channel()
            for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                channel.queue_delete(name)
            channel.exchange_delete(queue)


def run_env(fw: Framework, rundir: Path) -> dict[str, str]:
    """The environment of one run's client and worker processes (tally made here)."""
    tally = rundir / "tally"
    tally.mkdir()
    path = [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(path),
        "BENCH_DIR": str(rundir),
        "BENCH_DB": str(rundir / "bench.db"),
        "BENCH_TALLY": str(tally),
        "BENCH_COUNT": str(fw.count),
        **server_env(fw.broker, f"bench-{rundir.name}"),
    }


def publish_variants(fw: Framework, workdir: Path, budget: Budget, row: Row) -> None:
    """celeriac on a server broker: the batch publish, and on RabbitMQ the confirmed one."""
    if fw.name != "celeriac" or fw.broker == "sqlite":
        return
    for _ in range(fw.repeat):
        rundir = Path(tempfile.mkdtemp(prefix="celeriac-batch-", dir=workdir))
        env = run_env(fw, rundir)
        try:
            batch = run_client(fw.name, "batch", fw.count, env, budget)["rate"]
            row.batch = max(row.batch or 0.0, batch)
            if fw.broker == "amqp":
                confirmed_env = {**env, "BENCH_CONFIRM": "1"}
                confirmed = run_client(fw.name, "publish", fw.count, confirmed_env, budget)["rate"]
                row.confirmed = max(row.confirmed or 0.0, confirmed)
        finally:
            delete_server_queue(fw.broker, f"bench-{rundir.name}")


def run_once(
    fw: Framework, setup: Setup, workdir: Path, budget: Budget, roundtrips: int
) -> tuple[float, float, float, list[float]]:
    """Publish, drain, and round trips if asked, in a fresh directory and file.

    Returns the publish rate, the drain rate from the first task, the drain rate from the
    worker's spawn, and the round-trip latencies.
    """
    rundir = Path(tempfile.mkdtemp(prefix=f"{fw.name}-{setup.pool}-", dir=workdir))
    tally = rundir / "tally"
    env = run_env(fw, rundir)
    try:
        publish = run_client(fw.name, "publish", fw.count, env, budget)["rate"]
    except BaseException:
        forget_wake_directory(fw, env["BENCH_DB"])
        delete_server_queue(fw.broker, f"bench-{rundir.name}")
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
        delete_server_queue(fw.broker, f"bench-{rundir.name}")
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
        "| round trip p50 | p99 | batch publish | publish, confirms | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        name = f"{row.framework} {versions.get(row.framework) or ''}".strip()
        p50 = p99 = "-"
        if row.latencies:
            p50 = f"{ms(percentile(row.latencies, 0.5))} (n={len(row.latencies)})"
            p99 = ms(percentile(row.latencies, 0.99))
        lines.append(
            f"| {name} | {row.setup} | {row.count:,} | {rate(row.publish)} "
            f"| {rate(row.drain)} | {rate(row.drain_with_start)} | {p50} | {p99} "
            f"| {rate(row.batch)} | {rate(row.confirmed)} | {row.note} |"
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


def best(rows: list[Row], framework: str, what: str) -> float | None:
    """The highest ``what`` (an attribute of Row) among ``framework``'s rows."""
    values = [getattr(r, what) for r in rows if r.framework == framework]
    return max((v for v in values if v is not None), default=None)


def server_targets(rows: list[Row], broker: str) -> list[str]:
    """DESIGN.md's RabbitMQ/Redis targets, judged on the best row of each framework."""
    drain, publish = best(rows, "celeriac", "drain"), best(rows, "celeriac", "publish")
    lines = []
    for peer, multiple in (("dramatiq", DRAIN_VS_DRAMATIQ), ("celery", DRAIN_VS_CELERY)):
        theirs = best(rows, peer, "drain")
        if drain and theirs:
            met = "met" if drain >= multiple * theirs else "NOT met"
            lines.append(
                f"- Drain ≥ {multiple}x {peer} on {broker}: **{met}** "
                f"({drain:,.0f}/s vs {theirs:,.0f}/s: {drain / theirs:.1f}x)."
            )
    theirs = best(rows, "dramatiq", "publish")
    if publish and theirs:
        met = "met" if publish >= PUBLISH_VS_DRAMATIQ * theirs else "NOT met"
        lines.append(
            f"- Publish ≥ {PUBLISH_VS_DRAMATIQ}x dramatiq: **{met}** "
            f"({publish:,.0f}/s vs {theirs:,.0f}/s: {publish / theirs:.1f}x)."
        )
    batch = best(rows, "celeriac", "batch")
    if batch:
        met = "met" if batch >= BATCH_TARGET else "NOT met"
        lines.append(f"- Batch publish ≥ {BATCH_TARGET:,}/s: **{met}** ({batch:,.0f}/s).")
    p50s = [percentile(r.latencies, 0.5) for r in rows if r.framework == "celeriac" and r.latencies]
    if p50s:
        met = "met" if min(p50s) <= ROUNDTRIP_P50_TARGET else "NOT met"
        lines.append(
            f"- Round trip p50 ≤ {ROUNDTRIP_P50_TARGET * 1000:.1f} ms: **{met}** "
            f"(best {ms(min(p50s))})."
        )
    return lines


def parse_setups(text: str) -> list[Setup]:
    """``"solo:1,threads:4"`` -> ``[Setup("solo", 1), Setup("threads", 4)]``."""
    setups = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        pool, _, concurrency = item.partition(":")
        setups.append(Setup(pool, int(concurrency or 1)))
    return setups


def frameworks(args: argparse.Namespace) -> list[Framework]:
    server = args.broker != "sqlite"
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
            # On a server broker Celery is fast enough for the full count and its get()
            # waits on pub/sub rather than polling.
            args.count if server else args.celery_count,
            args.roundtrips if server else args.celery_roundtrips,
            args.celery_repeat,
        ),
        "dramatiq": Framework(
            "dramatiq",
            # Setup.pool = processes, concurrency = threads per process (8 is its default).
            [Setup("1", 8), Setup("2", 8), Setup("1", 1)],
            args.count,
            args.roundtrips,
            args.repeat,
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
    default = "celeriac,celery,dramatiq" if server else "celeriac,celery,huey"
    for name in filter(None, (part.strip() for part in (args.frameworks or default).split(","))):
        if name not in known:
            raise SystemExit(f"unknown framework {name!r}; known: {', '.join(known)}")
        if (name == "huey" and server) or (name == "dramatiq" and not server):
            raise SystemExit(f"{name} is not benchmarked on {args.broker}")
        fw = known[name]
        fw.broker = args.broker
        if args.setups:
            fw.setups = parse_setups(args.setups)
        if args.events and name == "celeriac":
            # Task events on (-E): compare with a run without to see what they cost.
            fw.setups = [replace(s, extra=(*s.extra, "-E")) for s in fw.setups]
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
            for index, setup in enumerate(fw.setups):
                if budget.deadline <= time.monotonic():
                    row = Row(fw.name, fw.label(setup), fw.count, note="not run: time box")
                else:
                    row = measure(fw, setup, workdir, budget)
                    if index == 0:
                        with contextlib.suppress(OutOfTime, RuntimeError):
                            publish_variants(fw, workdir, budget, row)
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
    parser.add_argument(
        "--broker",
        choices=["sqlite", "redis", "amqp"],
        default="sqlite",
        help="sqlite (celeriac, Celery, Huey) or a local server (celeriac, Celery, Dramatiq)",
    )
    parser.add_argument("--frameworks", help="default: the three of the chosen broker")
    parser.add_argument("--setups", help="override the pools tried, e.g. solo:1,threads:4")
    parser.add_argument("--events", action="store_true", help="celeriac workers send task events")
    parser.add_argument("--write", action="store_true", help="record in RESULTS.md")
    args = parser.parse_args()

    rows, versions = run(args)
    server = args.broker != "sqlite"
    where = {
        "sqlite": f"SQLite {sqlite3.sqlite_version}",
        "redis": "the local Redis (results on Redis)",
        "amqp": "the local RabbitMQ (results on Redis)",
    }[args.broker]
    celery_count = args.count if server else args.celery_count
    header = (
        f"Measured {datetime.date.today()} on {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {where}; celeriac at "
        f"{celeriac_revision()}. No-op tasks, "
        f"{args.count:,} per publish and drain, best of {args.repeat} runs (Celery: "
        f"{celery_count:,}, best of {args.celery_repeat}); round trips: n calls after the "
        f"last drain. Time box {args.timebox:.0f} s per framework."
    )
    judged = server_targets(rows, args.broker) if server else targets(rows)
    report = "\n".join([header, "", *table(rows, versions), "", *judged, ""])
    print(report)
    if args.write:
        write_results(report, args.broker)


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


def write_results(report: str, broker: str) -> None:
    """Replace the broker's marked tasks section of RESULTS.md (appended when missing)."""
    if broker == "sqlite":
        write_section("tasks", "Tasks (`benchmarks/tasks.py`)", report)
        return
    name = {"redis": "Redis", "amqp": "RabbitMQ"}[broker]
    write_section(f"tasks-{broker}", f"Tasks on {name} (`tasks.py --broker {broker}`)", report)


if __name__ == "__main__":
    sys.exit(main())
