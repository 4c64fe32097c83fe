"""Waking consumers in other processes when a file-based broker gets new messages.

SQLite has no way to notify another process of a commit, and polling the file often enough
to feel prompt burns CPU while idle. Instead each waiting session binds a Unix datagram
socket in a directory named after the broker file; a publisher, after committing, sends one
byte to every socket there. Waiters sleep in ``select`` (or the event loop's reader) and
cost nothing while idle. A socket left behind by a killed process refuses the datagram and
is removed by the first publisher that notices.

Wake-ups are hints: a waiter always re-checks the broker after waking, and waits are
bounded, so a lost datagram delays a delivery by at most one wait period.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import select
import socket
import tempfile
import time
import uuid

#: Seconds a publisher trusts its list of waiting sessions.
PEERS_TTL = 0.05


def wake_directory(broker_path: str) -> str:
    """The directory of wake sockets for the broker file at ``broker_path``.

    It lives under the temp directory (Unix socket paths are limited to ~100 bytes) and is
    named by a hash of the file's real path, so every process finds the same one.
    """
    digest = hashlib.sha256(os.path.realpath(broker_path).encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"celeriac-{os.getuid()}", digest)


class WakeChannel:
    """One session's wake socket, plus the ability to wake every session of a broker."""

    def __init__(self, broker_path: str) -> None:
        self.directory = wake_directory(broker_path)
        self._sock: socket.socket | None = None
        self._path: str | None = None
        self._peers: list[str] = []
        self._peers_mtime = -1
        self._peers_checked = -PEERS_TTL
        self._sender: socket.socket | None = None

    # -- listening ------------------------------------------------------------------------
    def listen(self) -> socket.socket:
        """This session's socket, bound on first use."""
        if self._sock is None:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            path = os.path.join(self.directory, uuid.uuid4().hex[:16])
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind(path)
            self._sock, self._path = sock, path
        return self._sock

    def _drain(self, sock: socket.socket) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while sock.recv(64):
                pass

    def wait(self, timeout: float) -> None:
        """Sleep until woken or ``timeout`` seconds pass."""
        sock = self.listen()
        readable, _, _ = select.select([sock], [], [], max(0.0, timeout))
        if readable:
            self._drain(sock)

    async def await_wake(self, timeout: float) -> None:
        """``wait`` for asyncio code: the event loop watches the socket."""
        sock = self.listen()
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()

        def on_readable() -> None:
            if not woken.done():
                woken.set_result(None)

        fd = sock.fileno()
        loop.add_reader(fd, on_readable)
        try:
            await asyncio.wait_for(woken, max(0.0, timeout))
        except TimeoutError:
            pass
        finally:
            loop.remove_reader(fd)
        if self._sock is sock:
            self._drain(sock)

    # -- waking ---------------------------------------------------------------------------
    def _current_peers(self) -> list[str]:
        # The listing is re-checked at most every PEERS_TTL: a session that starts waiting
        # in between looks at the broker after binding, so it misses nothing; at worst a
        # wake-up of it is late by one wait period.
        now = time.monotonic()
        if now < self._peers_checked + PEERS_TTL:
            return self._peers
        self._peers_checked = now
        try:
            mtime = os.stat(self.directory).st_mtime_ns
        except FileNotFoundError:
            self._peers = []
            return self._peers
        if mtime != self._peers_mtime:
            self._peers = [entry.path for entry in os.scandir(self.directory)]
            self._peers_mtime = mtime
        return self._peers

    def notify(self) -> None:
        """Wake every session waiting on this broker (including this one)."""
        peers = self._current_peers()
        if not peers:
            return
        if self._sender is None:
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
        for path in peers:
            try:
                self._sender.sendto(b"!", path)
            except BlockingIOError:
                pass  # Its buffer is full of wake-ups already.
            except (ConnectionRefusedError, FileNotFoundError):
                # Left behind by a process that died without closing it.
                with contextlib.suppress(OSError):
                    os.unlink(path)
            except OSError:
                pass

    def wake_self(self) -> None:
        """Make this session's pending ``wait`` return."""
        if self._path is not None:
            with (
                socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
                contextlib.suppress(OSError),
            ):
                sock.sendto(b"!", self._path)

    def close(self) -> None:
        """Unbind and remove this session's socket."""
        for sock in (self._sock, self._sender):
            if sock is not None:
                sock.close()
        if self._path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._path)
            with contextlib.suppress(OSError):
                os.rmdir(self.directory)  # only succeeds once no other session waits here
        self._sock = self._sender = None
        self._path = None
