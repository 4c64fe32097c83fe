"""Fixtures of the Redis result backend tests: the shared server's result db, a plain
client on it, and task ids whose keys are deleted afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from celeriac.testing import service_url

#: The shared Redis's db for result-backend tests (unique task ids keep tests apart).
SHARED = "redis://127.0.0.1:6379/14"


@pytest.fixture
def shared_url() -> str:
    return service_url(SHARED)


@pytest.fixture
def raw(shared_url: str) -> Iterator[object]:
    """A plain redis-py client on the shared db: what Celery (or a person) would use."""
    import redis

    client = redis.Redis.from_url(shared_url)
    yield client
    client.close()


@pytest.fixture
def task_ids(raw: object) -> Iterator[Callable[[], str]]:
    """Makes unique task ids; their keys (and histories) are deleted after the test."""
    from celeriac.backends.redis import history_key

    made: list[str] = []

    def new() -> str:
        made.append(f"t-{uuid.uuid4()}")
        return made[-1]

    yield new
    keys = [f"celery-task-meta-{task_id}" for task_id in made]
    if keys:
        raw.delete(*keys, *[history_key(key) for key in keys])  # type: ignore[attr-defined]
