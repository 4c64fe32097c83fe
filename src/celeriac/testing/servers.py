"""Servers of a test's own, for tests that restart or kill their broker.

``PrivateRedis`` runs a ``redis-server`` on a free 127.0.0.1 port with an append-only file in a
directory of the test's, so a test can stop, kill and restart it without disturbing the
shared server other tests use. Without ``redis-server`` installed the test is skipped (and
fails under ``CI=true``), like ``require_service``.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from celeriac.testing import in_ci

__all__ = ["PrivateRedis"]


class PrivateRedis:
    """A redis-server of this test's own, with an append-only file in ``directory`` (or
    nothing kept on disk, with ``appendonly=False``)."""

    def __init__(self, directory: Path, appendonly: bool = True) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            reason = "redis-server is not installed"
            if in_ci():
                pytest.fail(reason, pytrace=False)
            pytest.skip(reason)
        self.binary = binary
        self.directory = directory
        self.appendonly = appendonly
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port: int = sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--appendonly", "yes" if self.appendonly else "no",
                "--dir", str(self.directory),
                "--save", "",
            ],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        import redis  # the celeriac[redis] extra

        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except (redis.ConnectionError, redis.exceptions.BusyLoadingError):
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # a clean shutdown, the AOF synced
            self.process.wait(timeout=10)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
