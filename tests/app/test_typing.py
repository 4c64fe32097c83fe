"""The public task API type-checks like the functions it wraps (checked with mypy)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

SAMPLE = """
from celeriac import Celery, AsyncResult

app = Celery("typed")

@app.task
def add(x: int, y: int) -> int:
    return x + y

@app.task(bind=True)
def bound(self: object, name: str) -> str:
    return name

result = add.delay(1, 2)
reveal_type(result)
reveal_type(result.get())
reveal_type(bound.delay("x").get())
reveal_type(add(1, 2))
add.delay("one", 2)
"""


def test_delay_is_checked_against_the_task_signature_and_get_returns_its_type(
    tmp_path: Path,
) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(textwrap.dedent(SAMPLE))
    out, _err, _status = mypy_api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / ".mypy"), str(sample)]
    )
    assert 'Revealed type is "celeriac.result.AsyncResult[int]"' in out
    assert out.count('Revealed type is "int"') == 2
    assert 'Revealed type is "str"' in out
    assert 'Argument 1 to "delay" of "Task" has incompatible type "str"; expected "int"' in out
