"""The celeriac app: by default broker and results in one SQLite file (``sqlite:///$BENCH_DB``).

``BENCH_BROKER`` / ``BENCH_BACKEND`` (URLs) and ``BENCH_QUEUE`` select a server broker
instead (``redis://``, ``amqp://``); ``BENCH_CONFIRM=1`` turns publisher confirms on.
"""

from __future__ import annotations

import os

from celeriac import Celery
from peers import tally

url = f"sqlite:///{os.environ.get('BENCH_DB', 'bench.db')}"
app = Celery(
    "bench",
    broker=os.environ.get("BENCH_BROKER") or url,
    backend=os.environ.get("BENCH_BACKEND") or url,
)
app.conf.task_default_queue = os.environ.get("BENCH_QUEUE") or "celery"
if os.environ.get("BENCH_CONFIRM") == "1":
    app.conf.broker_transport_options = {"confirm_publish": True}


@app.task(ignore_result=True)
def noop() -> None:
    tally.hit()


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def tsum(values: list[int]) -> int:
    return sum(values)
