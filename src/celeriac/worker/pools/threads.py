"""The threads pool: jobs run in a ``ThreadPoolExecutor`` of ``concurrency`` threads.

Suits I/O-bound sync tasks and C code that releases the GIL. The loop never waits on a
thread: completions are handed back with ``call_soon_threadsafe``, one call for all the
jobs that finished before the loop took them (each call wakes the loop: short tasks
finishing together cost one wake-up, not one each).

Time limits:
    Neither is enforceable: Python cannot interrupt or stop another thread (Celery's
    threads pool does not enforce them either). A warning is logged once and jobs run
    unlimited. A cold stop (``terminate``) resolves running jobs' futures at once, but
    their threads run on until the jobs return.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading

from celeriac.worker.job import Job, Outcome
from celeriac.worker.pools.base import Pool, failure, run_safely


class ThreadPool(Pool):
    """Runs jobs in up to ``concurrency`` threads."""

    def _setup(self) -> None:
        super()._setup()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        #: Finished jobs not taken by the loop yet, and whether it was told of them.
        self._finished: list[tuple[asyncio.Future[Outcome], Outcome]] = []
        self._told = False
        self._finished_lock = threading.Lock()

    async def _open(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            self.concurrency, thread_name_prefix="celeriac-job"
        )

    def _resized(self) -> None:
        # An executor cannot change size: new jobs go to a new one, and the old one's
        # threads finish the jobs they run, then end.
        old, self._executor = self._executor, None
        if old is not None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                self.concurrency, thread_name_prefix="celeriac-job"
            )
            old.shutdown(wait=False)

    def _start_job(self, job: Job, future: asyncio.Future[Outcome]) -> None:
        assert self._executor is not None
        if job.time_limit or job.soft_time_limit:
            self._warn_once(
                "limits",
                "The threads pool cannot enforce time limits (time_limit, soft_time_limit); "
                "use the prefork or asyncio pool for them",
            )
        done = self._executor.submit(run_safely, self.runner, job)
        done.add_done_callback(lambda thread_done: self._hand_back(future, thread_done))

    def _hand_back(
        self, future: asyncio.Future[Outcome], thread_done: concurrent.futures.Future[Outcome]
    ) -> None:
        """In the job's thread: pass the outcome to the loop thread."""
        if thread_done.cancelled():
            return
        exc = thread_done.exception()
        outcome = thread_done.result() if exc is None else failure(exc)
        assert self._loop is not None
        with self._finished_lock:
            self._finished.append((future, outcome))
            if self._told:
                return  # the loop will take this one with the others
            self._told = True
        # The loop may have closed after a cold stop (RuntimeError); nobody is waiting then.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._settle_finished)

    def _settle_finished(self) -> None:
        with self._finished_lock:
            finished, self._finished = self._finished, []
            self._told = False
        for future, outcome in finished:
            if future in self._running:  # else a cold stop already resolved it
                self._finish(future, outcome)

    async def _close(self) -> None:
        # Every job has finished, so the threads are idle and join at once.
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def _kill(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
