"""Fixtures shared by several test modules."""

from __future__ import annotations

import uuid
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
    return registry
