"""The Celery app: kombu's SQLAlchemy transport and the database result backend on SQLite.

``BENCH_BROKER`` / ``BENCH_BACKEND`` (URLs) and ``BENCH_QUEUE`` select a server broker
instead (``redis://``, ``amqp://``).
"""

from __future__ import annotations

import os

from celery import Celery

from peers import tally

path = os.environ.get("BENCH_DB", "bench.db")
app = Celery(
    "bench",
    broker=os.environ.get("BENCH_BROKER") or f"sqla+sqlite:///{path}",
    backend=os.environ.get("BENCH_BACKEND") or f"db+sqlite:///{path}",
)
app.conf.task_default_queue = os.environ.get("BENCH_QUEUE") or "celery"
app.conf.broker_connection_retry_on_startup = True
app.conf.worker_hijack_root_logger = False


@app.task(ignore_result=True)
def noop() -> None:
    tally.hit()


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def tsum(values: list[int]) -> int:
    return sum(values)
