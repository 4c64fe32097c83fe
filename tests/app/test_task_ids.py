"""Task ids: random version 4 uuids in their usual text form, as Celery's."""

from __future__ import annotations

import uuid

from celeriac import Celery
from celeriac.utils.ids import uuid4_text


def test_ids_are_version_4_uuids_that_read_back_as_the_same_text() -> None:
    for _ in range(2000):
        text = uuid4_text()
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def test_ids_do_not_repeat() -> None:
    ids = {uuid4_text() for _ in range(10_000)}
    assert len(ids) == 10_000


def test_a_sent_task_gets_such_an_id_unless_one_is_given() -> None:
    app = Celery("ids", broker="memory://", backend="memory://")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    sent = add.delay(1, 2)
    assert uuid.UUID(sent.id).version == 4
    assert add.apply_async((1, 2), task_id="chosen").id == "chosen"
    app.close()
