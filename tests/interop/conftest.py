"""The ``pair`` fixture: a client of one framework and a worker of the other (see
``interop_support``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from interop_support import BACKEND, BROKER, OTHER, Pair, delete_queue, make_client, start_worker

from celeriac.testing import service_url


@pytest.fixture(scope="module", params=["celery", "celeriac"], ids=lambda f: f"{f}-client")
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    """A ``framework`` client and the OTHER framework's worker, on RabbitMQ + Redis."""
    service_url(BROKER)
    service_url(BACKEND)
    client_framework: str = request.param
    queue = f"interop-{uuid.uuid4().hex[:12]}"
    workdir = tmp_path_factory.mktemp(f"interop-{client_framework}")
    worker = start_worker(OTHER[client_framework], queue, workdir)
    app, tasks = make_client(client_framework, queue)
    try:
        yield Pair(client_framework, worker, app, tasks)
    finally:
        worker.stop()
        with_close = getattr(app, "close", None)
        if with_close is not None:
            with_close()
        delete_queue(queue)
