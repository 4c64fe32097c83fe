"""In-process result backend (``memory://``, Celery's ``cache+memory://``), for tests.

| feature                  | supported                                           |
|--------------------------|-----------------------------------------------------|
| shared between processes | no: one store per process and URL                   |
| survives the process     | no                                                  |
| expiry                   | yes: expired keys read as missing, ``cleanup`` drops |
| waking waiters           | threads (a condition) and event loops, no polling   |
| chords                   | yes: parts counted under the store's lock            |

Every backend object with the same URL in one process shares one store
(``memory://a`` and ``cache+memory://a`` are the same store; ``memory://b`` another).
Values are serialized as on any other backend, so what a test reads is what a real
backend would return.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from celeriac import states
from celeriac.backends.base import ChordPart, Record, ResultBackend, Write


@dataclass(slots=True)
class _Entry:
    status: str
    expires_at: float | None
    records: list[Record]  # the history, oldest first; the last is the current value

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now


@dataclass(slots=True)
class _Chord:
    """A chord's reports so far (by task id, with their arrival), or ``done``."""

    expires_at: float | None
    parts: dict[str, tuple[int, ChordPart]] = field(default_factory=dict)
    done: bool = False

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now


_LoopWaiter = tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]


@dataclass(slots=True)
class _Store:
    """The shared state of one in-process result store."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    entries: dict[str, _Entry] = field(default_factory=dict)
    chords: dict[str, _Chord] = field(default_factory=dict)
    loop_waiters: set[_LoopWaiter] = field(default_factory=set)


_stores: dict[str, _Store] = {}
_stores_lock = threading.Lock()


def _store_for(url: str) -> _Store:
    name = url.partition("://")[2].rstrip("/")
    with _stores_lock:
        return _stores.setdefault(name, _Store())


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class MemoryBackend(ResultBackend):
    """Results kept in this process's memory, shared by every backend with the same URL."""

    schemes: ClassVar[tuple[str, ...]] = ("memory", "cache+memory")

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self._state = _store_for(url)

    # -- called with the condition held -----------------------------------------------------
    def _live(self, key: str, now: float) -> _Entry | None:
        entry = self._state.entries.get(key)
        if entry is not None and entry.expired(now):
            del self._state.entries[key]
            return None
        return entry

    def _put(self, write: Write, now: float) -> bool:
        entry = self._live(write.key, now)
        if entry is None:
            record = Record(1, write.content_type, write.value)
            self._state.entries[write.key] = _Entry(write.status, write.expires_at, [record])
            return True
        if entry.status == states.SUCCESS:
            return False
        entry.records.append(Record(entry.records[-1].seq + 1, write.content_type, write.value))
        entry.status, entry.expires_at = write.status, write.expires_at
        return True

    def _changed(self, watch: Mapping[str, int]) -> bool:
        now = time.time()
        for key, seen in watch.items():
            entry = self._live(key, now)
            if entry is not None and entry.records[-1].seq > seen:
                return True
        return False

    # -- the storage surface ----------------------------------------------------------------
    def _get(self, key: str) -> Record | None:
        with self._state.cond:
            entry = self._live(key, time.time())
            return None if entry is None else entry.records[-1]

    def _get_many(self, keys: Sequence[str]) -> dict[str, Record]:
        now = time.time()
        with self._state.cond:
            entries = {key: self._live(key, now) for key in keys}
        return {key: entry.records[-1] for key, entry in entries.items() if entry is not None}

    def _history(self, key: str, after_seq: int) -> list[Record]:
        with self._state.cond:
            entry = self._live(key, time.time())
            if entry is None:
                return []
            return [record for record in entry.records if record.seq > after_seq]

    def _store_many(self, writes: Sequence[Write]) -> list[bool]:
        now = time.time()
        state = self._state
        with state.cond:
            stored = [self._put(write, now) for write in writes]
            if any(stored):
                state.cond.notify_all()
                for loop, future in state.loop_waiters:
                    with contextlib.suppress(RuntimeError):  # That loop is closed.
                        loop.call_soon_threadsafe(_resolve, future)
        return stored

    def _chord_part(
        self, group_id: str, part: ChordPart, size: int | None, expires_at: float | None
    ) -> list[ChordPart] | None:
        if size is None:
            raise ValueError(f"chord {group_id}: its body carries no chord_size")
        now = time.time()
        with self._state.cond:
            chords = self._state.chords
            chord = chords.get(group_id)
            if chord is None or chord.expired(now):
                chord = chords[group_id] = _Chord(expires_at)
            if chord.done or part.task_id in chord.parts:
                return None
            chord.parts[part.task_id] = (len(chord.parts), part)
            chord.expires_at = expires_at
            if len(chord.parts) < size:
                return None
            ordered = sorted(chord.parts.values(), key=lambda item: (item[1].group_index, item[0]))
            chord.parts, chord.done = {}, True
        return [stored for _, stored in ordered]

    def _delete(self, key: str) -> None:
        with self._state.cond:
            self._state.entries.pop(key, None)

    def _wait(self, watch: Mapping[str, int], timeout: float) -> None:
        with self._state.cond:
            self._state.cond.wait_for(lambda: self._changed(watch), timeout)

    async def _await(self, watch: Mapping[str, int], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        waiter = (loop, future)
        with self._state.cond:
            if self._changed(watch):
                return
            self._state.loop_waiters.add(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(future, timeout)
        finally:
            with self._state.cond:
                self._state.loop_waiters.discard(waiter)

    def cleanup(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        with self._state.cond:
            entries = self._state.entries
            expired = [key for key, entry in entries.items() if entry.expired(now)]
            for key in expired:
                del entries[key]
            chords = self._state.chords
            for group_id in [gid for gid, chord in chords.items() if chord.expired(now)]:
                del chords[group_id]
        return len(expired)
