"""Workflow benchmark: a 10,000-member group and a 1,000-member chord, celeriac beside Celery.

Both frameworks run on the same broker and result backend (``--broker redis``: Redis for
both; ``--broker amqp``: RabbitMQ with results on Redis), each with one worker started as a
subprocess on a fresh queue. A client process (``peers/client.py``) first waits for one
``add(1, 1)`` (so the worker is up), then times from sending the workflow to having its
result: ``group(add.s(i, i) for i in range(N)).apply_async().get()`` and
``chord(add.s(i, i) for i in range(M))(tsum.s()).get()``, checking the values. Each is
repeated ``--repeat`` times, a fresh worker and queue each time, and the best is kept.
``--write`` records the table in RESULTS.md. The target (issue 5): at least 5x faster than
Celery.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from results import write_section
from tasks import (
    Budget,
    Framework,
    OutOfTime,
    Setup,
    WorkerProcess,
    celeriac_revision,
    delete_server_queue,
    run_client,
    run_env,
)

TARGET_SPEEDUP = 5
SETUPS = {"celeriac": Setup("threads", 4), "celery": Setup("prefork", 2)}


def time_workflow(fw: Framework, action: str, count: int, workdir: Path, budget: Budget) -> float:
    """One run: a fresh worker and queue, the workflow timed by a client process."""
    rundir = Path(tempfile.mkdtemp(prefix=f"{fw.name}-{action}-", dir=workdir))
    env = run_env(fw, rundir)
    worker = WorkerProcess(fw.worker_command(SETUPS[fw.name]), env, rundir / "worker.log")
    try:
        seconds: float = run_client(fw.name, action, count, env, budget)["seconds"]
    finally:
        worker.stop(signal.SIGTERM)
        delete_server_queue(fw.broker, f"bench-{rundir.name}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", choices=["redis", "amqp"], default="redis")
    parser.add_argument("--group", type=int, default=10_000, help="members of the group")
    parser.add_argument("--chord", type=int, default=1_000, help="members of the chord header")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--timebox", type=float, default=300.0, help="seconds per framework")
    parser.add_argument("--write", action="store_true", help="record in RESULTS.md")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="celeriac-bench-workflows-"))
    best: dict[tuple[str, str], float | str] = {}
    try:
        for name in ("celeriac", "celery"):
            fw = Framework(name, [SETUPS[name]], 0, 0, args.repeat, broker=args.broker)
            budget = Budget(args.timebox)
            for action, count in (("group", args.group), ("chord", args.chord)):
                try:
                    runs = [
                        time_workflow(fw, action, count, workdir, budget)
                        for _ in range(args.repeat)
                    ]
                    best[name, action] = min(runs)
                except OutOfTime:
                    best[name, action] = "stopped: time box ran out"
                except RuntimeError as exc:
                    best[name, action] = str(exc).replace("|", "/")
                print(name, action, best[name, action], file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = render(args, best)
    print(report)
    if args.write:
        name = {"redis": "Redis", "amqp": "RabbitMQ"}[args.broker]
        title = f"Workflows on {name} (`workflows.py --broker {args.broker}`)"
        write_section(f"workflows-{args.broker}", title, report)


def render(args: argparse.Namespace, best: dict[tuple[str, str], float | str]) -> str:
    def cell(value: float | str | None) -> str:
        return value if isinstance(value, str) else "-" if value is None else f"{value:.2f} s"

    where = "Redis (broker and results)" if args.broker == "redis" else "RabbitMQ, results on Redis"
    lines = [
        f"Measured {datetime.date.today()} on {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {where}; celeriac at {celeriac_revision()}. "
        f"One worker each (celeriac `-P threads -c 4`, Celery `-P prefork -c 2`); wall time "
        f"from sending to the result, best of {args.repeat}.",
        "",
        "| workflow | celeriac | Celery | speed-up |",
        "|---|---|---|---|",
    ]
    verdicts = []
    for action, count in (("group", args.group), ("chord", args.chord)):
        ours, theirs = best.get(("celeriac", action)), best.get(("celery", action))
        speedup = "-"
        if isinstance(ours, float) and isinstance(theirs, float):
            speedup = f"{theirs / ours:.1f}x"
            met = "met" if theirs / ours >= TARGET_SPEEDUP else "NOT met"
            verdicts.append(f"- {action} of {count:,}: ≥ {TARGET_SPEEDUP}x Celery: **{met}**.")
        lines.append(f"| {action} of {count:,} | {cell(ours)} | {cell(theirs)} | {speedup} |")
    return "\n".join([*lines, "", *verdicts, ""])


if __name__ == "__main__":
    sys.exit(main())
