"""How a drain run knows when the last task ran, across threads and processes.

Every no-op task appends one byte to ``$BENCH_TALLY/ran`` through a descriptor opened once
per process with ``O_APPEND`` (an atomic append; two system calls per task, the same for
every framework). The descriptor's offset after its write is the number of tasks run so
far, all processes together, so the task that makes it ``$BENCH_COUNT`` writes the time to
``$BENCH_TALLY/end``. The first task of each process writes the time to
``$BENCH_TALLY/first-<pid>``, so the run can be timed from the first task as well as from
the worker's start.
"""

from __future__ import annotations

import os
import threading
import time

_directory = os.environ.get("BENCH_TALLY", "")
_count = int(os.environ.get("BENCH_COUNT", "0") or 0)
_lock = threading.Lock()
#: This process's descriptor of ``ran``, by pid (a forked child opens its own).
_open_files: dict[int, int] = {}


def _stamp(name: str) -> None:
    """Write the time now to ``name`` in the tally directory (the first writer wins)."""
    now = repr(time.time()).encode()
    try:
        fd = os.open(os.path.join(_directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return
    try:
        os.write(fd, now)
    finally:
        os.close(fd)


def _open(pid: int) -> int:
    with _lock:
        if pid not in _open_files:  # the first task of this process
            _stamp(f"first-{pid}")
            path = os.path.join(_directory, "ran")
            _open_files[pid] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        return _open_files[pid]


def hit() -> None:
    """Count one task; the one that completes ``BENCH_COUNT`` stamps the end."""
    if not _directory:
        return
    pid = os.getpid()
    fd = _open_files.get(pid) or _open(pid)
    os.write(fd, b"x")
    if os.lseek(fd, 0, os.SEEK_CUR) >= _count:
        _stamp("end")
