"""The contract every execution pool fills in, and the behaviour they share.

A pool takes ``Job`` values from the worker's event loop and hands back an
``asyncio.Future`` that resolves, on the loop thread, with the job's ``Outcome``. The base
class owns the bookkeeping every pool needs: a FIFO of jobs waiting for a slot, the jobs
running now, the warm stop (``join``) and the cold stop (``terminate``). A pool fills in how
a job is started (``_start_job``) and how its resources are released (``_close``,
``_kill``).

Futures are never cancelled by a pool: a cold stop resolves every unfinished job with a
``worker_lost`` FAILURE outcome (a job that never started says so in its message), so
awaiting a future cannot raise ``CancelledError`` in the worker's own tasks. A caller may
cancel a future itself while its job is still queued: the job is then dropped unstarted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, ClassVar

from celeriac.exceptions import ImproperlyConfigured, SoftTimeLimitExceeded
from celeriac.worker.job import ExceptionInfo, Job, Outcome

Runner = Callable[[Job], Outcome]
"""Runs a job to completion; never raises (the tracer turns every exception into an Outcome)."""

AsyncRunner = Callable[[Job], Awaitable[Outcome]]
"""The asyncio pool's runner: ``async def`` tasks run on the loop, sync ones in a thread."""

logger = logging.getLogger(__name__)


