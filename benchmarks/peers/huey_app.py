"""The Huey app: ``SqliteHuey``, queue and result store in one SQLite file."""

from __future__ import annotations

import os

from huey import SqliteHuey

from peers import tally

huey = SqliteHuey("bench", filename=os.environ.get("BENCH_DB", "bench.db"))


@huey.task()
def noop() -> None:
    tally.hit()


@huey.task()
def add(x: int, y: int) -> int:
    return x + y
