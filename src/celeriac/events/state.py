"""The cluster as events describe it: workers, tasks, their timelines, counts and rates.

``State`` is fed events (``state.event(event)``, or as a receiver's ``"*"`` handler) and
answers what a monitor shows: which workers are alive, what each task did and when, how many
tasks are in each state, and how many succeed or fail per second. It is a library object:
``celeriac events`` draws it in a terminal, a dashboard can serve ``snapshot()`` as JSON.

Rules (Celery's):

- a worker is alive while its last heartbeat is younger than twice its heartbeat interval
  (``freq``); ``worker-offline`` makes it dead at once;
- a task's state follows its events, except that an event that logically comes before the
  current state (a ``task-received`` arriving after ``task-succeeded``) only fills in the
  fields of that event (name, args...) instead of moving the state back;
- memory is bounded: the least recently updated tasks and workers are forgotten first.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from celeriac import states
from celeriac.events.event import Event

#: A worker is considered gone when no heartbeat came for this many heartbeat intervals.
HEARTBEAT_EXPIRE_FACTOR = 2.0
#: Heartbeats kept per worker.
HEARTBEATS_KEPT = 4
#: Seconds over which rates are averaged.
RATE_WINDOW = 10.0

#: Task event type -> the state it moves the task to.
TASK_EVENT_TO_STATE: Mapping[str, str] = {
    "task-sent": states.PENDING,
    "task-received": states.RECEIVED,
    "task-started": states.STARTED,
    "task-succeeded": states.SUCCESS,
    "task-failed": states.FAILURE,
    "task-retried": states.RETRY,
    "task-revoked": states.REVOKED,
    "task-rejected": states.REJECTED,
}
#: Fields an out-of-order event may still fill in, by the state it stands for.
_MERGE_RULES: Mapping[str, frozenset[str]] = {
    states.RECEIVED: frozenset(
        {"name", "args", "kwargs", "parent_id", "root_id", "retries", "eta", "expires"}
    ),
}
_WORKER_FIELDS = frozenset(
    {"pid", "freq", "active", "processed", "loadavg", "sw_ident", "sw_ver", "sw_sys"}
)


@dataclass
class WorkerState:
    """What is known of one worker."""

    hostname: str
    pid: int | None = None
    freq: float = 60.0
    clock: int = 0
    active: int | None = None
    processed: int | None = None
    loadavg: list[float] | None = None
    sw_ident: str | None = None
    sw_ver: str | None = None
    sw_sys: str | None = None
    #: When the last heartbeats arrived here (local time, oldest first).
    heartbeats: list[float] = field(default_factory=list)

    def on_event(self, event: Event) -> None:
        """Take in a ``worker-*`` event; any other event from the worker counts as a
        heartbeat (it is evidently alive)."""
        if event.type.startswith("worker-"):
            for key in _WORKER_FIELDS.intersection(event.fields):
                value = event.fields[key]
                setattr(self, key, list(value) if key == "loadavg" and value else value)
            self.pid = event.pid or self.pid
        self.clock = max(self.clock, event.clock)
        if event.type == "worker-offline":
            self.heartbeats.clear()
            return
        self.heartbeats.append(event.local_received or time.time())
        self.heartbeats.sort()
        del self.heartbeats[:-HEARTBEATS_KEPT]

    @property
    def heartbeat_expires(self) -> float | None:
        """When this worker counts as gone unless it sends another heartbeat."""
        if not self.heartbeats:
            return None
        return self.heartbeats[-1] + self.freq * HEARTBEAT_EXPIRE_FACTOR

    def alive(self, now: float | None = None) -> bool:
        """True while heartbeats keep coming."""
        expires = self.heartbeat_expires
        return expires is not None and (time.time() if now is None else now) < expires

    def status(self, now: float | None = None) -> str:
        """``ONLINE`` or ``OFFLINE``."""
        return "ONLINE" if self.alive(now) else "OFFLINE"

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        """Plain data (for JSON)."""
        return {
            "hostname": self.hostname,
            "status": self.status(now),
            "pid": self.pid,
            "freq": self.freq,
            "active": self.active,
            "processed": self.processed,
            "loadavg": self.loadavg,
            "sw_ident": self.sw_ident,
            "sw_ver": self.sw_ver,
            "sw_sys": self.sw_sys,
            "last_heartbeat": self.heartbeats[-1] if self.heartbeats else None,
        }


@dataclass
class TaskState:
    """What is known of one task, and the events it went through."""

    uuid: str
    name: str | None = None
    state: str = states.PENDING
    worker: str | None = None
    args: str | None = None
    kwargs: str | None = None
    retries: int | None = None
    eta: str | None = None
    expires: str | None = None
    root_id: str | None = None
    parent_id: str | None = None
    result: str | None = None
    exception: str | None = None
    traceback: str | None = None
    runtime: float | None = None
    #: When the event that set the current state was sent.
    timestamp: float | None = None
    clock: int = 0
    #: When each event type happened (``"succeeded"`` -> timestamp).
    times: dict[str, float] = field(default_factory=dict)
    #: ``(event type, timestamp)`` of every event, in arrival order.
    timeline: list[tuple[str, float]] = field(default_factory=list)
    #: Further fields (``queue``, ``terminated``, ``signum``, ``requeue``...).
    extra: dict[str, Any] = field(default_factory=dict)

    def on_event(self, event: Event) -> None:
        """Take in a ``task-*`` event."""
        kind = event.type
        state = TASK_EVENT_TO_STATE.get(kind) or kind.partition("-")[2].upper()
        self.times[kind.partition("-")[2]] = event.timestamp
        self.timeline.append((kind, event.timestamp))
        if event.hostname and kind != "task-sent":
            self.worker = event.hostname
        self.clock = max(self.clock, event.clock)
        fields: Mapping[str, Any] = event.fields
        # An event that logically comes before the current state (RETRY excepted).
        retrying = states.RETRY in (state, self.state)
        behind = not retrying and states.precedence(state) > states.precedence(self.state)
        if behind:
            keep = _MERGE_RULES.get(state, frozenset())
            fields = {k: v for k, v in fields.items() if k in keep}
        else:
            self.state = state
            self.timestamp = event.timestamp
        for key, value in fields.items():
            if key == "uuid":
                continue
            if key in _TASK_ATTRIBUTES:
                setattr(self, key, value)
            else:
                self.extra[key] = value

    @property
    def ready(self) -> bool:
        """True once the task will not change again (SUCCESS, FAILURE, REVOKED)."""
        return self.state in states.READY_STATES

    def as_dict(self) -> dict[str, Any]:
        """Plain data (for JSON)."""
        data = {key: getattr(self, key) for key in _TASK_ATTRIBUTES}
        data.update(
            uuid=self.uuid,
            state=self.state,
            worker=self.worker,
            timestamp=self.timestamp,
            times=dict(self.times),
            timeline=[list(item) for item in self.timeline],
            **self.extra,
        )
        return data


_TASK_ATTRIBUTES = (
    "name",
    "args",
    "kwargs",
    "retries",
    "eta",
    "expires",
    "root_id",
    "parent_id",
    "result",
    "exception",
    "traceback",
    "runtime",
)


class _Rates:
    """Events per second by type, over the last ``window`` seconds (per-second buckets)."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._buckets: dict[str, deque[list[int]]] = {}

    def add(self, kind: str, when: float) -> None:
        second = int(when)
        buckets = self._buckets.setdefault(kind, deque())
        if buckets and buckets[-1][0] == second:
            buckets[-1][1] += 1
        else:
            buckets.append([second, 1])
        while buckets and buckets[0][0] <= second - self.window:
            buckets.popleft()

    def rate(self, kind: str, now: float) -> float:
        start = now - self.window
        total = sum(count for second, count in self._buckets.get(kind, ()) if second >= start)
        return total / self.window

    def kinds(self) -> list[str]:
        return list(self._buckets)


