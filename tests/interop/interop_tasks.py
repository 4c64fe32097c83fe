"""One set of task definitions registered on a Celery app and on a celeriac app alike.

The same decorators and the same task bodies work on both, which is the point of celeriac's
API. A worker module (``interop_worker``) builds either app from environment variables, so a
real Celery worker and a celeriac worker run the very same tasks.
"""

from __future__ import annotations

import os
from typing import Any

#: Task names, fixed so a client of one framework can call the other's worker.
ADD = "interop.add"
FAIL = "interop.fail"
RETRY_ONCE = "interop.retry_once"
WHO = "interop.who"
TSUM = "interop.tsum"


def register(app: Any, framework: str) -> dict[str, Any]:
    """Register the interop tasks on ``app`` (Celery or celeriac); returns them by name."""

    @app.task(name=ADD)
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name=FAIL)
    def fail(message: str) -> None:
        raise ValueError(message)

    @app.task(name=RETRY_ONCE, bind=True, max_retries=3)
    def retry_once(self: Any, x: int) -> list[int]:
        if self.request.retries < 1:
            raise self.retry(countdown=0.2)
        return [x, self.request.retries]

    @app.task(name=WHO)
    def who() -> list[Any]:
        return [framework, os.getpid()]

    @app.task(name=TSUM)
    def tsum(values: list[int]) -> int:
        return sum(values)

    return {ADD: add, FAIL: fail, RETRY_ONCE: retry_once, WHO: who, TSUM: tsum}


def settings(queue: str) -> dict[str, Any]:
    """Configuration both frameworks share: one queue, JSON only, results kept."""
    return {
        "task_default_queue": queue,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "broker_connection_retry_on_startup": True,
    }
