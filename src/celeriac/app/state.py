"""Process-wide state: the current app, and the request of the task running right now.

The task request lives in a ``ContextVar``, not a thread-local: asyncio tasks running many
at once on one thread each see their own ``self.request``.
"""

from __future__ import annotations

import threading
import weakref
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from celeriac.app.base import Celery
    from celeriac.app.task import Context

_current_app: Celery | None = None
_lock = threading.Lock()
_all_apps: weakref.WeakSet[Celery] = weakref.WeakSet()

current_request: ContextVar[Context | None] = ContextVar("celeriac_request", default=None)


def get_current_app() -> Celery:
    """The app made most recently (a default one is made when there is none)."""
    if _current_app is None:
        with _lock:
            if _current_app is None:
                from celeriac.app.base import Celery

                Celery("default", set_as_current=True)
    assert _current_app is not None
    return _current_app


def set_current_app(app: Celery) -> None:
    """Make ``app`` the current app."""
    global _current_app  # noqa: PLW0603
    _current_app = app


def register_app(app: Celery) -> None:
    """Remember ``app`` so ``shared_task`` can register tasks with it."""
    with _lock:
        _all_apps.add(app)


def all_apps() -> list[Celery]:
    """Every app of this process that is still in use."""
    with _lock:
        return list(_all_apps)
