"""celeriac: a distributed task queue with Celery's API and wire protocol.

Moving from Celery is a change of imports::

    from celeriac import Celery, shared_task
"""

from celeriac import states
from celeriac.app.base import Celery, shared_task
from celeriac.app.state import get_current_app as _get_current_app
from celeriac.app.task import Task
from celeriac.canvas import (
    Signature,
    chain,
    chord,
    chunks,
    group,
    maybe_signature,
    signature,
    subtask,
    xmap,
    xstarmap,
)
from celeriac.result import AsyncResult, EagerResult, GroupResult, ResultSet

__version__ = "0.1.0"

__all__ = [
    "AsyncResult",
    "Celery",
    "EagerResult",
    "GroupResult",
    "ResultSet",
    "Signature",
    "Task",
    "chain",
    "chord",
    "chunks",
    "current_app",
    "group",
    "maybe_signature",
    "shared_task",
    "signature",
    "states",
    "subtask",
    "xmap",
    "xstarmap",
]


def current_app() -> Celery:
    """The current app (the last one made; a default one when there is none)."""
    return _get_current_app()
