"""``xmap``, ``xstarmap`` and ``chunks``: one task applied to many arguments.

``xmap(task, items)`` (``task.map(items)``) is ONE message: the built-in ``celery.map`` task
calls ``task`` on each item in turn, in the worker, and returns the list of results;
``xstarmap`` (``task.starmap``, built-in ``celery.starmap``) unpacks each item as the
arguments. ``chunks(task, items, n)`` (``task.chunks(items, n)``) splits the items into
parts of ``n`` and sends a group of ``xstarmap`` tasks, one per part: parallel, with a
list of lists as the result. The forms are Celery's (``{"task": "celery.map", "kwargs":
{"task": sig, "it": [...]}}``...), so they run on either side.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from celeriac.canvas.group import group as GroupSignature
from celeriac.canvas.signature import Signature, as_member, maybe_signature

if TYPE_CHECKING:
    from celeriac.app.base import Celery
    from celeriac.result import GroupResult


class _basemap(Signature[list[Any]]):
    """A signature of a built-in task that applies ``task`` to every item of ``it``."""

    task_name = ""

    def __init__(
        self, task: Any, it: Iterable[Any], app: Celery | None = None, **options: Any
    ) -> None:
        sig = maybe_signature(task, app)
        items = [list(item) if isinstance(item, tuple) else item for item in it]
        content = {"task": sig._copy(), "it": items}
        super().__init__(self.task_name, (), content, options, immutable=True, app=app or sig._app)

    def _adopt(self) -> None:
        if self["kwargs"].get("task") is not None:
            self["kwargs"]["task"] = as_member(self["kwargs"]["task"], self._app)

    def __repr__(self) -> str:
        return f"[{self['kwargs']['task']!r}(x) for x in {self['kwargs']['it']!r:.100}]"


class xmap(_basemap):
    """``[task(item) for item in it]`` in one task (``celery.map``)."""

    task_name = "celery.map"


class xstarmap(_basemap):
    """``[task(*item) for item in it]`` in one task (``celery.starmap``)."""

    task_name = "celery.starmap"


class chunks(Signature[list[Any]]):
    """``it`` split in parts of ``n`` items, each part an ``xstarmap`` task, sent as a group."""

    def __init__(
        self, task: Any, it: Iterable[Any], n: int, app: Celery | None = None, **options: Any
    ) -> None:
        if n < 1:
            raise ValueError(f"chunks need a size of at least 1, got {n}")
        sig = maybe_signature(task, app)
        content = {"task": sig._copy(), "it": [list(item) for item in it], "n": n}
        super().__init__("celery.chunks", (), content, options, immutable=True, app=app or sig._app)

    def _adopt(self) -> None:
        if self["kwargs"].get("task") is not None:
            self["kwargs"]["task"] = as_member(self["kwargs"]["task"], self._app)

    def group(self) -> GroupSignature:
        """The group of ``xstarmap`` tasks this sends (one per part)."""
        task, items, n = self["kwargs"]["task"], self["kwargs"]["it"], int(self["kwargs"]["n"])
        parts = (items[start : start + n] for start in range(0, len(items), n))
        members = [xstarmap(task, part, app=self._app) for part in parts]
        return GroupSignature(members, app=self._app, **self["options"])

    def apply_async(  # type: ignore[override]  # a group's result
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult:
        """Send the parts as a group; its GroupResult's ``get()`` is a list of lists."""
        result: GroupResult = self.group().apply_async(args, kwargs, **options)
        return result

    async def aapply_async(  # type: ignore[override]  # a group's result
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult:
        """``apply_async`` for asyncio code."""
        result: GroupResult = await self.group().aapply_async(args, kwargs, **options)
        return result

    def delay(self, *args: Any, **kwargs: Any) -> GroupResult:  # type: ignore[override]
        """``apply_async``."""
        return self.apply_async(args, kwargs)

    def __call__(self, **options: Any) -> GroupResult:  # type: ignore[override]
        """Send the parts (as Celery's ``chunks(...)()`` does)."""
        return self.apply_async(**options)

    def apply(  # type: ignore[override]
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult:
        """Run every part here."""
        return self.group().apply(args, kwargs, **options)
