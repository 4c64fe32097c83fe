from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from celeriac import Celery


@pytest.fixture
def app() -> Iterator[Celery]:
    """An app on a private in-memory broker and backend."""
    url = f"memory://{uuid.uuid4().hex}"
    application = Celery("t", broker=url, backend=url)
    yield application
    application.close()