class Pool(ABC):
    """Runs jobs at most ``concurrency`` at a time; jobs beyond that wait in a FIFO.

    Args:
        runner: Runs one job to completion and returns its outcome.
        concurrency: How many jobs may run at once (at least 1).
        async_runner: The coroutine runner (required by the asyncio pool, unused elsewhere).
        max_tasks_per_child: Replace a child process after this many jobs (prefork only).
        max_memory_per_child: Replace a child process whose resident memory passes this
            many KiB after a job (prefork only; Celery's unit).
        on_process_start: Called once in each new child process (prefork only; the
            worker sends ``worker_process_init`` from it).
    """

    max_concurrency: ClassVar[int | None] = None
    """A ceiling on ``concurrency`` for pools that cannot run jobs side by side."""

    def __init__(
        self,
        runner: Runner,
        concurrency: int,
        *,
        async_runner: AsyncRunner | None = None,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        on_process_start: Callable[[], None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ImproperlyConfigured(f"concurrency must be at least 1, not {concurrency}")
        self.runner = runner
        ceiling = self.max_concurrency
        self.concurrency = concurrency if ceiling is None else min(concurrency, ceiling)
        self.async_runner = async_runner
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child
        self.on_process_start = on_process_start
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: deque[tuple[Job, asyncio.Future[Outcome]]] = deque()
        self._running: dict[asyncio.Future[Outcome], Job] = {}
        self._started: dict[asyncio.Future[Outcome], float] = {}  # wall-clock start times
        self._on_start: dict[asyncio.Future[Outcome], Callable[[], object]] = {}
        self._closing = False
        self._idle: asyncio.Event | None = None
        self._warned: set[str] = set()
        self._setup()

    # -- what a pool fills in -------------------------------------------------------------

    def _setup(self) -> None:
        """Check the arguments (failing early) and create the pool's own state.

        Raises:
            ImproperlyConfigured: An argument is out of range or missing.
        """
        for name in ("max_tasks_per_child", "max_memory_per_child"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ImproperlyConfigured(f"{name} must be at least 1 or None, not {value}")

    async def _open(self) -> None:  # noqa: B027 - most pools need no set-up
        """Acquire resources (threads, processes) before the first job."""

    @abstractmethod
    def _start_job(self, job: Job, future: asyncio.Future[Outcome]) -> None:
        """Start ``job`` now; call ``_finish(future, outcome)`` on the loop when it ends."""

    async def _close(self) -> None:  # noqa: B027 - most pools hold nothing
        """Release resources once every job has finished (warm stop)."""

    async def _kill(self) -> None:  # noqa: B027 - most pools hold nothing
        """Stop running jobs as far as the pool can and release resources (cold stop)."""

    def _idle_slots(self) -> int:
        """How many jobs could start this instant, ignoring the queue."""
        return self.concurrency - len(self._running)

    def _resized(self) -> None:  # noqa: B027 - most pools need only the new concurrency
        """Adapt the pool's resources after ``concurrency`` changed (``resize``)."""

    # -- the contract -----------------------------------------------------------------------

    async def start(self) -> None:
        """Prepare the pool; called once, on the worker's running loop."""
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        self._idle.set()
        await self._open()

    def submit(
        self, job: Job, on_start: Callable[[], object] | None = None
    ) -> asyncio.Future[Outcome]:
        """Run ``job`` as soon as a slot is free; never blocks (call on the loop thread).

        ``on_start`` is called (on the loop) just before the job starts; never for a job
        that is dropped or terminated while it waits for a slot.

        Raises:
            RuntimeError: The pool was not started, or is stopping.
        """
        if self._loop is None or self._idle is None:
            raise RuntimeError("start() the pool before submitting jobs")
        if self._closing:
            raise RuntimeError("the pool is stopping and takes no new jobs")
        future: asyncio.Future[Outcome] = self._loop.create_future()
        if on_start is not None:
            self._on_start[future] = on_start
        self._waiting.append((job, future))
        self._idle.clear()
        self._dispatch()
        return future

    @property
    def free_slots(self) -> int:
        """How many more jobs would start right now (0 while any job is queued)."""
        return max(0, self._idle_slots() - len(self._waiting))

    @property
    def active(self) -> int:
        """Jobs running now (queued jobs are not counted)."""
        return len(self._running)

    @property
    def queued(self) -> int:
        """Jobs submitted but waiting for a slot."""
        return len(self._waiting)

    async def join(self) -> None:
        """Warm stop: take no new jobs, wait for every submitted one, release resources."""
        self._closing = True
        if self._idle is not None:
            await self._idle.wait()
        await self._close()

    async def terminate(self) -> None:
        """Cold stop: stop now; every unfinished future resolves with a worker_lost outcome."""
        self._closing = True
        waiting, self._waiting = self._waiting, deque()
        self._on_start.clear()
        for job, future in waiting:
            message = f"Pool terminated before the job started. Job: {job.id}."
            self._resolve(future, worker_lost(message))
        await self._kill()
        for future, job in list(self._running.items()):
            self._finish(future, worker_lost(f"Worker terminated. Job: {job.id}."))
        if self._idle is not None:
            self._idle.set()

    # -- what remote control asks of a pool (inspect, revoke, pool_grow/shrink) -----------

    def running(self) -> list[tuple[Job, float]]:
        """The jobs running now, each with when it started (``time.time()``)."""
        return [(job, self._started.get(future, 0.0)) for future, job in self._running.items()]

    def job_pid(self, job_id: str) -> int | None:
        """The process running job ``job_id`` (this one, except in prefork); None if none."""
        running = any(job.id == job_id for job in self._running.values())
        return os.getpid() if running else None

    def discard(self, job_id: str, outcome: Outcome) -> bool:
        """Drop job ``job_id`` if it waits for a slot; its future resolves with ``outcome``."""
        for item in self._waiting:
            job, future = item
            if job.id == job_id and not future.done():
                self._waiting.remove(item)
                self._resolve(future, outcome)
                self._check_idle()
                return True
        return False

    def terminate_job(self, job_id: str, signum: int) -> bool:
        """Stop running job ``job_id`` with ``signum``; False when this pool cannot.

        Only processes can be stopped from outside: the prefork pool signals the child
        running the job. A thread or a task sharing the worker's process cannot be.
        """
        return False

    def resize(self, concurrency: int) -> int:
        """Run up to ``concurrency`` jobs at once from now on (at least 1); returns it.

        Running jobs are never stopped: a smaller pool takes effect as they finish.

        Raises:
            ImproperlyConfigured: This pool cannot run more than ``max_concurrency``.
        """
        ceiling = self.max_concurrency
        if ceiling is not None and concurrency > ceiling:
            raise ImproperlyConfigured(
                f"The {type(self).__name__} runs at most {ceiling} job(s) at once"
            )
        self.concurrency = max(1, concurrency)
        self._resized()
        self._dispatch()
        return self.concurrency

    def info(self) -> dict[str, Any]:
        """The pool as ``inspect stats`` shows it (Celery's keys)."""
        return {
            "implementation": f"{type(self).__module__}:{type(self).__name__}",
            "max-concurrency": self.concurrency,
            "processes": [os.getpid()],
            "max-tasks-per-child": self.max_tasks_per_child or "N/A",
        }

    # -- shared machinery -------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Start queued jobs while slots are free (skipping futures the caller cancelled)."""
        while self._waiting and self._idle_slots() > 0:
            job, future = self._waiting.popleft()
            on_start = self._on_start.pop(future, None)
            if future.done():
                continue
            self._running[future] = job
            self._started[future] = time.time()
            if on_start is not None:
                on_start()
            self._start_job(job, future)
        self._check_idle()

    def _finish(self, future: asyncio.Future[Outcome], outcome: Outcome) -> None:
        """Record that a job ended: free its slot, resolve its future, start the next."""
        self._running.pop(future, None)
        self._started.pop(future, None)
        self._resolve(future, outcome)
        self._dispatch()

    def _check_idle(self) -> None:
        if self._idle is not None and not self._running and not self._waiting:
            self._idle.set()

    @staticmethod
    def _resolve(future: asyncio.Future[Outcome], outcome: Outcome) -> None:
        if not future.done():
            future.set_result(outcome)

    def _warn_once(self, key: str, message: str) -> None:
        """Log ``message`` the first time ``key`` comes up in this pool."""
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)


# -- outcomes the pools make themselves ----------------------------------------------------

_PLAIN = (str, int, float, bool, type(None))


def failure(exc: BaseException) -> Outcome:
    """A FAILURE outcome for an exception raised where the tracer could not catch it."""
    info = ExceptionInfo(
        type=type(exc).__name__,
        module=type(exc).__module__,
        args=tuple(a if isinstance(a, _PLAIN) else repr(a) for a in exc.args),
        traceback="".join(traceback.format_exception(exc)),
        exception=exc,
    )
    return Outcome(state="FAILURE", error=info)


def celeriac_failure(name: str, *args: object, worker_lost: bool = False) -> Outcome:
    """A FAILURE outcome naming an exception of ``celeriac.exceptions`` by class name."""
    info = ExceptionInfo(type=name, module="celeriac.exceptions", args=args, traceback="")
    return Outcome(state="FAILURE", error=info, worker_lost=worker_lost)


def worker_lost(message: str) -> Outcome:
    """The outcome of a job whose process died (or was stopped) before it finished."""
    return celeriac_failure("WorkerLostError", message, worker_lost=True)


def run_safely(runner: Runner, job: Job) -> Outcome:
    """Call ``runner``; an exception it should not have let out becomes a FAILURE outcome."""
    try:
        return runner(job)
    except Exception as exc:
        logger.exception("The runner raised on job %s (it should return an Outcome)", job.id)
        return failure(exc)


# -- the soft time limit, for code on a process's main thread (solo, prefork child) --------


def _raise_soft_limit(signum: int, frame: FrameType | None) -> None:
    raise SoftTimeLimitExceeded()


@contextmanager
def soft_time_limit(seconds: float | None) -> Iterator[None]:
    """Raise ``SoftTimeLimitExceeded`` in the block if it runs longer than ``seconds``.

    Uses ``ITIMER_REAL`` and SIGALRM, so it works only on the main thread (elsewhere, and
    with no limit, the block runs unlimited). The timer is one-shot. On exit the previous
    SIGALRM handler comes back, and so does a timer someone else had armed (such as a
    test runner's timeout), with the time it had left.
    """
    if not seconds or seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return
    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, _raise_soft_limit)
    other_delay, other_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        # None means a handler not set from Python; the default is the closest we can do.
        signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)
        if other_delay > 0:
            left = other_delay - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001), other_interval)


def run_with_soft_limit(runner: Runner, job: Job) -> Outcome:
    """``run_safely`` under the job's soft time limit.

    The alarm may fire after the runner returned but before the timer is disarmed; the
    job did pass its soft limit then, so it is reported as a SoftTimeLimitExceeded failure.
    """
    if not job.soft_time_limit:
        return run_safely(runner, job)  # (the usual case: no timer to arm)
    try:
        with soft_time_limit(job.soft_time_limit):
            return run_safely(runner, job)
    except SoftTimeLimitExceeded as exc:
        return failure(exc)
