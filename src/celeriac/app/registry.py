"""The task registry: task name -> task object."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

from celeriac.exceptions import NotRegistered

if TYPE_CHECKING:
    from celeriac.app.task import Task


class TaskRegistry(dict[str, "Task[Any, Any]"]):
    """Registered tasks by name; an unknown name raises ``NotRegistered`` with a hint."""

    def __missing__(self, name: str) -> Task[Any, Any]:
        close = difflib.get_close_matches(name, self.keys(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise NotRegistered(
            f"Task {name!r} is not registered.{hint} Is the module defining it imported "
            "by the worker (see the app's include/imports)?"
        )

    def register(self, task: Task[Any, Any]) -> None:
        """Add ``task`` under its name."""
        self[task.name] = task

    def unregister(self, name: str) -> None:
        """Remove the task called ``name``.

        Raises:
            NotRegistered: There is no such task.
        """
        try:
            del self[name]
        except KeyError:
            raise NotRegistered(name) from None

    def regular(self) -> dict[str, Task[Any, Any]]:
        """The application's own tasks (not celeriac's built-in ones)."""
        return {name: task for name, task in self.items() if not name.startswith("celery.")}
