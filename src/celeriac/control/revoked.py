"""Revoked task ids: the set a worker honours, and the durable record that outlives workers.

A revoke reaches workers two ways. Workers running at the time get the ``revoke``
broadcast. Workers that start later (or restart) read the durable record, which
``Control.revoke`` writes to the result backend before it broadcasts. A worker binds its
pidbox queue first and reads the record second, so every revoke is either in what it read
or in a broadcast it receives.

The record is a set of append-only logs in the result backend (``append_log``/``read_log``),
one per hour of revocation: ``celeriac-revoked-<hour number since the epoch>``. Each entry is
``{"ids": [...], "expires": <epoch seconds>}``. A log lives until its last entry could
expire, then the backend drops it, so the record stays as small as the revokes of the last
few hours. Appending is atomic in every backend, so concurrent revokes never lose each
other (no read-modify-write of a shared set).

A revoke is kept ``REVOKE_EXPIRES`` seconds (three hours) and a worker keeps at most
``REVOKES_MAX`` ids, as Celery's workers do. The rpc backend keeps nothing shared (a
client reads only its own results), so with it there is no record: only workers running
at the time honour a revoke, as with Celery. Redis keeps ``history_limit`` (1,000) entries
per log: beyond that many revoke calls in one hour, the oldest of that hour are dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celeriac.backends.base import ResultBackend

logger = logging.getLogger(__name__)

#: Seconds a revoke is honoured (Celery's ``REVOKE_EXPIRES``).
REVOKE_EXPIRES = 10_800.0
#: Most revoked ids a worker keeps (Celery's ``REVOKES_MAX``); the oldest go first.
REVOKES_MAX = 50_000
#: Key prefix and time span of one log of the durable record.
LOG_PREFIX = "celeriac-revoked-"
LOG_SPAN = 3600.0


class RevokedSet:
    """Task ids a worker must not run, each until its expiry (wall-clock seconds).

    Also remembers which running tasks it asked the pool to stop (``terminated``), so the
    worker records them as REVOKED rather than as lost.
    """

    def __init__(self, maxlen: int = REVOKES_MAX, expires: float = REVOKE_EXPIRES) -> None:
        self.maxlen = maxlen
        self.expires = expires
        self._ids: dict[str, float] = {}  # insertion order: oldest first
        self.terminated: dict[str, int] = {}

    def add(self, task_id: str, expires_at: float | None = None) -> None:
        """Revoke ``task_id`` until ``expires_at`` (default: ``expires`` from now)."""
        until = time.time() + self.expires if expires_at is None else expires_at
        self._ids.pop(task_id, None)
        self._ids[task_id] = until
        if len(self._ids) > self.maxlen:
            self.purge()
            while len(self._ids) > self.maxlen:
                del self._ids[next(iter(self._ids))]

    def update(self, revoked: Iterable[str] | dict[str, float]) -> None:
        """Add ids (a mapping gives each its expiry; other iterables get the default)."""
        if isinstance(revoked, dict):
            for task_id, until in revoked.items():
                self.add(task_id, until)
        else:
            for task_id in revoked:
                self.add(task_id)

    def purge(self, now: float | None = None) -> None:
        """Forget expired ids."""
        moment = time.time() if now is None else now
        for task_id in [i for i, until in self._ids.items() if until <= moment]:
            del self._ids[task_id]

    def __contains__(self, task_id: object) -> bool:
        until = self._ids.get(task_id) if isinstance(task_id, str) else None
        if until is None:
            return False
        if until <= time.time():
            del self._ids[str(task_id)]
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        now = time.time()
        return iter([task_id for task_id, until in self._ids.items() if until > now])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def mark_terminated(self, task_id: str, signum: int) -> None:
        """Remember that the pool was asked to stop ``task_id`` with ``signum``."""
        self.terminated[task_id] = signum

    def pop_terminated(self, task_id: str) -> int | None:
        """The signal ``task_id`` was stopped with (forgotten now), or None."""
        return self.terminated.pop(task_id, None)


def keeps_record(backend: ResultBackend) -> bool:
    """Whether ``backend`` is storage every process shares (the rpc backend is not)."""
    from celeriac.backends.rpc import RPCBackend

    return not isinstance(backend, RPCBackend)


def _log_key(span: int) -> str:
    return f"{LOG_PREFIX}{span}"


def record_revokes(
    backend: ResultBackend,
    task_ids: Iterable[str],
    now: float | None = None,
    expires: float = REVOKE_EXPIRES,
) -> None:
    """Write revoked ids to the durable record, for workers that start later (nothing is
    written where the backend keeps no shared record)."""
    if not keeps_record(backend):
        return
    moment = time.time() if now is None else now
    span = int(moment // LOG_SPAN)
    # The log must outlive its last possible entry: one written at the end of its span.
    lifetime = (span + 1) * LOG_SPAN + expires - moment
    entry = {"ids": list(task_ids), "expires": moment + expires}
    backend.append_log(_log_key(span), entry, lifetime)


def load_revokes(
    backend: ResultBackend, now: float | None = None, expires: float = REVOKE_EXPIRES
) -> dict[str, float]:
    """The revoked ids in the durable record that have not expired, oldest first.

    One span either side of the live ones is read too, for clocks that disagree a little.
    """
    if not keeps_record(backend):
        return {}
    moment = time.time() if now is None else now
    first = int((moment - expires) // LOG_SPAN) - 1
    last = int(moment // LOG_SPAN) + 1
    found: dict[str, float] = {}
    for span in range(first, last + 1):
        for entry in backend.read_log(_log_key(span)):
            for task_id, until in _entry_ids(entry):
                if until > moment:
                    found[task_id] = max(until, found.get(task_id, 0.0))
    return found


def _entry_ids(entry: Any) -> list[tuple[str, float]]:
    """The ``(id, expiry)`` pairs of one log entry; a malformed entry is skipped loudly."""
    try:
        until = float(entry["expires"])
        return [(str(task_id), until) for task_id in entry["ids"]]
    except (KeyError, TypeError, ValueError):
        logger.warning("Skipping a malformed entry in the revoked-task record: %r", entry)
        return []
