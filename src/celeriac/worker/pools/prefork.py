"""The prefork pool: ``concurrency`` forked child processes, one job per child at a time.

Children are made with ``os.fork`` (they inherit the app and its tasks, nothing is
imported again) when the pool starts, before the worker starts any thread. Jobs and
outcomes travel pickled over one socket per child (see ``prefork_child``). The parent never
blocks: each child's socket and its pidfd (readable once the child has exited; a pipe the
child holds open where pidfds are missing) are watched with ``loop.add_reader``; jobs wait
in a FIFO while every child is busy.

A child that dies is reaped at once and replaced. A job it was running resolves with a
``WorkerLostError`` outcome (``worker_lost=True``) whose message reads like Celery's:
``"Worker exited prematurely: signal 9 (SIGKILL) Job: <task id>."``.

Time limits:
    soft: the child arms ``ITIMER_REAL``; SIGALRM raises ``SoftTimeLimitExceeded`` inside
        the job, which may catch it to clean up.
    hard: the parent arms a loop timer when it hands the job to a child and SIGKILLs the
        child when it passes; the job's outcome is a ``TimeLimitExceeded`` FAILURE and the
        child is replaced.

Children retire (exit cleanly after sending their outcome, and are replaced) after
``max_tasks_per_child`` jobs, or when their resident memory passes ``max_memory_per_child``
KiB after a job.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import pickle
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from celeriac.exceptions import WorkerLostError
from celeriac.worker.job import Job, Outcome
from celeriac.worker.pools.base import Pool, celeriac_failure, failure, worker_lost
from celeriac.worker.pools.prefork_child import (
    HEADER,
    OUTCOME,
    READY,
    ChildOptions,
    child_main,
    dumps,
)

STOP_TIMEOUT = 10.0
"""Seconds a warm stop waits for idle children to exit before killing them."""

KILL_GRACE = 2.0
"""Seconds a cold stop waits after SIGTERM before SIGKILL."""

RESPAWN_DELAY = 1.0
"""Seconds before replacing a child that died during start-up (so a broken
``worker_process_init`` handler does not become a fork loop)."""

logger = logging.getLogger(__name__)


class _Channel:
    """Non-blocking framed messages over a child's socket, driven by the loop."""

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        on_frame: Callable[[bytes], None],
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._loop = loop
        self._on_frame = on_frame
        self._inbox = bytearray()
        self._outbox = bytearray()
        loop.add_reader(sock.fileno(), self.pump)

    def send(self, frame: bytes) -> None:
        """Queue ``frame``; whatever the socket does not take now is written when it can."""
        if self._outbox:
            self._outbox += frame
            return
        try:
            sent = self.sock.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError:  # the child is gone; its pidfd reports that
            return
        if sent < len(frame):
            self._outbox += frame[sent:]
            self._loop.add_writer(self.sock.fileno(), self._flush)

    def _flush(self) -> None:
        try:
            sent = self.sock.send(self._outbox)
        except BlockingIOError:
            return
        except OSError:
            sent = len(self._outbox)
        del self._outbox[:sent]
        if not self._outbox:
            self._loop.remove_writer(self.sock.fileno())

    def pump(self) -> None:
        """Read what has arrived and hand over every complete frame."""
        while True:
            try:
                chunk = self.sock.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                chunk = b""
            if not chunk:  # closed: stop watching, or the loop would spin on EOF
                self._loop.remove_reader(self.sock.fileno())
                break
            self._inbox += chunk
        while len(self._inbox) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._inbox)
            if len(self._inbox) < HEADER.size + size:
                break
            frame = bytes(self._inbox[HEADER.size : HEADER.size + size])
            del self._inbox[: HEADER.size + size]
            self._on_frame(frame)

    def close(self) -> None:
        self._loop.remove_reader(self.sock.fileno())
        self._loop.remove_writer(self.sock.fileno())
        self.sock.close()


@dataclass(eq=False, slots=True)
class _Child:
    """The parent's view of one child process."""

    pid: int
    sentinel: int
    channel: _Channel | None = None
    ready: bool = False
    retiring: bool = False
    job: Job | None = None
    future: asyncio.Future[Outcome] | None = None
    hard_timer: asyncio.TimerHandle | None = None
    timed_out: bool = False

    @property
    def idle(self) -> bool:
        return self.ready and not self.retiring and self.job is None


