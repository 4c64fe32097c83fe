"""What ``celeriac events`` does: dump raw events, or draw the cluster live in a terminal.

``dump`` prints each event as one JSON object per line (for ``grep``, ``jq`` and scripts).
``watch`` feeds a ``State`` and redraws ``render(state)`` in place every ``frequency``
seconds: workers and their heartbeats, task rates, counts by state, the latest tasks.
Plain text and ANSI "clear screen", no curses.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import TYPE_CHECKING, TextIO

from celeriac.events.state import State, TaskState, WorkerState

if TYPE_CHECKING:
    from celeriac.app.base import Celery

#: Moves the cursor home and clears the screen, so each frame replaces the last.
CLEAR_SCREEN = "\x1b[H\x1b[2J"
#: Task event types shown in the rates line, in this order.
RATE_TYPES = (
    "task-received",
    "task-started",
    "task-succeeded",
    "task-failed",
    "task-retried",
    "task-revoked",
    "task-rejected",
)


def dump(app: Celery, out: TextIO, count: int | None = None, timeout: float | None = None) -> int:
    """Print events as they arrive, one JSON object per line; returns how many.

    Stops after ``count`` events or ``timeout`` seconds (None: runs until interrupted).
    """
    printed = 0
    with app.connection() as conn, app.events.Receiver(conn) as receiver:
        for event in receiver.itercapture(limit=count, timeout=timeout):
            out.write(json.dumps(event.encode(), default=repr, sort_keys=False) + "\n")
            out.flush()
            printed += 1
    return printed


def watch(
    app: Celery,
    out: TextIO,
    frequency: float = 1.0,
    timeout: float | None = None,
    tasks: int = 15,
    clear: bool = True,
) -> State:
    """Draw the cluster every ``frequency`` seconds until ``timeout`` (None: interrupted).

    Returns the state it built (handy for tests and embedding).
    """
    state = app.events.State()
    deadline = None if timeout is None else time.monotonic() + timeout
    handlers = {"*": state.event}
    with app.connection() as conn, app.events.Receiver(conn, handlers=handlers) as receiver:
        while True:
            wait = frequency
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - time.monotonic()))
            receiver.capture(timeout=wait)
            out.write((CLEAR_SCREEN if clear else "") + render(state, tasks=tasks) + "\n")
            out.flush()
            if deadline is not None and time.monotonic() >= deadline:
                return state


def render(state: State, now: float | None = None, tasks: int = 15) -> str:
    """One frame of the live view, as text."""
    now = time.time() if now is None else now
    alive = state.alive_workers(now)
    lines = [
        f"celeriac events  {_clock(now)}  workers online: {len(alive)}  "
        f"events: {state.event_count}  tasks: {state.task_count}",
        "",
        "WORKERS",
    ]
    workers = sorted(state.workers.values(), key=lambda w: w.hostname)
    lines += [_worker_line(w, now) for w in workers] or ["  (none heard from yet)"]
    rates = state.task_rates(now)
    lines += ["", f"TASKS PER SECOND (last {state.rate_window:g}s)"]
    shown = [f"{kind[5:]} {rates[kind]:.1f}" for kind in RATE_TYPES if kind in rates]
    lines.append("  " + ("  ".join(shown) if shown else "(no task events)"))
    counts = state.state_counts()
    lines += ["", "TASK STATES"]
    lines.append("  " + ("  ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"))
    recent = state.tasks_by_time(tasks)
    lines += ["", "RECENT TASKS"]
    if recent:
        lines.append(f"  {'TIME':<8}  {'STATE':<8}  {'NAME':<28}  {'UUID':<36}  WORKER / INFO")
        lines += [_task_line(t) for t in recent]
    else:
        lines.append("  (none yet: start workers with -E to send task events)")
    return "\n".join(lines)


def _worker_line(worker: WorkerState, now: float) -> str:
    last = worker.heartbeats[-1] if worker.heartbeats else None
    seen = f"{now - last:.1f}s ago" if last is not None else "never"
    load = " ".join(f"{x:.2f}" for x in worker.loadavg) if worker.loadavg else "-"
    return (
        f"  {worker.hostname:<30}  {worker.status(now):<7}  active {_num(worker.active):>4}  "
        f"processed {_num(worker.processed):>7}  load {load:<14}  heartbeat {seen}"
    )


def _task_line(task: TaskState) -> str:
    when = _clock(task.timestamp) if task.timestamp else "-"
    info = task.worker or "-"
    if task.runtime is not None:
        info += f"  {task.runtime:.4f}s"
    if task.exception:
        info += f"  {task.exception}"
    name = (task.name or "?")[:28]
    return f"  {when:<8}  {task.state:<8}  {name:<28}  {task.uuid:<36}  {info}"


def _clock(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%H:%M:%S")


def _num(value: int | None) -> str:
    return "-" if value is None else str(value)
