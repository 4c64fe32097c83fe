"""``chain``: tasks run one after the other, each result passed to the next.

Celery's form: ``{"task": "celery.chain", "kwargs": {"tasks": [sig, ...]},
"subtask_type": "chain", ...}``. Only the first task is sent; its message carries the rest
of the chain in its ``chain`` field, in reverse order, and the worker that finishes a task
sends the last item of that list with the result prepended to its arguments (unless it is
immutable) and the remaining list, so a Celery worker runs our chains and we run Celery's.

Steps are normalized the way Celery does when a chain is sent: nested chains are spliced
in, a group followed by another step becomes a chord whose body is that step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from celeriac.canvas.chord import chord, first_of
from celeriac.canvas.group import group, maybe_unroll_group
from celeriac.canvas.signature import Call, Signature, signatures
from celeriac.canvas.workflow import TaskList, Workflow

if TYPE_CHECKING:
    from celeriac.app.base import Celery
    from celeriac.result import AnyResult


class chain(TaskList[Any]):
    """``chain(a, b, c)`` (or ``a | b | c``): ``c(b(a()))``, each as its own task.

    ``chain(generator)`` takes the steps from an iterable. ``apply_async`` returns the last
    task's result; ``result.parent`` walks back through the earlier ones.
    """

    subtask_type_name = "chain"

    def __init__(self, *tasks: Any, app: Celery | None = None, **options: Any) -> None:
        steps: Any = tasks
        if len(tasks) == 1 and not isinstance(tasks[0], Mapping):
            steps = tasks[0]
        self._init_tasks("celery.chain", steps, app, options)

    def __or__(self, other: Any) -> Any:
        """``chain | step``: a longer chain (a chain on the right is spliced in)."""
        if not isinstance(other, Signature):
            return NotImplemented
        steps = [task._copy() for task in self.tasks]
        if isinstance(other, chain):
            steps.extend(task._copy() for task in other.tasks)
        elif not (isinstance(other, group) and not other.tasks):
            steps.append(other._copy())
        sig = chain(steps, app=self._app)
        sig["options"].update(self["options"])
        return sig

    def link(self, callback: Mapping[str, Any]) -> Signature[Any]:
        """Run ``callback`` with the last task's result."""
        return self._append_option("link", callback)

    def link_error(self, errback: Mapping[str, Any]) -> Signature[Any]:
        """Run ``errback`` when any step fails (the chain stops there)."""
        return self._append_option("link_error", errback)

    # -- sending --------------------------------------------------------------------------
    def _steps(self) -> list[Signature[Any]]:
        """The steps as they will run: spliced, upgraded to chords, links attached."""
        flat: list[Signature[Any]] = []
        for task in self.tasks:
            if isinstance(task, chain):
                flat.extend(task._steps())
                continue
            step = maybe_unroll_group(task)
            if isinstance(step, group) and not step.tasks and len(self.tasks) > 1:
                continue  # an empty group is no step at all
            flat.append(step)
        steps: list[Signature[Any]] = []
        for step in reversed(flat):
            if isinstance(step, group) and steps:
                # A group followed by a step: that step is the body of a chord.
                steps.append(chord(step, body=steps.pop(), app=self._app))
            else:
                steps.append(step)
        steps.reverse()
        for callback in self["options"].get("link") or ():
            steps[-1].link(callback)
        for errback in self["options"].get("link_error") or ():
            for step in steps:
                step.link_error(errback)
        return steps

    def freeze(  # type: ignore[override]  # the last step's result (maybe a group's)
        self,
        _id: str | None = None,
        group_id: str | None = None,
        chord: Mapping[str, Any] | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> AnyResult:
        """Give every step its id; the last one takes the chain's place in a group or chord.

        Returns the last step's result; each result's ``parent`` is the previous step's.
        """
        if not self.tasks:
            raise ValueError("an empty chain has nothing to run")
        steps = self._steps()
        self["kwargs"]["tasks"] = steps
        results: list[AnyResult] = []
        last = len(steps) - 1
        for i, step in enumerate(steps):
            first_parent = parent_id if i == 0 else None
            if i == last:
                result = step.freeze(
                    _id, group_id, chord, root_id, first_parent, group_index=group_index
                )
            else:
                result = step.freeze(root_id=root_id, parent_id=first_parent)
            if results:
                first_of(result).parent = results[-1]
            results.append(result)
        self["options"]["task_id"] = results[-1].id
        return results[-1]

    def _start(
        self, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None, options: dict[str, Any]
    ) -> tuple[Any, list[Call]]:
        """As Celery: ``apply_async(link=..., link_error=...)`` on a chain means what
        ``chain.link``/``chain.link_error`` mean (the errback reaches every step), not an
        option of the first step alone."""
        given = {key: options.pop(key) for key in ("link", "link_error") if options.get(key)}
        if not given:
            return super()._start(args, kwargs, options)
        sig = self._copy()
        for key, value in given.items():
            for callback in signatures(value, self._app):
                sig._append_option(key, callback)
        return Workflow._start(sig, args, kwargs, options)

    def _calls(
        self, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None, options: dict[str, Any]
    ) -> list[Call]:
        first, *rest = self.tasks
        sending = self._sending_options(options)
        # The rest travels reversed (the worker pops the next step off the end), in front
        # of what an enclosing chain left to run after this one.
        embed = [*(sending.pop("chain", None) or ()), *reversed(rest)]
        if embed:
            sending["chain"] = embed
        partial_args, partial_kwargs = self._own_args(args, kwargs)
        return first._calls(partial_args, partial_kwargs, sending)

    def apply(  # type: ignore[override]
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AnyResult:
        """Run the steps here, one after the other; returns the last one's eager result."""
        from celeriac import states

        sig = self._copy()
        sig.freeze(options.pop("task_id", None))
        partial_args, partial_kwargs = sig._own_args(args, kwargs)
        previous: AnyResult | None = None
        for step in sig.tasks:
            if previous is None:
                result = step.apply(partial_args, partial_kwargs, **options)
            else:
                result = step.apply((previous.get(disable_sync_subtasks=False),), **options)
                first_of(result).parent = previous
            previous = result
            if getattr(result, "state", None) in (states.IGNORED, states.REJECTED):
                break
        assert previous is not None
        return previous

    def __repr__(self) -> str:
        return " | ".join(repr(task) for task in self.tasks) if self.tasks else "chain(<empty>)"
