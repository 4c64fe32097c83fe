"""The asyncio pool: jobs run as tasks on the worker's own event loop.

``async def`` tasks run here without any thread or process hop, ``concurrency`` at a time
(thousands are fine for I/O-bound work). The ``async_runner`` is required: it awaits
coroutine tasks and runs sync ones in a thread, so they do not block the loop.

Time limits (both cancel the job's asyncio task, so they act at its next ``await``; a sync
task running in a thread cannot be interrupted and keeps its thread until it returns):
    hard: at ``time_limit`` the task is cancelled and the job's future resolves at once
        with a ``TimeLimitExceeded`` FAILURE, whatever the job does afterwards. The slot
        stays taken until the task really ends.
    soft: at ``soft_time_limit`` the task is cancelled with the message
        ``"SoftTimeLimitExceeded"``. The job may catch ``asyncio.CancelledError`` to clean
        up and return; its outcome is then kept. If the cancellation ends the job (or the
        runner reports it as a ``CancelledError`` failure), the outcome is a
        ``SoftTimeLimitExceeded`` FAILURE.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from celeriac.exceptions import ImproperlyConfigured
from celeriac.worker.job import Job, Outcome
from celeriac.worker.pools.base import Pool, celeriac_failure, failure, worker_lost

SOFT_LIMIT = "SoftTimeLimitExceeded"
HARD_LIMIT = "TimeLimitExceeded"


@dataclass(slots=True)
class _Run:
    """A job running on the loop, with its limit timers."""

    job: Job
    task: asyncio.Task[Outcome]
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    limit: str | None = None  # SOFT_LIMIT or HARD_LIMIT once one has fired


class AsyncioPool(Pool):
    """Runs jobs through ``async_runner`` on the loop, at most ``concurrency`` at once."""

    def _setup(self) -> None:
        super()._setup()
        if self.async_runner is None:
            raise ImproperlyConfigured(
                "The asyncio pool needs an async_runner (the worker passes one; "
                "when building the pool yourself, pass async_runner=...)"
            )
        self._runs: dict[asyncio.Future[Outcome], _Run] = {}

    def _start_job(self, job: Job, future: asyncio.Future[Outcome]) -> None:
        assert self._loop is not None
        task = self._loop.create_task(self._call(job), name=f"celeriac-job-{job.id}")
        run = _Run(job, task)
        if job.soft_time_limit:
            run.timers.append(self._loop.call_later(job.soft_time_limit, self._soft, run))
        if job.time_limit:
            run.timers.append(self._loop.call_later(job.time_limit, self._hard, run, future))
        self._runs[future] = run
        task.add_done_callback(lambda _: self._task_done(future, run))

    async def _call(self, job: Job) -> Outcome:
        assert self.async_runner is not None
        return await self.async_runner(job)

    def _soft(self, run: _Run) -> None:
        if not run.task.done():
            run.limit = SOFT_LIMIT
            run.task.cancel(msg=SOFT_LIMIT)

    def _hard(self, run: _Run, future: asyncio.Future[Outcome]) -> None:
        if not run.task.done():
            run.limit = HARD_LIMIT
            run.task.cancel(msg=HARD_LIMIT)
            self._resolve(future, celeriac_failure(HARD_LIMIT, run.job.time_limit))

    def _task_done(self, future: asyncio.Future[Outcome], run: _Run) -> None:
        for timer in run.timers:
            timer.cancel()
        self._runs.pop(future, None)
        self._finish(future, self._outcome_of(run))

    @staticmethod
    def _outcome_of(run: _Run) -> Outcome:
        if run.limit == HARD_LIMIT:
            return celeriac_failure(HARD_LIMIT, run.job.time_limit)
        if run.task.cancelled():
            if run.limit == SOFT_LIMIT:
                return celeriac_failure(SOFT_LIMIT)
            return worker_lost(f"Worker terminated. Job: {run.job.id}.")
        exc = run.task.exception()
        if exc is not None:
            return failure(exc)
        outcome = run.task.result()
        cancelled = outcome.error is not None and outcome.error.type == "CancelledError"
        if run.limit == SOFT_LIMIT and outcome.state == "FAILURE" and cancelled:
            return celeriac_failure(SOFT_LIMIT)
        return outcome

    async def _kill(self) -> None:
        tasks = [run.task for run in self._runs.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            # Let them unwind (their finally blocks run); a job that ignores cancellation
            # is left behind rather than holding up the stop.
            await asyncio.wait(tasks, timeout=1.0)
