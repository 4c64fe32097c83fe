"""Fixtures for the events tests: an app on a broker, and the e2e worker helpers.

Workers come from ``tests/e2e/e2e_support.py`` (in a thread for the in-process pools, a
``celeriac worker`` subprocess for prefork), so that directory is put on ``sys.path``.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

E2E_DIR = Path(__file__).resolve().parents[1] / "e2e"
if str(E2E_DIR) not in sys.path:
    sys.path.insert(0, str(E2E_DIR))

from e2e_support import Stack, stack_factory  # noqa: E402

from celeriac import Celery  # noqa: E402


@pytest.fixture
def memory_app() -> Iterator[Celery]:
    """An app on a memory broker of its own (results there too)."""
    url = f"memory://{uuid.uuid4().hex}"
    app = Celery("events-test", broker=url, backend=url, set_as_current=False)
    yield app
    app.close()


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Build e2e stacks in this test's directory; closed (workers reaped) afterwards."""
    with stack_factory(tmp_path) as make:
        yield make
