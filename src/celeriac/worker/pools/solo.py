"""The solo pool: one job at a time, inline on the event loop's thread.

Like Celery's solo pool, a running job blocks the event loop: no heartbeats, control
replies or broker I/O happen until it returns. It suits debugging, and workers whose tasks
are short, because it adds no thread or process hop. ``concurrency`` is always 1.

Time limits:
    soft: ``SoftTimeLimitExceeded`` is raised inside the job by SIGALRM (``setitimer``);
        only when the loop runs on the main thread, since only it receives signals.
    hard: not enforceable in-process (nothing can stop the loop's own thread); a warning
        is logged once and the job runs unlimited.
"""

from __future__ import annotations

import asyncio
import threading

from celeriac.worker.job import Job, Outcome
from celeriac.worker.pools.base import Pool, run_with_soft_limit


class SoloPool(Pool):
    """Runs each job inline on the loop thread, one at a time (``concurrency`` is ignored)."""

    max_concurrency = 1

    def _start_job(self, job: Job, future: asyncio.Future[Outcome]) -> None:
        # Run from a callback rather than here, so submit() returns before the job blocks.
        assert self._loop is not None
        self._loop.call_soon(self._run, job, future)

    def _run(self, job: Job, future: asyncio.Future[Outcome]) -> None:
        if future not in self._running:  # a cold stop came first
            return
        if job.time_limit:
            self._warn_once(
                "hard",
                "The solo pool cannot enforce hard time limits (time_limit); "
                "use the prefork or asyncio pool for them",
            )
        if job.soft_time_limit and threading.current_thread() is not threading.main_thread():
            self._warn_once(
                "soft",
                "The solo pool enforces soft time limits only when the worker's loop runs "
                "on the main thread",
            )
        self._finish(future, run_with_soft_limit(self.runner, job))
