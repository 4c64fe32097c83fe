"""Messaging benchmark: publish and consume+ack rates on the memory and SQLite transports.

Run with ``make bench`` (or ``python benchmarks/messaging.py --help``). Prints a Markdown
table; ``--write`` also records it in ``benchmarks/RESULTS.md``. What is measured, one
process, one thread, a small JSON body like a task's:

- publish: ``Producer.publish`` in a loop, one message per call (one transaction each);
- publish, batched: ``Producer.send`` of 500 prepared messages per call;
- consume+ack: a consumer with prefetch 100 fetching and acking each message singly;
- depth: publish and consume+ack rates on a queue already holding 10,000, then
  1,000,000, messages (cost must not grow with backlog).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from results import write_section

from celeriac.messaging import Connection, Queue

BODY = [[2, 2], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]


def rate(count: int, run: Callable[[], None]) -> float:
    started = time.perf_counter()
    run()
    return count / (time.perf_counter() - started)


def publish_singly(conn: Connection, queue: Queue, count: int) -> float:
    producer = conn.Producer()
    conn.declare(queue)

    def run() -> None:
        for _ in range(count):
            producer.publish(BODY, queue.name)

    return rate(count, run)


def publish_batched(conn: Connection, queue: Queue, count: int, batch: int = 500) -> float:
    producer = conn.Producer()
    conn.declare(queue)

    def run() -> None:
        for start in range(0, count, batch):
            size = min(batch, count - start)
            producer.send([producer.prepare(BODY, queue.name) for _ in range(size)])

    return rate(count, run)


def consume_and_ack(conn: Connection, queue: Queue, count: int) -> float:
    consumer = conn.Consumer(queue, prefetch_count=100)
    consumer.consume()

    def run() -> None:
        done = 0
        while done < count:
            for message in consumer.fetch(min(100, count - done)):
                message.decode()
                message.ack()
                done += 1

    result = rate(count, run)
    consumer.cancel()
    return result


def prefill(conn: Connection, queue: Queue, depth: int) -> None:
    producer = conn.Producer()
    conn.declare(queue)
    batch = 5000
    for start in range(0, depth, batch):
        size = min(batch, depth - start)
        producer.send([producer.prepare(BODY, queue.name) for _ in range(size)])


def measure(url: str, count: int) -> dict[str, float]:
    with Connection(url) as conn:
        queue = Queue("bench")
        results = {
            "publish": publish_singly(conn, queue, count),
            "consume+ack": consume_and_ack(conn, queue, count),
            "publish, batched": publish_batched(conn, queue, count),
        }
        conn.transport.purge(queue.name)
    return results


def depth_rates(url: str, depth: int, count: int) -> tuple[float, float]:
    with Connection(url) as conn:
        queue = Queue(f"depth-{depth}")
        prefill(conn, queue, depth)
        # Consuming takes the oldest messages (the prefill); publishing adds at the tail.
        publish = publish_singly(conn, queue, count)
        consume = consume_and_ack(conn, queue, count)
        conn.transport.delete_queue(queue.name)
    return publish, consume


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000, help="messages per rate")
    parser.add_argument("--big-depth", type=int, default=1_000_000)
    parser.add_argument("--write", action="store_true", help="record in RESULTS.md")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="celeriac-bench-"))
    try:
        lines = ["| transport | publish | publish, batched | consume+ack |", "|---|---|---|---|"]
        for name, url in (("memory", "memory://bench"), ("sqlite", f"sqlite:///{workdir}/a.db")):
            r = measure(url, args.count)
            lines.append(
                f"| {name} | {r['publish']:,.0f}/s | {r['publish, batched']:,.0f}/s "
                f"| {r['consume+ack']:,.0f}/s |"
            )
        depth_lines = [
            "| SQLite queue depth | publish | consume+ack |",
            "|---|---|---|",
        ]
        for depth in (10_000, args.big_depth):
            publish, consume = depth_rates(f"sqlite:///{workdir}/d{depth}.db", depth, args.count)
            depth_lines.append(f"| {depth:,} | {publish:,.0f}/s | {consume:,.0f}/s |")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    header = (
        f"Measured {datetime.date.today()} on {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {args.count:,} messages per rate."
    )
    report = "\n".join([header, "", *lines, "", *depth_lines, ""])
    print(report)
    if args.write:
        write_section("messaging", "Messaging (`benchmarks/messaging.py`)", report)


if __name__ == "__main__":
    sys.exit(main())
