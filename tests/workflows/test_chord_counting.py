"""Chord counting in the result backends: every report counted once, one report completes.

``ResultBackend.add_chord_part`` over the memory and SQLite backends (the ones with the
storage method); end-to-end chords are in ``test_chord.py``.
"""

from __future__ import annotations

import random
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from celeriac import states
from celeriac.backends.base import ChordOutcome, ResultBackend
from celeriac.backends.memory import MemoryBackend
from celeriac.backends.sqlite import SQLiteBackend


def report(backend: ResultBackend, group_id: str, index: int, size: int, **kw: Any) -> Any:
    return backend.add_chord_part(
        group_id,
        kw.get("task_id", f"task-{index}"),
        index,
        kw.get("state", states.SUCCESS),
        kw.get("result", index * 10),
        size,
    )


def test_only_the_report_that_completes_the_chord_gets_the_results_in_header_order(
    backend: ResultBackend,
) -> None:
    order = list(range(6))
    random.Random(7).shuffle(order)
    answers = [report(backend, "g", index, 6) for index in order]
    assert answers[:-1] == [None] * 5
    assert answers[-1] == [ChordOutcome(f"task-{i}", states.SUCCESS, i * 10) for i in range(6)]


def test_a_task_reported_twice_is_counted_once(backend: ResultBackend) -> None:
    assert report(backend, "g", 0, 2) is None
    assert report(backend, "g", 0, 2) is None  # redelivered: not a second part
    assert report(backend, "g", 1, 2) is not None


def test_a_report_after_the_chord_completed_is_ignored(backend: ResultBackend) -> None:
    report(backend, "g", 0, 1)
    assert report(backend, "g", 0, 1) is None
    assert report(backend, "g", 5, 1, task_id="late") is None


def test_a_failed_part_comes_back_as_its_exception(backend: ResultBackend) -> None:
    report(backend, "g", 0, 2)
    error = ValueError("bad", 3)
    outcomes = report(backend, "g", 1, 2, state=states.FAILURE, result=error)
    assert outcomes[1].state == states.FAILURE
    assert isinstance(outcomes[1].result, ValueError) and outcomes[1].result.args == ("bad", 3)


def test_chords_are_counted_apart(backend: ResultBackend) -> None:
    assert report(backend, "a", 0, 2) is None
    assert report(backend, "b", 0, 2) is None
    assert [o.result for o in report(backend, "a", 1, 2)] == [0, 10]


def test_many_threads_reporting_at_once_complete_the_chord_exactly_once(
    backend: ResultBackend,
) -> None:
    size, completions, lock = 400, [], threading.Lock()

    def reporter(indexes: range) -> None:
        for index in indexes:
            outcome = report(backend, "busy", index, size)
            if outcome is not None:
                with lock:
                    completions.append(outcome)

    threads = [threading.Thread(target=reporter, args=(range(i, size, 8),)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(completions) == 1
    assert [o.result for o in completions[0]] == [i * 10 for i in range(size)]


def test_expired_chord_state_is_removed_by_cleanup(tmp_path: Path) -> None:
    backend = SQLiteBackend(f"sqlite:///{tmp_path}/r.db", expires=60)
    try:
        report(backend, "g", 0, 1)
        report(backend, "pending", 0, 2)
        backend.cleanup(now=2**40)
        # The done mark is gone: the same group id counts from zero again.
        assert report(backend, "g", 0, 1) is not None
        assert report(backend, "pending", 1, 2) is None
    finally:
        backend.close()


def test_a_backend_without_chord_storage_refuses_chords_naming_itself() -> None:
    class NoChords(MemoryBackend):
        _chord_part = ResultBackend._chord_part

    backend = NoChords(f"memory://{uuid.uuid4().hex}")
    with pytest.raises(NotImplementedError, match="NoChords result backend"):
        backend.ensure_chords_allowed()
    with pytest.raises(NotImplementedError, match="does not support chords"):
        report(backend, "g", 0, 1)
    MemoryBackend(f"memory://{uuid.uuid4().hex}").ensure_chords_allowed()
