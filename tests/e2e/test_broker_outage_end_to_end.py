"""A worker whose broker connection fails keeps running and consumes again when it returns."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from e2e_support import Stack

from celeriac.transports.memory import MemoryTransport

TIMEOUT = 10


def test_the_worker_resumes_after_fetches_fail_and_nothing_is_acked_twice_or_lost(
    make_stack: Callable[..., Stack],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stack = make_stack("memory", "threads")
    real_fetch = MemoryTransport.fetch
    outage = {"failures_left": 0}

    def flaky_fetch(self: MemoryTransport, queues: Any, limit: int, ack: Any = ()) -> Any:
        if outage["failures_left"]:
            outage["failures_left"] -= 1
            raise ConnectionResetError("the broker went away")
        return real_fetch(self, queues, limit, ack)

    monkeypatch.setattr(MemoryTransport, "fetch", flaky_fetch)
    with caplog.at_level(logging.WARNING, logger="celeriac.worker.consumer"), stack.worker():
        assert stack.tasks.add.delay(1, 1).get(timeout=TIMEOUT) == 2
        outage["failures_left"] = 4
        results = [stack.tasks.add.delay(i, i) for i in range(20)]
        assert [r.get(timeout=TIMEOUT) for r in results] == [2 * i for i in range(20)]
    assert outage["failures_left"] == 0
    lost = [r for r in caplog.records if "Lost the broker connection" in r.getMessage()]
    back = [r for r in caplog.records if "Consuming again" in r.getMessage()]
    assert len(lost) == 1  # said once per outage, not once per failed attempt
    assert len(back) == 1
    assert stack.queue_length() == 0  # the acks held back by the outage were sent
