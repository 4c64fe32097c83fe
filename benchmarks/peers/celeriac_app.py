"""The celeriac app: broker and results in one SQLite file (``sqlite:///$BENCH_DB``)."""

from __future__ import annotations

import os

from celeriac import Celery
from peers import tally

url = f"sqlite:///{os.environ.get('BENCH_DB', 'bench.db')}"
app = Celery("bench", broker=url, backend=url)


@app.task(ignore_result=True)
def noop() -> None:
    tally.hit()


@app.task
def add(x: int, y: int) -> int:
    return x + y
