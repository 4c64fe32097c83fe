"""The tasks every app has, under Celery's names, so workflows run on either side.

- ``celery.map(task, it)``: ``[task(item) for item in it]`` (what ``xmap`` sends).
- ``celery.starmap(task, it)``: ``[task(*item) for item in it]`` (``xstarmap``, ``chunks``).
- ``celery.chunks(task, it, n)``: sends ``chunks(task, it, n)`` as a group of starmaps; the
  parts are this task's children.
- ``celery.accumulate(*args, index=None)``: its arguments (or one of them); a group that
  replaces a task (``Task.replace``) becomes a chord with this body, so the replaced task's
  result is the group's list of results.

``app.tasks.regular()`` leaves them out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celeriac.app.base import Celery
    from celeriac.app.task import Task


def register_builtin_tasks(app: Celery) -> None:
    """Register the built-in tasks with ``app``."""
    from celeriac.canvas import chunks, signature

    @app.task(name="celery.map")
    def xmap(task: dict[str, Any], it: list[Any]) -> list[Any]:
        function: Task[Any, Any] = signature(task, app=app).type
        return [function(item) for item in it]

    @app.task(name="celery.starmap")
    def xstarmap(task: dict[str, Any], it: list[Any]) -> list[Any]:
        function: Task[Any, Any] = signature(task, app=app).type
        return [function(*item) for item in it]

    @app.task(name="celery.chunks")
    def send_chunks(task: dict[str, Any], it: list[Any], n: int) -> None:
        chunks(task, it, n, app=app).apply_async()

    @app.task(name="celery.accumulate")
    def accumulate(*args: Any, index: int | None = None) -> Any:
        return args[index] if index is not None else args
