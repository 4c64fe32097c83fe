"""Result backend on the embedded SQLite file (``sqlite:///path``, Celery's ``db+sqlite://``).

| feature                  | supported                                                 |
|--------------------------|-----------------------------------------------------------|
| shared between processes | yes: every process opening the same file                  |
| survives the process     | yes                                                       |
| expiry                   | yes: expired rows read as missing; ``cleanup`` deletes    |
| waking waiters           | wake sockets (``wakeup.py``), also across processes       |
| batched writes           | ``store_many`` is one transaction                         |
| chords                   | parts counted in one transaction per report               |

The file may be the broker's own: the tables (``results``, ``result_history``, laid out in
``transports/sqlite_schema.py``) live beside the broker's, created when the file is opened.
``results`` holds each key's current value with its ``status`` and ``seq``; when a value is
replaced, the old one moves to ``result_history`` under its ``seq``. So a result stored
once (most of them) costs one INSERT, and a waiter reading ``history`` sees every state.

Waiters sleep on wake sockets named after ``<file>#results``, apart from the broker's
consumers: a publish does not wake result waiters, nor a result the broker's consumers.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

from celeriac import states
from celeriac.backends.base import ChordPart, Record, ResultBackend, Write
from celeriac.transports.sqlite_db import DEFAULT_LOCK_TIMEOUT, Database, path_from_url
from celeriac.transports.wakeup import WakeChannel

#: Appended to the file's path to name the wake channel of result waiters.
WAKE_SUFFIX = "#results"

_LIVE = "(expires_at IS NULL OR expires_at > :now)"
#: Keys read per statement by ``_get_many`` (SQLite allows 32,766 parameters).
_MANY = 500
_INSERT_NEW = """
INSERT INTO results (key, status, content_type, value, expires_at, seq)
VALUES (?, ?, ?, ?, ?, 1) ON CONFLICT(key) DO NOTHING
"""
_CURRENT = "SELECT status, seq, expires_at FROM results WHERE key = ?"
_KEEP_IN_HISTORY = """
INSERT INTO result_history (key, seq, content_type, value)
SELECT key, seq, content_type, value FROM results WHERE key = ?
"""
_REPLACE = """
UPDATE results SET status = ?, content_type = ?, value = ?, expires_at = ?, seq = ?
WHERE key = ?
"""
_GET = f"SELECT seq, content_type, value FROM results WHERE key = :key AND {_LIVE}"
# One statement, so both tables are read from one snapshot: a value that moves into the
# history between two reads would otherwise be missed.
_HISTORY = f"""
SELECT seq, content_type, value FROM result_history
WHERE key = :key AND seq > :after
  AND EXISTS (SELECT 1 FROM results WHERE key = :key AND {_LIVE})
UNION ALL
SELECT seq, content_type, value FROM results WHERE key = :key AND seq > :after AND {_LIVE}
ORDER BY seq
"""


_CHORD_STATE = "SELECT done, expires_at FROM chords WHERE group_id = ?"
_CHORD_ADD = """
INSERT INTO chord_parts (group_id, task_id, idx, content_type, value, expires_at)
VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(group_id, task_id) DO NOTHING
"""
_CHORD_COUNT = """
INSERT INTO chords (group_id, received, expires_at) VALUES (?, 1, ?)
ON CONFLICT(group_id) DO UPDATE SET received = received + 1, expires_at = excluded.expires_at
RETURNING received
"""
_CHORD_PARTS = """
SELECT task_id, idx, content_type, value FROM chord_parts WHERE group_id = ? ORDER BY idx, rowid
"""


def _add_chord_part(
    conn: sqlite3.Connection, group_id: str, part: ChordPart, size: int, expires_at: float | None
) -> list[ChordPart] | None:
    """One report to a chord, inside the caller's transaction (see ``_chord_part``)."""
    state = conn.execute(_CHORD_STATE, (group_id,)).fetchone()
    if state is not None:
        done, old_expiry = state
        if old_expiry is not None and old_expiry <= time.time():
            # Expired reads as missing: the chord counts afresh.
            conn.execute("DELETE FROM chords WHERE group_id = ?", (group_id,))
            conn.execute("DELETE FROM chord_parts WHERE group_id = ?", (group_id,))
        elif done:
            return None
    row = (group_id, part.task_id, part.group_index, part.content_type, part.value, expires_at)
    if conn.execute(_CHORD_ADD, row).rowcount == 0:
        return None  # This task was counted already (its message was delivered again).
    (received,) = conn.execute(_CHORD_COUNT, (group_id, expires_at)).fetchone()
    if received < size:
        return None
    rows = conn.execute(_CHORD_PARTS, (group_id,)).fetchall()
    conn.execute("DELETE FROM chord_parts WHERE group_id = ?", (group_id,))
    conn.execute("UPDATE chords SET done = 1 WHERE group_id = ?", (group_id,))
    return [ChordPart(task_id, idx, ctype, bytes(value)) for task_id, idx, ctype, value in rows]


