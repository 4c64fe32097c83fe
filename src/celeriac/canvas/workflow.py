"""``Workflow``: what chain, group and chord share: sent in one publish, or run here.

Sending is two steps on a private copy: ``freeze`` gives every task its id and its place
(group, chord), so the results exist before anything is sent; ``_calls`` lists the task
messages that start the workflow, which ``Celery.send_many`` publishes in one transport
call. ``aapply_async`` does the same for asyncio code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Self

from celeriac.canvas.signature import (
    MEMBERSHIP_OPTIONS,
    SIGNATURE_TYPES,
    Call,
    R,
    Signature,
    as_member,
    maybe_signature,
)

if TYPE_CHECKING:
    from celeriac.app.base import Celery
    from celeriac.result import AnyResult


class Workflow(Signature[R]):
    """A signature of several tasks (chain, group, chord): sent with one publish.

    Subclasses fill in ``freeze`` (ids and places for every task), ``_calls`` (the
    messages that start the workflow), ``_copy`` (copying their members too) and
    ``apply`` (running it here, eagerly).
    """

    subtask_type_name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.subtask_type_name:
            SIGNATURE_TYPES[cls.subtask_type_name] = cls

    def _start(
        self, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None, options: dict[str, Any]
    ) -> tuple[Any, list[Call]]:
        sig = self._copy()
        result = sig.freeze(
            options.pop("task_id", None),
            group_id=options.pop("group_id", None),
            chord=options.pop("chord", None),
            root_id=options.get("root_id"),
            parent_id=options.get("parent_id"),
            group_index=options.pop("group_index", None),
        )
        return result, sig._calls(args, kwargs, options)

    def apply_async(  # type: ignore[override]  # a group's result is a GroupResult
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AnyResult:
        """Send the workflow: every task that starts it, in one publish.

        Returns the result of what finishes it (a chain's last task, a chord's body, a
        group's ``GroupResult``), linked to the earlier ones through ``parent``.
        """
        app = self.app
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        adds_to_parent = options.pop("add_to_parent", True)
        result, calls = self._start(args, kwargs, options)
        app.send_many(calls)
        if adds_to_parent:
            _add_to_parent(result)
        return result  # type: ignore[no-any-return]

    async def aapply_async(  # type: ignore[override]  # a group's result is a GroupResult
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AnyResult:
        """``apply_async`` for asyncio code: the broker I/O does not block the loop."""
        app = self.app
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        adds_to_parent = options.pop("add_to_parent", True)
        result, calls = self._start(args, kwargs, options)
        await app.asend_many(calls)
        if adds_to_parent:
            _add_to_parent(result)
        return result  # type: ignore[no-any-return]

    def _own_args(
        self, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None
    ) -> tuple[list[Any], dict[str, Any]]:
        """The call's partial arguments before the workflow's own (unless immutable)."""
        own_args, own_kwargs = list(self["args"]), dict(self["kwargs"].get("kwargs") or {})
        if self.immutable:
            return own_args, own_kwargs
        return [*(args or ()), *own_args], {**own_kwargs, **(kwargs or {})}

    def _sending_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The workflow's own calling options (``.set(queue=...)``) under the call's."""
        skip = ("task_id", "link", "link_error", *MEMBERSHIP_OPTIONS)
        own = {k: v for k, v in self["options"].items() if k not in skip}
        return {**own, **options}

    def delay(self, *args: Any, **kwargs: Any) -> AnyResult:  # type: ignore[override]
        """``apply_async`` with positional and keyword arguments."""
        return self.apply_async(args, kwargs)

    async def adelay(self, *args: Any, **kwargs: Any) -> AnyResult:  # type: ignore[override]
        """``delay`` for asyncio code."""
        return await self.aapply_async(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Send the workflow (as Celery does when a workflow is called)."""
        return self.apply_async(args, kwargs)


def _add_to_parent(result: AnyResult) -> None:
    """Record a workflow sent from inside a task among that task's children."""
    from celeriac.app.state import current_request

    parent = current_request.get()
    if parent is not None and parent.id and not parent.called_directly:
        parent.children.append(result)


class TaskList(Workflow[R]):
    """A workflow whose tasks are one list under ``kwargs.tasks`` (chain, group)."""

    def _init_tasks(
        self, name: str, members: Any, app: Celery | None, options: Mapping[str, Any]
    ) -> None:
        """Build the signature of ``name`` over copies of ``members`` (the app of the first
        member when none is given)."""
        signatures = [maybe_signature(task, app)._copy() for task in members]
        if app is None and signatures:
            app = signatures[0]._app
        super().__init__(name, (), {"tasks": signatures}, options, self.subtask_type_name, app=app)

    def _adopt(self) -> None:
        tasks = self["kwargs"].get("tasks") or []
        self["kwargs"]["tasks"] = [as_member(task, self._app) for task in tasks]

    def _copy(self) -> Self:
        sig = super()._copy()
        sig["kwargs"]["tasks"] = [task._copy() for task in self.tasks]
        return sig  # type: ignore[return-value]  # same class

    @property
    def tasks(self) -> list[Signature[Any]]:
        """The tasks (the workflow's own list: changes to it change the workflow)."""
        tasks: list[Signature[Any]] = self["kwargs"]["tasks"]
        return tasks
