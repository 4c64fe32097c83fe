"""``group``: tasks that run in parallel; their results come back in member order.

Celery's form: ``{"task": "celery.group", "kwargs": {"tasks": [sig, ...]},
"subtask_type": "group", ...}``; the group's id is its ``options.task_id``. Each member's
message carries the group's id and its position (``group`` and ``group_index`` headers),
and all of them go to the broker in one publish.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from celeriac.canvas.signature import Call, Signature, maybe_signature
from celeriac.canvas.workflow import TaskList

if TYPE_CHECKING:
    from celeriac.app.base import Celery
    from celeriac.result import GroupResult


class group(TaskList[list[Any]]):
    """Tasks run in parallel: ``group(add.s(1, 1), add.s(2, 2))`` or ``group(iterable)``.

    Calling options given to the group (``group(..., queue="q")``) apply to every member.
    """

    subtask_type_name = "group"

    def __init__(self, *tasks: Any, app: Celery | None = None, **options: Any) -> None:
        members: Iterable[Any] = tasks
        if len(tasks) == 1 and not isinstance(tasks[0], Mapping):
            members = tasks[0]  # group([a, b]) or group(sig for ...)
        elif len(tasks) == 1 and isinstance(tasks[0], group):
            members = tasks[0].tasks
        self._init_tasks("celery.group", members, app, options)

    def __len__(self) -> int:
        return len(self.tasks)

    def __or__(self, other: Any) -> Any:
        """``group | task``: a chord (the task gets the list of results)."""
        from celeriac.canvas.chord import chord

        if isinstance(other, Signature):
            if isinstance(other, group) and not other.tasks:
                return self
            return chord(self, body=other, app=self._app)
        return NotImplemented

    def link(self, callback: Mapping[str, Any]) -> Signature[Any]:
        """Celery's group link: an immutable copy of ``callback`` runs after the first member.

        To run a task with every member's result, use a chord: ``group(...) | callback``.
        """
        sig = maybe_signature(callback, app=self._app)._copy().set(immutable=True)
        if self.tasks:
            self.tasks[0].link(sig)
        return sig

    def link_error(self, errback: Mapping[str, Any]) -> Signature[Any]:
        """Run ``errback`` when any member fails (it may run once per failed member)."""
        sig = maybe_signature(errback, app=self._app)
        for task in self.tasks:
            task.link_error(sig._copy())
        return sig

    def set_immutable(self, immutable: bool) -> None:
        """Make every member (im)mutable."""
        for task in self.tasks:
            task.set_immutable(immutable)

    # -- sending --------------------------------------------------------------------------
    def apply_async(  # type: ignore[override]  # a group's result is a GroupResult
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult:
        """Send every member in one publish; ``args`` are prepended to each one's.

        Returns the GroupResult (call its ``save()`` to be able to ``restore`` it by id).

        Raises:
            TypeError: ``link``/``link_error`` given: link the members, or use a chord.
        """
        _refuse_links(options)
        return cast("GroupResult", super().apply_async(args, kwargs, **options))

    async def aapply_async(  # type: ignore[override]  # a group's result is a GroupResult
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult:
        """``apply_async`` for asyncio code: the broker I/O does not block the loop."""
        _refuse_links(options)
        return cast("GroupResult", await super().aapply_async(args, kwargs, **options))

    def delay(self, *args: Any, **kwargs: Any) -> GroupResult:  # type: ignore[override]
        """``apply_async`` with ``args`` prepended to every member's arguments."""
        return self.apply_async(args, kwargs)

    async def adelay(self, *args: Any, **kwargs: Any) -> GroupResult:  # type: ignore[override]
        """``delay`` for asyncio code."""
        return await self.aapply_async(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> GroupResult:  # type: ignore[override]
        """Send the group (``group(...)(partial args)``)."""
        return self.apply_async(args, kwargs)

    def freeze(  # type: ignore[override]  # a group's result is a GroupResult
        self,
        _id: str | None = None,
        group_id: str | None = None,
        chord: Mapping[str, Any] | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> GroupResult:
        """Give the group its id and every member its id and position.

        Nested groups are flattened into this one, as in Celery. A group that is itself
        part of a chord header (the last step of a chain there) takes the header's id, so
        its members count towards that chord.
        """
        from celeriac.result import GroupResult

        options = self["options"]
        gid = options.get("task_id") or group_id or _id or str(uuid.uuid4())
        options["task_id"] = gid
        if group_id and "group_id" not in options:
            options["group_id"] = group_id
        if chord:
            options["chord"] = chord
        if group_index is not None:
            options["group_index"] = group_index
        members = self._flattened()
        self["kwargs"]["tasks"] = members
        results = [
            member.freeze(
                group_id=gid, chord=chord, root_id=root_id, parent_id=parent_id, group_index=i
            )
            for i, member in enumerate(members)
        ]
        return GroupResult(gid, results, app=self._app)

    def _flattened(self) -> list[Signature[Any]]:
        from celeriac.canvas.chain import chain

        members: list[Signature[Any]] = []
        for task in self.tasks:
            if isinstance(task, group):
                members.extend(task._flattened())
            elif not (isinstance(task, chain) and not task.tasks):
                members.append(task)
        return members

    def _calls(
        self, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None, options: dict[str, Any]
    ) -> list[Call]:
        partial_args, partial_kwargs = self._own_args(args, kwargs)
        sending = self._sending_options(options)
        calls: list[Call] = []
        for member in self.tasks:
            calls.extend(member._calls(partial_args, partial_kwargs, dict(sending)))
        return calls

    def apply(  # type: ignore[override]  # a group's result is a GroupResult
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult:
        """Run every member here, one after the other; a GroupResult of eager results."""
        from celeriac.result import GroupResult

        sig = self._copy()
        gid = sig.freeze(options.pop("task_id", None)).id
        partial_args, partial_kwargs = sig._own_args(args, kwargs)
        results = [member.apply(partial_args, partial_kwargs, **options) for member in sig.tasks]
        return GroupResult(gid, results, app=self._app)

    def __repr__(self) -> str:
        return f"group({self.tasks!r})" if self.tasks else "group(<empty>)"


def maybe_unroll_group(sig: Signature[Any]) -> Signature[Any]:
    """A group of one member is that member (it then behaves as a plain step)."""
    if isinstance(sig, group) and len(sig.tasks) == 1:
        return sig.tasks[0]
    return sig


def _refuse_links(options: Mapping[str, Any]) -> None:
    if options.get("link") is not None:
        raise TypeError("a group takes no link: use a chord, group(...) | callback")
    if options.get("link_error") is not None:
        raise TypeError("a group takes no link_error: use group.link_error(errback)")