def _put(conn: sqlite3.Connection, write: Write, now: float) -> bool:
    """Store one write inside the caller's transaction; False when SUCCESS was kept."""
    key, status, content_type, value, expires_at = write
    if conn.execute(_INSERT_NEW, write).rowcount == 1:
        return True
    old_status, seq, old_expiry = conn.execute(_CURRENT, (key,)).fetchone()
    if old_expiry is not None and old_expiry <= now:
        # Expired reads as missing, so the key starts afresh, history and all.
        conn.execute("DELETE FROM result_history WHERE key = ?", (key,))
        seq = 0
    elif old_status == states.SUCCESS:
        return False
    else:
        conn.execute(_KEEP_IN_HISTORY, (key,))
    conn.execute(_REPLACE, (status, content_type, value, expires_at, seq + 1, key))
    return True


def _records(rows: list[Any]) -> list[Record]:
    return [Record(seq, content_type, bytes(value)) for seq, content_type, value in rows]


class SQLiteBackend(ResultBackend):
    """Results in an SQLite file, shared by every process that opens it.

    Options: ``lock_timeout`` (seconds a write waits for a locked file) and the base's
    ``cleanup_interval``.
    """

    schemes: ClassVar[tuple[str, ...]] = ("sqlite", "db+sqlite")

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.path = path_from_url(url)
        lock_timeout = float(self.options.get("lock_timeout", DEFAULT_LOCK_TIMEOUT))
        self._db = Database(self.path, lock_timeout)
        self._db.connection()  # Fail now, naming the file, if it cannot be used.
        self._wake_key = self.path + WAKE_SUFFIX
        self._notifier = WakeChannel(self._wake_key)
        self._notify_lock = threading.Lock()
        # Each concurrent waiter needs a socket of its own (two waiters on one socket would
        # steal each other's wake-ups); idle ones are reused rather than re-bound.
        self._channels_lock = threading.Lock()
        self._channels: list[WakeChannel] = []
        self._idle: list[WakeChannel] = []
        self._inherited: list[WakeChannel] = []
        self._pid = os.getpid()

    # -- wake-ups ---------------------------------------------------------------------------
    def _notify(self) -> None:
        with self._notify_lock:  # WakeChannel's sender is created lazily, not thread-safe.
            self._notifier.notify()

    @contextlib.contextmanager
    def _channel(self) -> Iterator[WakeChannel]:
        with self._channels_lock:
            if self._pid != os.getpid():
                # The parent still listens on these; unlinking them would deafen it, and
                # dropping them would close them at garbage collection: keep, never use.
                self._pid = os.getpid()
                self._inherited.extend(self._channels)
                self._channels, self._idle = [], []
            if self._idle:
                channel = self._idle.pop()
            else:
                channel = WakeChannel(self._wake_key)
                self._channels.append(channel)
        try:
            channel.listen()  # Bound before looking, so no later write goes unnoticed.
            yield channel
        finally:
            with self._channels_lock:
                if channel in self._channels:
                    self._idle.append(channel)

    def _changed(self, watch: Mapping[str, int]) -> bool:
        params: dict[str, object] = {f"k{i}": key for i, key in enumerate(watch)}
        marks = ", ".join(f":{name}" for name in params)
        params["now"] = time.time()
        sql = f"SELECT key, seq FROM results WHERE key IN ({marks}) AND {_LIVE}"
        rows = self._db.read(lambda conn: conn.execute(sql, params).fetchall())
        return any(seq > watch[key] for key, seq in rows)

    # -- the storage surface ----------------------------------------------------------------
    def _get(self, key: str) -> Record | None:
        params = {"key": key, "now": time.time()}
        rows = self._db.read(lambda conn: conn.execute(_GET, params).fetchall())
        return _records(rows)[0] if rows else None

    def _get_many(self, keys: Sequence[str]) -> dict[str, Record]:
        now = time.time()

        def read(conn: sqlite3.Connection) -> dict[str, Record]:
            found: dict[str, Record] = {}
            for start in range(0, len(keys), _MANY):
                part = list(keys[start : start + _MANY])
                marks = ", ".join("?" * len(part))
                sql = (
                    f"SELECT key, seq, content_type, value FROM results WHERE key IN ({marks})"
                    " AND (expires_at IS NULL OR expires_at > ?)"
                )
                for key, seq, content_type, value in conn.execute(sql, [*part, now]):
                    found[key] = Record(seq, content_type, bytes(value))
            return found

        return self._db.read(read)

    def _history(self, key: str, after_seq: int) -> list[Record]:
        params = {"key": key, "after": after_seq, "now": time.time()}
        return _records(self._db.read(lambda conn: conn.execute(_HISTORY, params).fetchall()))

    def _store_many(self, writes: Sequence[Write]) -> list[bool]:
        now = time.time()
        stored = self._db.write(lambda conn: [_put(conn, write, now) for write in writes])
        if any(stored):
            self._notify()
        return stored

    def _chord_part(
        self, group_id: str, part: ChordPart, size: int | None, expires_at: float | None
    ) -> list[ChordPart] | None:
        if size is None:
            raise ValueError(f"chord {group_id}: its body carries no chord_size")
        return self._db.write(lambda conn: _add_chord_part(conn, group_id, part, size, expires_at))

    def _delete(self, key: str) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM results WHERE key = ?", (key,))
            conn.execute("DELETE FROM result_history WHERE key = ?", (key,))

        self._db.write(work)

    def _wait(self, watch: Mapping[str, int], timeout: float) -> None:
        with self._channel() as channel:
            if not self._changed(watch):
                channel.wait(timeout)

    async def _await(self, watch: Mapping[str, int], timeout: float) -> None:
        with self._channel() as channel:
            if not self._changed(watch):
                await channel.await_wake(timeout)

    def cleanup(self, now: float | None = None) -> int:
        moment = time.time() if now is None else now

        def work(conn: sqlite3.Connection) -> int:
            conn.execute(
                "DELETE FROM result_history WHERE key IN "
                "(SELECT key FROM results WHERE expires_at <= ?)",
                (moment,),
            )
            conn.execute("DELETE FROM chord_parts WHERE expires_at <= ?", (moment,))
            conn.execute("DELETE FROM chords WHERE expires_at <= ?", (moment,))
            return conn.execute("DELETE FROM results WHERE expires_at <= ?", (moment,)).rowcount

        return self._db.write(work)

    def close(self) -> None:
        with self._channels_lock:
            channels, self._channels, self._idle = self._channels, [], []
        if self._pid == os.getpid():
            for channel in channels:
                channel.close()
        with self._notify_lock:
            self._notifier.close()
        self._db.close()
