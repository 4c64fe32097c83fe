"""Opening the embedded broker's file safely and running transactions on it.

Rules this module keeps:

- A file that is not a celeriac broker (another application's database, a text file, a
  corrupt database) is never written to: opening it raises ``BrokerFileError`` naming it.
- ``database is locked`` is not an error users see: write transactions start with
  ``BEGIN IMMEDIATE`` and are retried with backoff while another process holds the lock.
- Each thread (and each process after a fork) gets its own SQLite connection.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from celeriac.exceptions import BrokerFileError, ImproperlyConfigured, OperationalError
from celeriac.transports.base import WouldBlock
from celeriac.transports.sqlite_schema import INDEXES, SCHEMA, SCHEMA_VERSION, TABLES

T = TypeVar("T")
logger = logging.getLogger(__name__)

#: How long a transaction keeps retrying a locked database before giving up.
DEFAULT_LOCK_TIMEOUT = 300.0
#: SQLite's own wait for a lock, within each of our attempts.
BUSY_TIMEOUT_MS = 1000


def path_from_url(url: str) -> str:
    """The file named by a ``sqlite://`` URL (SQLAlchemy's convention).

    ``sqlite:///relative/broker.db`` is relative to the working directory,
    ``sqlite:////abs/broker.db`` absolute; the result is always made absolute.
    """
    _, _, rest = url.partition("://")
    path = rest[1:] if rest.startswith("/") else rest
    path = path.split("?", 1)[0]
    if not path:
        raise ImproperlyConfigured(
            f"{url!r} names no file: use sqlite:///broker.db (relative) or "
            "sqlite:////var/lib/app/broker.db (absolute)"
        )
    if path == ":memory:":
        raise ImproperlyConfigured(
            "An in-memory SQLite database cannot be shared between connections; "
            "use memory:// for an in-process broker"
        )
    return os.path.abspath(path)


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    message = str(exc)
    return "locked" in message or "busy" in message


def translate(exc: sqlite3.Error, path: str) -> Exception:
    """The celeriac error for an SQLite error on the broker file at ``path``."""
    message = str(exc)
    if "unable to open" in message or "readonly" in message or "read-only" in message:
        return BrokerFileError(f"Cannot open or write the broker file {path}: {message}")
    if "not a database" in message or "malformed" in message or "corrupt" in message:
        return BrokerFileError(
            f"The broker file {path} is not a usable SQLite database ({message}); "
            "it was left untouched. Move it away or point the broker URL elsewhere."
        )
    return OperationalError(f"SQLite broker {path}: {message}")


class Database:
    """The broker file, with a connection per thread and retrying transactions."""

    def __init__(self, path: str, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> None:
        self.path = path
        self.lock_timeout = lock_timeout
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened (and the file checked) on first use."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or self._pid != os.getpid():
            if self._pid != os.getpid():
                # Connections must not cross a fork; the child starts afresh.
                self._pid = os.getpid()
                self._all = []
                self._local = threading.local()
            conn = self._open()
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _open(self) -> sqlite3.Connection:
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            raise BrokerFileError(
                f"Cannot create the broker file {self.path}: directory {directory} does not exist"
            )
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=1.0
            )
        except sqlite3.Error as exc:
            raise translate(exc, self.path) from exc
        try:
            self._prepare(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise translate(exc, self.path) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        names = {
            row[0]
            for row in conn.execute("SELECT name FROM sqlite_master")
            if not row[0].startswith("sqlite_")
        }
        if version > SCHEMA_VERSION:
            raise BrokerFileError(
                f"The broker file {self.path} was made by a newer celeriac "
                f"(layout {version}, this one reads {SCHEMA_VERSION}); it was left untouched"
            )
        if version == 0 and names - {*TABLES, *INDEXES}:
            foreign = ", ".join(sorted(names)[:5])
            raise BrokerFileError(
                f"The file {self.path} is an SQLite database of another application "
                f"(it has {foreign}); celeriac will not write to it. Use another file."
            )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if version < SCHEMA_VERSION:
            self.write(_create_schema, conn)
        # WAL lets readers and the writer run together; NORMAL syncs at checkpoints, which
        # keeps every commit safe from a process crash (not from power loss).
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")

    @contextmanager
    def nowait(self) -> Iterator[None]:
        """Within: a write that would wait for the file's lock raises WouldBlock instead."""
        conn = self.connection()
        self._local.nowait = True
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            yield
        finally:
            self._local.nowait = False
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def write(
        self, work: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection | None = None
    ) -> T:
        """Run ``work`` in a write transaction, retrying while the file is locked.

        Raises:
            OperationalError: The database stayed locked for ``lock_timeout`` seconds.
            BrokerFileError: The file is unusable.
        """
        conn = conn or self.connection()
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.001
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if not _is_locked(exc):
                    raise translate(exc, self.path) from exc
                if getattr(self._local, "nowait", False):
                    raise WouldBlock from exc
                if time.monotonic() > deadline:
                    raise OperationalError(
                        f"The broker file {self.path} stayed locked for "
                        f"{self.lock_timeout:.0f}s; is a process stuck inside a transaction?"
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
                continue
            except sqlite3.Error as exc:
                raise translate(exc, self.path) from exc
            try:
                result = work(conn)
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise translate(exc, self.path) from exc
                raise
            return result

    def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read-only ``work`` (SQLite errors translated)."""
        try:
            return work(self.connection())
        except sqlite3.Error as exc:
            raise translate(exc, self.path) from exc

    def close(self) -> None:
        """Close every connection this object opened in this process."""
        with self._lock:
            conns, self._all = self._all, []
        self._local = threading.local()
        if self._pid != os.getpid():
            return
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                logger.debug("closing a broker connection failed", exc_info=True)


def _create_schema(conn: sqlite3.Connection) -> None:
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def process_alive(pid: int) -> bool:
    """True when a process with ``pid`` exists on this host and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # The state follows the parenthesised command name: "pid (comm) S ...".
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")