class PreforkPool(Pool):
    """Runs each job in one of ``concurrency`` forked child processes."""

    def _setup(self) -> None:
        super()._setup()
        self._children: dict[int, _Child] = {}
        self._respawns: set[asyncio.TimerHandle] = set()
        self._startup: asyncio.Future[None] | None = None
        self._gone: asyncio.Event | None = None
        # Unlike _closing (no new submissions), this stops replacing children: a warm stop
        # still needs replacements while queued jobs drain.
        self._stopping = False

    @property
    def child_pids(self) -> list[int]:
        """The pids of the live child processes."""
        return list(self._children)

    def _idle_slots(self) -> int:
        return sum(child.idle for child in self._children.values())

    def _live(self) -> int:
        """Children that are not on their way out."""
        return sum(not child.retiring for child in self._children.values())

    # -- remote control ---------------------------------------------------------------------

    def _child_running(self, job_id: str) -> _Child | None:
        return next((c for c in self._children.values() if c.job and c.job.id == job_id), None)

    def job_pid(self, job_id: str) -> int | None:
        child = self._child_running(job_id)
        return child.pid if child is not None else None

    def terminate_job(self, job_id: str, signum: int) -> bool:
        child = self._child_running(job_id)
        if child is None:
            return False
        logger.info("Terminating job %s: signal %d to pool child %d", job_id, signum, child.pid)
        # Unreaped, the child cannot vanish (or its pid be reused) under us.
        os.kill(child.pid, signum)
        return True

    def _resized(self) -> None:
        if self._stopping:
            return
        while self._live() < self.concurrency:
            self._spawn()
        for child in list(self._children.values()):
            if self._live() <= self.concurrency:
                break
            if child.idle:
                self._retire(child)
        # Busy children beyond the new size retire when their job ends (``_on_frame``).

    def _retire(self, child: _Child) -> None:
        child.retiring = True
        if child.channel is not None:
            child.channel.send(dumps(None))

    def info(self) -> dict[str, Any]:
        return {**super().info(), "processes": self.child_pids}

    # -- life cycle -------------------------------------------------------------------------

    async def _open(self) -> None:
        assert self._loop is not None
        self._gone = asyncio.Event()
        self._startup = self._loop.create_future()
        for _ in range(self.concurrency):
            self._spawn()
        try:
            await self._startup
        except WorkerLostError:
            await self._kill()
            raise

    async def _close(self) -> None:
        self._stopping = True
        self._cancel_respawns()
        for child in self._children.values():
            if child.channel is not None:
                child.channel.send(dumps(None))
        if not await self._wait_gone(STOP_TIMEOUT):
            logger.warning("Pool children did not stop within %ss; killing them", STOP_TIMEOUT)
            await self._kill()

    async def _kill(self) -> None:
        self._stopping = True
        self._cancel_respawns()
        self._signal_all(signal.SIGTERM)
        if not await self._wait_gone(KILL_GRACE):
            self._signal_all(signal.SIGKILL)
            await self._wait_gone(None)

    def _signal_all(self, signum: int) -> None:
        for pid in self._children:
            # Unreaped children cannot vanish (or their pid be reused) under us.
            os.kill(pid, signum)

    async def _wait_gone(self, timeout: float | None) -> bool:
        if not self._children:
            return True
        assert self._gone is not None
        try:
            await asyncio.wait_for(self._gone.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _cancel_respawns(self) -> None:
        for handle in self._respawns:
            handle.cancel()
        self._respawns.clear()

    # -- children ---------------------------------------------------------------------------

    def _spawn(self) -> None:
        assert self._loop is not None and self._gone is not None
        options = ChildOptions(
            self.runner, self.on_process_start, self.max_tasks_per_child, self.max_memory_per_child
        )
        ours, theirs = socket.socketpair()
        # Without pidfds, the child holds a pipe's write end: it closes when the child exits.
        watch_end, held_end = (-1, -1) if pidfd_supported() else os.pipe()
        # Hold back Ctrl-C until the child has chosen to ignore it (reset_signals unblocks).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child; coverage does not follow it
            self._become_child(theirs, ours, watch_end, options)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        theirs.close()
        if held_end >= 0:
            os.close(held_end)
        child = _Child(pid, os.pidfd_open(pid) if watch_end < 0 else watch_end)
        child.channel = _Channel(ours, self._loop, lambda frame: self._on_frame(child, frame))
        self._children[pid] = child
        self._gone.clear()
        self._loop.add_reader(child.sentinel, self._on_exit, child)

    def _become_child(
        self, conn: socket.socket, ours: socket.socket, watch_end: int, options: ChildOptions
    ) -> NoReturn:  # pragma: no cover - runs in the child
        """In a new child: drop the parent's ends of every channel, then serve jobs.

        A sibling holding a socket or pipe end would keep it open after its own child died.
        Only file descriptors are closed (sockets through their objects, so nothing closes
        them twice); the parent's loop is never touched here.
        """
        try:
            sockets = [ours, *(s.channel.sock for s in self._children.values() if s.channel)]
            for sock in sockets:
                sock.close()
            for fd in [watch_end, *(sibling.sentinel for sibling in self._children.values())]:
                if fd >= 0:
                    os.close(fd)
            child_main(conn, options)
        finally:
            os._exit(1)

    def _on_frame(self, child: _Child, frame: bytes) -> None:
        try:
            message = pickle.loads(frame)
        except Exception as exc:
            logger.error("Pool child %d sent a message that does not unpickle: %r", child.pid, exc)
            message = (OUTCOME, failure(exc), False)
        if message[0] == READY:
            child.ready = True
            self._check_started()
            self._dispatch()
        elif message[0] == OUTCOME:
            child.retiring = message[2]
            if not child.retiring and self._live() > self.concurrency:
                self._retire(child)  # the pool was shrunk while this child was busy
            self._job_ended(child, message[1])

    def _check_started(self) -> None:
        starting = self._startup is not None and not self._startup.done()
        if starting and all(child.ready for child in self._children.values()):
            assert self._startup is not None
            self._startup.set_result(None)

    def _job_ended(self, child: _Child, outcome: Outcome) -> None:
        future, child.job, child.future = child.future, None, None
        if child.hard_timer is not None:
            child.hard_timer.cancel()
            child.hard_timer = None
        if future is not None:
            self._finish(future, outcome)

    def _on_exit(self, child: _Child) -> None:
        """The child has exited: take its last words, reap it, settle its job, replace it."""
        assert self._loop is not None and self._gone is not None
        # Forget it first, so an outcome read below cannot hand it another job.
        del self._children[child.pid]
        if child.channel is not None:
            child.channel.pump()  # an outcome sent just before exiting
            child.channel.close()
        self._loop.remove_reader(child.sentinel)
        os.close(child.sentinel)
        how = reap(child.pid)
        if child.job is not None:
            job = child.job
            if child.timed_out:
                outcome = celeriac_failure("TimeLimitExceeded", job.time_limit)
            else:
                logger.error("Pool child %d died running job %s: %s", child.pid, job.id, how)
                outcome = worker_lost(f"Worker exited prematurely: {how} Job: {job.id}.")
            self._job_ended(child, outcome)
        if not child.ready:
            self._on_early_exit(child, how)
        elif not self._stopping and self._live() < self.concurrency:
            self._spawn()
        if not self._children:
            self._gone.set()
        self._dispatch()

    def _on_early_exit(self, child: _Child, how: str) -> None:
        """A child died before it was ready: fail the start, or retry after a pause."""
        assert self._loop is not None
        message = f"Pool child {child.pid} exited before it was ready: {how}"
        if self._startup is not None and not self._startup.done():
            self._startup.set_exception(WorkerLostError(message))
        elif not self._stopping:
            logger.error("%s; replacing it in %ss", message, RESPAWN_DELAY)
            handle = self._loop.call_later(RESPAWN_DELAY, self._respawn)
            self._respawns.add(handle)

    def _respawn(self) -> None:
        self._respawns = {handle for handle in self._respawns if not handle.cancelled()}
        if not self._stopping:
            self._spawn()

    # -- jobs -------------------------------------------------------------------------------

    def _start_job(self, job: Job, future: asyncio.Future[Outcome]) -> None:
        assert self._loop is not None
        child = next(child for child in self._children.values() if child.idle)
        try:
            frame = dumps(job)
        except Exception as exc:
            # Settle it from a callback: we are inside _dispatch's loop here.
            self._loop.call_soon(self._finish, future, failure(exc))
            return
        child.job, child.future, child.timed_out = job, future, False
        assert child.channel is not None
        child.channel.send(frame)
        if job.time_limit:
            child.hard_timer = self._loop.call_later(job.time_limit, self._hard_limit, child)

    def _hard_limit(self, child: _Child) -> None:
        child.hard_timer = None
        if child.job is not None:
            logger.error(
                "Hard time limit (%ss) exceeded for %s[%s]; killing child %d",
                child.job.time_limit,
                child.job.name,
                child.job.id,
                child.pid,
            )
            child.timed_out = True
            os.kill(child.pid, signal.SIGKILL)


@functools.cache
def pidfd_supported() -> bool:
    """Whether this OS gives pidfds (Linux 5.3+), the most exact way to watch a child."""
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False
    return True


def reap(pid: int) -> str:
    """Collect the exited child ``pid`` (returns at once) and say how it ended."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:  # someone else's waitpid(-1) got there first
        return "exit status unknown (reaped elsewhere)"
    return describe_exit(status)


def describe_exit(status: int) -> str:
    """``"signal 9 (SIGKILL)"`` or ``"exitcode 1"``, as Celery words it."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown"
        return f"signal {-code} ({name})"
    return f"exitcode {code}"
