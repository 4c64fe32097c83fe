"""celeriac: a distributed task queue with Celery's API and wire protocol.

Moving from Celery is a change of imports::

    from celeriac import Celery, shared_task
"""

from celeriac import states
from celeriac.app.base import Celery, shared_task
from celeriac.app.state import get_current_app as _get_current_app
from celeriac.app.task import Task
from celeriac.canvas import Signature, signature, subtask
from celeriac.result import AsyncResult, EagerResult

__version__ = "0.1.0"

__all__ = [
    "AsyncResult",
    "Celery",
    "EagerResult",
    "Signature",
    "Task",
    "current_app",
    "shared_task",
    "signature",
    "states",
    "subtask",
]


def current_app() -> Celery:
    """The current app (the last one made; a default one when there is none)."""
    return _get_current_app()