class State:
    """The cluster state, kept up to date by the events it is fed (thread-safe).

    Args:
        max_workers: Workers remembered at most (least recently heard-from go first).
        max_tasks: Tasks remembered at most (least recently updated go first).
        rate_window: Seconds over which ``rate`` averages.
        callback: Called as ``callback(state, event)`` after each event.
    """

    def __init__(
        self,
        max_workers: int = 5000,
        max_tasks: int = 10000,
        rate_window: float = RATE_WINDOW,
        callback: Callable[[State, Event], Any] | None = None,
    ) -> None:
        self.max_workers = max_workers
        self.max_tasks = max_tasks
        self.rate_window = rate_window
        self.callback = callback
        self.workers: OrderedDict[str, WorkerState] = OrderedDict()
        self.tasks: OrderedDict[str, TaskState] = OrderedDict()
        #: Events taken in, and tasks received, since the start (or ``clear``).
        self.event_count = 0
        self.task_count = 0
        #: Events taken in, by type.
        self.totals: Counter[str] = Counter()
        self._rates = _Rates(rate_window)
        self._lock = threading.RLock()

    # -- taking events in -----------------------------------------------------------------
    def event(self, event: Event | Mapping[str, Any]) -> None:
        """Take in one event (an ``Event``, or a Celery event dict)."""
        if not isinstance(event, Event):
            event = Event.decode(event, local_received=time.time())
        with self._lock:
            self.event_count += 1
            self.totals[event.type] += 1
            self._rates.add(event.type, event.local_received or time.time())
            if event.group == "worker":
                self._worker(event.hostname).on_event(event)
            elif event.group == "task" and event.uuid:
                self._task_event(event)
        if self.callback is not None:
            self.callback(self, event)

    def _task_event(self, event: Event) -> None:
        if event.type == "task-received":
            self.task_count += 1
        assert event.uuid is not None
        task = self.tasks.get(event.uuid)
        if task is None:
            task = self.tasks[event.uuid] = TaskState(event.uuid)
            while len(self.tasks) > self.max_tasks:
                self.tasks.popitem(last=False)
        else:
            self.tasks.move_to_end(event.uuid)
        task.on_event(event)
        if event.hostname and event.type != "task-sent":  # sent by a client, not a worker
            self._worker(event.hostname).on_event(event)

    def _worker(self, hostname: str) -> WorkerState:
        worker = self.workers.get(hostname)
        if worker is None:
            worker = self.workers[hostname] = WorkerState(hostname)
            while len(self.workers) > self.max_workers:
                self.workers.popitem(last=False)
        else:
            self.workers.move_to_end(hostname)
        return worker

    def clear(self, ready: bool = True) -> None:
        """Forget tasks (only finished ones when ``ready``) and reset the counters."""
        with self._lock:
            if ready:
                for uuid in [u for u, t in self.tasks.items() if t.ready]:
                    del self.tasks[uuid]
            else:
                self.tasks.clear()
            self.event_count = self.task_count = 0
            self.totals.clear()
            self._rates = _Rates(self.rate_window)

    # -- asking ---------------------------------------------------------------------------
    def alive_workers(self, now: float | None = None) -> list[WorkerState]:
        """Workers whose heartbeats keep coming, by hostname."""
        with self._lock:
            return sorted(
                (w for w in self.workers.values() if w.alive(now)), key=lambda w: w.hostname
            )

    def task(self, uuid: str) -> TaskState | None:
        """The task with this id, if known."""
        with self._lock:
            return self.tasks.get(uuid)

    def tasks_by_time(self, limit: int | None = None) -> list[TaskState]:
        """Tasks, most recently changed first."""
        with self._lock:
            ordered = sorted(self.tasks.values(), key=lambda t: t.timestamp or 0.0, reverse=True)
        return ordered if limit is None else ordered[:limit]

    def tasks_by_type(self, name: str) -> list[TaskState]:
        """Tasks of one task name, most recently changed first."""
        return [t for t in self.tasks_by_time() if t.name == name]

    def tasks_by_worker(self, hostname: str) -> list[TaskState]:
        """Tasks one worker took, most recently changed first."""
        return [t for t in self.tasks_by_time() if t.worker == hostname]

    def task_types(self) -> list[str]:
        """Every task name seen, sorted."""
        with self._lock:
            return sorted({t.name for t in self.tasks.values() if t.name})

    def state_counts(self) -> dict[str, int]:
        """How many of the remembered tasks are in each state."""
        with self._lock:
            return dict(Counter(t.state for t in self.tasks.values()))

    def rate(self, event_type: str, now: float | None = None) -> float:
        """Events of this type per second, averaged over the rate window."""
        with self._lock:
            return self._rates.rate(event_type, time.time() if now is None else now)

    def task_rates(self, now: float | None = None) -> dict[str, float]:
        """Per-second rate of every task event type seen (``task-succeeded`` -> 12.5)."""
        now = time.time() if now is None else now
        with self._lock:
            kinds = [k for k in self._rates.kinds() if k.startswith("task-")]
            return {kind: self._rates.rate(kind, now) for kind in sorted(kinds)}

    def snapshot(self, now: float | None = None, tasks: int = 100) -> dict[str, Any]:
        """Everything a monitor shows, as plain data (JSON-ready)."""
        now = time.time() if now is None else now
        with self._lock:
            workers = [w.as_dict(now) for w in self.workers.values()]
            totals = dict(self.totals)
            counts = (self.event_count, self.task_count)
        return {
            "time": now,
            "event_count": counts[0],
            "task_count": counts[1],
            "workers": sorted(workers, key=lambda w: w["hostname"]),
            "totals": totals,
            "states": self.state_counts(),
            "rates": self.task_rates(now),
            "tasks": [t.as_dict() for t in self.tasks_by_time(tasks)],
        }

    def __repr__(self) -> str:
        return f"<State: events={self.event_count} tasks={self.task_count}>"
