"""The example tasks: plain, failing, bound with progress reports, and ``async def``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from proj.celery import app


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def mul(x: int, y: int) -> int:
    return x * y


@app.task
def fail() -> None:
    raise ValueError("this task always fails")


@app.task
def error_handler(request: Any, exc: BaseException, traceback: str) -> str:
    """A ``link_error`` callback: runs in the worker with the failed task's request."""
    line = f"Task {request.id} raised {exc!r}"
    print(line, flush=True)
    return line


@app.task(bind=True)
def hello(self: Any, n: int) -> str:
    """Reports two PROGRESS states before it returns (see ``result.get(on_message=...)``)."""
    self.update_state(state="PROGRESS", meta={"done": 1, "total": 2})
    time.sleep(0.2)
    self.update_state(state="PROGRESS", meta={"done": 2, "total": 2})
    time.sleep(0.2)
    return f"hello world: {n}"


@app.task
async def fetch_title(url: str) -> str:
    """An ``async def`` task: the worker awaits it (natively with ``-P asyncio``)."""
    await asyncio.sleep(0.1)
    return f"title of {url}"
