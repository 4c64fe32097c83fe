"""Fixtures shared by several test modules."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest


@pytest.fixture
def memory_url() -> str:
    """An in-memory broker of this test's own (memory brokers are per URL)."""
    return f"memory://{uuid.uuid4().hex}"


@pytest.fixture
def transport_registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The transport registry, restored after the test (so it may register test schemes)."""
    from celeriac import transports

    registry = dict(transports.TRANSPORTS)
    monkeypatch.setattr(transports, "TRANSPORTS", registry)
    monkeypatch.setattr(transports._registry, "entries", registry)
    return registry


Spawn = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Run code in fresh interpreters (stdin and stdout piped); reaped afterwards."""
    children: list[subprocess.Popen[str]] = []

    def start(code: str, *args: str) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        child = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        children.append(child)
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()
