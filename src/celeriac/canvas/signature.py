"""Signatures: a task call packaged as data, to send now, later, or as a callback.

A ``Signature`` is a dict in Celery's form, so it travels in messages unchanged::

    {"task": "proj.add", "args": [2], "kwargs": {}, "options": {},
     "subtask_type": None, "immutable": False}

Calling it with more arguments makes a partial application: the new positional arguments
come first (that is how a callback receives its parent's result), unless it is immutable.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from celeriac.app.base import Celery
    from celeriac.app.task import Task
    from celeriac.result import AsyncResult

R = TypeVar("R")

SIGNATURE_KEYS = ("task", "args", "kwargs", "options", "subtask_type", "immutable")


class Signature(dict[str, Any], Generic[R]):
    """A task name with arguments and options (Celery's ``signature``/``subtask``)."""

    def __init__(
        self,
        task: str | Task[Any, R] | Mapping[str, Any],
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        subtask_type: str | None = None,
        immutable: bool = False,
        app: Celery | None = None,
        **extra: Any,
    ) -> None:
        self._app = app
        if isinstance(task, Mapping):
            super().__init__(copy.deepcopy(dict(task)))
            self.setdefault("args", [])
            self.setdefault("kwargs", {})
            self.setdefault("options", {})
            self.setdefault("subtask_type", None)
            self.setdefault("immutable", False)
            return
        name = task if isinstance(task, str) else task.name
        if not isinstance(task, str) and app is None:
            self._app = task.app
        if args is not None and not isinstance(args, list | tuple):
            raise TypeError(f"signature args must be a list or tuple, not {type(args).__name__}")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise TypeError(f"signature kwargs must be a mapping, not {type(kwargs).__name__}")
        super().__init__(
            task=name,
            args=list(args or ()),
            kwargs=dict(kwargs or {}),
            options=dict(options or {}),
            subtask_type=subtask_type,
            immutable=immutable,
            **extra,
        )

    # -- fields ---------------------------------------------------------------------------
    @property
    def task(self) -> str:
        """The task name."""
        return str(self["task"])

    name = task

    @property
    def args(self) -> list[Any]:
        """Positional arguments (a partial's first ones come from the caller)."""
        return list(self["args"])

    @property
    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments."""
        return dict(self["kwargs"])

    @property
    def options(self) -> dict[str, Any]:
        """Calling options (queue, countdown, link...)."""
        return dict(self["options"])

    @property
    def immutable(self) -> bool:
        """True when calls and callbacks must not add arguments."""
        return bool(self.get("immutable"))

    @property
    def id(self) -> str | None:
        """The task id this signature will use, once frozen."""
        task_id = self["options"].get("task_id")
        return str(task_id) if task_id is not None else None

    @property
    def app(self) -> Celery:
        """The app this signature sends with (the current app when not bound)."""
        if self._app is None:
            from celeriac.app.state import get_current_app

            return get_current_app()
        return self._app

    @property
    def type(self) -> Task[Any, R]:
        """The registered task object.

        Raises:
            NotRegistered: The task is not known to the app.
        """
        task: Task[Any, R] = self.app.tasks[self.task]
        return task

    # -- building -------------------------------------------------------------------------
    def clone(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **opts: Any,
    ) -> Signature[R]:
        """A copy with ``args`` prepended, ``kwargs`` and options merged (unless immutable)."""
        sig: Signature[R] = Signature(dict(self), app=self._app)
        if not self.immutable:
            if args:
                sig["args"] = [*args, *sig["args"]]
            if kwargs:
                sig["kwargs"] = {**sig["kwargs"], **kwargs}
        if opts:
            sig["options"] = {**sig["options"], **opts}
        return sig

    partial = clone

    def set(self, immutable: bool | None = None, **options: Any) -> Signature[R]:
        """Set calling options in place; returns the signature."""
        if immutable is not None:
            self["immutable"] = immutable
        self["options"].update(options)
        return self

    def set_immutable(self, immutable: bool) -> None:
        """Make the signature (im)mutable."""
        self["immutable"] = immutable

    def link(self, callback: Mapping[str, Any]) -> Signature[Any]:
        """Add a callback run with this task's result; returns the callback."""
        return self._append_option("link", callback)

    def link_error(self, errback: Mapping[str, Any]) -> Signature[Any]:
        """Add an errback run when this task fails; returns the errback."""
        return self._append_option("link_error", errback)

    def _append_option(self, key: str, value: Mapping[str, Any]) -> Signature[Any]:
        sig = maybe_signature(value, app=self._app)
        links = list(self["options"].get(key) or [])
        if sig not in links:
            links.append(sig)
        self["options"][key] = links
        return sig

    def freeze(self, _id: str | None = None) -> AsyncResult[R]:
        """Fix the task id now, so the result can be referred to before sending."""
        import uuid

        from celeriac.result import AsyncResult

        task_id = _id or self.id or str(uuid.uuid4())
        self["options"]["task_id"] = task_id
        return AsyncResult(task_id, app=self.app, task_name=self.task)

    # -- calling --------------------------------------------------------------------------
    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Send the task, with ``args``/``kwargs`` merged as a partial application."""
        sig = self.clone(args, kwargs, **options)
        app = self.app
        task = app.tasks.get(sig.task)
        if task is not None:
            result: AsyncResult[R] = task.apply_async(sig["args"], sig["kwargs"], **sig["options"])
            return result
        return app.send_task(sig.task, sig["args"], sig["kwargs"], **sig["options"])

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[R]:
        """``apply_async`` with positional and keyword arguments."""
        return self.apply_async(args, kwargs)

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **opts: Any,
    ) -> AsyncResult[R]:
        """Run the task here and now; returns an eager result."""
        sig = self.clone(args, kwargs, **opts)
        result: AsyncResult[R] = self.type.apply(sig["args"], sig["kwargs"], **sig["options"])
        return result

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        """Call the task function in this process (no message is sent)."""
        sig = self.clone(args, kwargs)
        return self.type(*sig["args"], **sig["kwargs"])

    def __repr__(self) -> str:
        args = ", ".join(
            [*(repr(a) for a in self["args"]), *(f"{k}={v!r}" for k, v in self["kwargs"].items())]
        )
        return f"{self.task}({args}){'!' if self.immutable else ''}"

    def __reduce__(self) -> Any:
        return (Signature, (dict(self),))


def signature(
    varies: str | Task[Any, R] | Mapping[str, Any],
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    app: Celery | None = None,
    **extra: Any,
) -> Signature[R]:
    """A signature from a task name, a task, a dict in Celery's form, or a signature."""
    if isinstance(varies, Signature):
        return varies.clone()
    immutable = bool(extra.pop("immutable", False))
    return Signature(varies, args, kwargs, options, immutable=immutable, app=app, **extra)


subtask = signature


def maybe_signature(value: Any, app: Celery | None = None) -> Signature[Any]:
    """``value`` as a signature (a dict in Celery's form is converted).

    Raises:
        TypeError: ``value`` is neither a signature nor a mapping with a ``task`` key.
    """
    if isinstance(value, Signature):
        return value
    if isinstance(value, Mapping) and "task" in value:
        return Signature(value, app=app)
    raise TypeError(f"expected a signature (or its dict form), got {value!r}")


def signatures(values: Any, app: Celery | None = None) -> list[Signature[Any]]:
    """One signature or a list of them (for ``link``/``link_error``), as a list."""
    if values is None:
        return []
    if isinstance(values, Mapping):
        return [maybe_signature(values, app)]
    if isinstance(values, Iterable):
        return [maybe_signature(v, app) for v in values]
    raise TypeError(f"expected a signature or a list of them, got {values!r}")
