"""The child side of the prefork pool, and the framing both sides speak.

A child is forked from the worker, so it already has the app and its tasks. It talks to
the parent over one socket: each message is a pickle behind an 8-byte length. The parent
sends a ``Job`` (or ``None``: stop); the child answers ``(READY,)`` once after start-up and
``(OUTCOME, outcome, retiring)`` after each job, ``retiring`` meaning "I exit now and want
replacing" (``max_tasks_per_child`` or ``max_memory_per_child`` was reached).

A child never returns into the code it was forked from: it leaves through ``os._exit``, so
the parent's atexit handlers, finalizers and buffered files are not run twice. What the
child itself opened it closes first: the broker connections and result backends of every
app (made in the child: at start it makes each app forget those it inherited, which are the
parent's). Closing flushes them; without it a publish a task made just before its child
exits (a chain's next step, a link callback, a task it sent) could be lost, since an AMQP
publish without confirms returns once handed to the connection's network thread. Before
that the child sends ``worker_process_shutdown`` (``pid``, ``exitcode``), as Celery does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import resource
import signal
import socket
import struct
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, NoReturn

from celeriac import signals
from celeriac.app.state import all_apps
from celeriac.worker.job import ExceptionInfo, Job, Outcome
from celeriac.worker.pools.base import Runner, failure, run_with_soft_limit

HEADER = struct.Struct("!Q")
READY = "ready"
OUTCOME = "outcome"

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChildOptions:
    """What a child needs to know, fixed when it is forked."""

    runner: Runner
    on_process_start: Callable[[], None] | None
    max_tasks: int | None
    max_memory_kib: int | None


def dumps(message: object) -> bytes:
    """A message as one frame (length header and pickle)."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(payload)) + payload


def child_main(conn: socket.socket, options: ChildOptions) -> NoReturn:
    """Serve jobs from ``conn`` until told to stop; runs in the forked child, never returns."""
    code = 0
    try:
        reset_signals()
        forget_inherited_clients()
        if options.on_process_start is not None:
            options.on_process_start()
        conn.sendall(dumps((READY,)))
        serve(conn, options)
    except BaseException:
        code = 1
        logger.exception("Pool child %d failed", os.getpid())
    finally:
        release_clients(code)
        for stream in (sys.stdout, sys.stderr):
            # A closed or broken stream must not keep the child from exiting.
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def forget_inherited_clients() -> None:
    """Make every app drop the connections and backends it inherited (the parent's).

    The worker does it for its own app too (``worker_process_init`` handlers may then open
    new ones); other apps in the process get the same, so all a child closes is its own.
    """
    for app in all_apps():
        app.after_fork()


def release_clients(exitcode: int) -> None:
    """Send ``worker_process_shutdown``, then close what the apps opened in this child.

    Closing a connection flushes what was handed to it: publishes still on their way to
    the broker go out before the process ends. A failure is logged, never raised: the
    child is leaving either way.
    """
    pid = os.getpid()
    try:
        signals.worker_process_shutdown.send(sender=None, pid=pid, exitcode=exitcode)
    except BaseException:  # a receiver's SystemExit or KeyboardInterrupt included
        logger.exception("worker_process_shutdown failed in pool child %d", pid)
    for app in all_apps():
        try:
            app.close()
        except BaseException:
            logger.exception("Pool child %d could not close the connections of %r", pid, app)


def reset_signals() -> None:
    """Undo the parent's signal set-up: Ctrl-C is for the parent, SIGTERM just ends us.

    The terminal sends SIGINT to the whole process group; the parent decides what a
    Ctrl-C means and stops the children itself. The parent's asyncio loop may have pointed
    the signal wakeup fd at its self-pipe, which the child shares: detach from it, or the
    child's signals would wake the parent's loop.
    """
    signal.set_wakeup_fd(-1)
    for signum in signal.valid_signals():
        try:
            if callable(signal.getsignal(signum)):
                signal.signal(signum, signal.SIG_DFL)
        except (OSError, ValueError):  # signals the OS does not let us handle
            continue
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # The parent blocked SIGINT around fork so none could land before the line above.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def serve(conn: socket.socket, options: ChildOptions) -> None:
    """Run jobs one at a time until a stop message, the parent going away, or retirement."""
    done = 0
    while True:
        message = receive(conn)
        if message is None:
            return
        if isinstance(message, Job):
            outcome = run_with_soft_limit(options.runner, message)
            job_id = message.id
        else:  # the job did not unpickle here (receive gave its error), or is no Job at all
            error = message if isinstance(message, Exception) else TypeError(repr(message))
            outcome, job_id = failure(error), "?"
        done += 1
        retiring = should_retire(done, options)
        conn.sendall(encode_outcome(job_id, outcome, retiring))
        if retiring:
            return


def receive(conn: socket.socket) -> Any:
    """The next message from the parent; None for a stop message or a closed socket.

    A job that cannot be unpickled comes back as its exception, so the child reports it
    as the job's outcome instead of dying.
    """
    header = _read_exactly(conn, HEADER.size)
    if header is None:
        return None
    payload = _read_exactly(conn, HEADER.unpack(header)[0])
    if payload is None:
        return None
    try:
        return pickle.loads(payload)
    except Exception as exc:
        return exc


def _read_exactly(conn: socket.socket, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = conn.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


def should_retire(done: int, options: ChildOptions) -> bool:
    """Whether this child has run its share of jobs or grown past its memory limit."""
    if options.max_tasks is not None and done >= options.max_tasks:
        logger.info("Pool child %d retires after %d tasks", os.getpid(), done)
        return True
    if options.max_memory_kib is not None:
        used = resident_kib()
        if used > options.max_memory_kib:
            logger.warning(
                "Pool child %d retires: %d KiB resident, over max_memory_per_child (%d KiB)",
                os.getpid(),
                used,
                options.max_memory_kib,
            )
            return True
    return False


def resident_kib() -> int:
    """This process's resident memory now, in KiB (its peak where /proc is missing)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def encode_outcome(job_id: str, outcome: Outcome, retiring: bool) -> bytes:
    """The outcome frame; an outcome that will not pickle is replaced by one that says why.

    First the exception object is dropped (the tracer attaches it when it can, but many
    exceptions do not pickle), keeping its type, args and traceback; if the result itself
    does not pickle, the job is reported as failed with the pickling error.
    """
    try:
        return dumps((OUTCOME, outcome, retiring))
    except Exception as exc:
        error = exc
    if outcome.error is not None and outcome.error.exception is not None:
        bare = replace(outcome, error=replace(outcome.error, exception=None))
        try:
            return dumps((OUTCOME, bare, retiring))
        except Exception as exc:
            error = exc
    info = ExceptionInfo(
        type=type(error).__name__,
        module=type(error).__module__,
        args=(f"The outcome of job {job_id} could not be pickled: {error}",),
        traceback="".join(traceback.format_exception(error)),
    )
    return dumps((OUTCOME, Outcome(state="FAILURE", error=info, runtime=outcome.runtime), retiring))
