"""Signatures: a task call packaged as data, to send now, later, or as a callback.

A ``Signature`` is a dict in Celery's form, so it travels in messages unchanged::

    {"task": "proj.add", "args": [2], "kwargs": {}, "options": {},
     "subtask_type": None, "immutable": False}

Calling it with more arguments makes a partial application: the new positional arguments
come first (that is how a callback receives its parent's result), unless it is immutable.

Workflows (``chain``, ``group``, ``chord``) are signatures too, told apart by
``subtask_type``; :func:`from_dict` rebuilds the right class from a dict that arrived in a
message. A workflow is sent in two steps: ``freeze`` gives every task its id and its place
(group, chord), so the results exist before anything is sent; ``_calls`` lists the task
messages that start it, which go to the broker in one publish.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

from celeriac.utils.ids import uuid4_text

if TYPE_CHECKING:
    from celeriac.app.base import Celery
    from celeriac.app.task import Task
    from celeriac.result import AsyncResult, EagerResult

R = TypeVar("R")

SIGNATURE_KEYS = ("task", "args", "kwargs", "options", "subtask_type", "immutable")

#: ``subtask_type`` -> class, filled in by the workflow modules (chain, group, chord).
SIGNATURE_TYPES: dict[str, type[Signature[Any]]] = {}

#: Options that give a task its place in a workflow (set by ``freeze``, never overridden
#: by a call's options: that would detach it from the group or chord waiting for it).
MEMBERSHIP_OPTIONS = ("group_id", "group_index", "chord")


class Call(NamedTuple):
    """One task message a signature sends: what ``Celery.send_many`` takes."""

    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]


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
            self._set_defaults()
            self._adopt()
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

    def _set_defaults(self) -> None:
        self.setdefault("args", [])
        self.setdefault("kwargs", {})
        self.setdefault("options", {})
        self.setdefault("subtask_type", None)
        self.setdefault("immutable", False)

    def _adopt(self) -> None:
        """Turn nested signature dicts (a workflow's members) into signatures."""

    @classmethod
    def _from_dict(cls, data: Mapping[str, Any], app: Celery | None) -> Signature[Any]:
        sig = cls.__new__(cls)
        sig._app = app
        dict.__init__(sig, data)
        sig._set_defaults()
        sig._adopt()
        return sig

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
        """Calling options (queue, countdown, link...): the signature's own dict."""
        options: dict[str, Any] = self["options"]
        return options

    @property
    def subtask_type(self) -> str | None:
        """None for a task; ``chain``, ``group`` or ``chord`` for a workflow."""
        value = self.get("subtask_type")
        return str(value) if value is not None else None

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
    def _copy(self) -> Signature[R]:
        """A copy whose args, kwargs and options (and members) can change independently."""
        cls = type(self)
        sig = cls.__new__(cls)
        sig._app = self._app
        dict.__init__(sig, self)
        sig["args"] = list(self["args"])
        sig["kwargs"] = dict(self["kwargs"])
        sig["options"] = dict(self["options"])
        return sig

    def clone(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **opts: Any,
    ) -> Signature[R]:
        """A copy with ``args`` prepended, ``kwargs`` and options merged (unless immutable).

        Options override the signature's own, except those giving it its place in a group
        or chord (``group_id``...), which stay as frozen.
        """
        sig = self._copy()
        if not self.immutable:
            if args:
                sig["args"] = [*args, *sig["args"]]
            if kwargs:
                sig["kwargs"] = {**sig["kwargs"], **kwargs}
        if opts:
            own = sig["options"]
            own.update(
                {k: v for k, v in opts.items() if k not in MEMBERSHIP_OPTIONS or k not in own}
            )
        return sig

    partial = clone

    def replace(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> Signature[R]:
        """A copy with its args, kwargs or options replaced (those given)."""
        sig = self._copy()
        if args is not None:
            sig["args"] = list(args)
        if kwargs is not None:
            sig["kwargs"] = dict(kwargs)
        if options is not None:
            sig["options"] = dict(options)
        return sig

    def set(self, immutable: bool | None = None, **options: Any) -> Signature[R]:
        """Set calling options in place; returns the signature."""
        if immutable is not None:
            self.set_immutable(immutable)
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

    def on_error(self, errback: Mapping[str, Any]) -> Signature[R]:
        """``link_error`` that returns this signature, to keep building: ``s.on_error(e)``."""
        self.link_error(errback)
        return self

    def _append_option(self, key: str, value: Mapping[str, Any]) -> Signature[Any]:
        sig = maybe_signature(value, app=self._app)
        links = list(self["options"].get(key) or [])
        if sig not in links:
            links.append(sig)
        self["options"][key] = links
        return sig

    def freeze(
        self,
        _id: str | None = None,
        group_id: str | None = None,
        chord: Mapping[str, Any] | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> AsyncResult[R]:
        """Fix the task id (and its place in a group or chord) before sending.

        The result can then be handed out (or waited for) before the task is sent. An id
        fixed earlier is kept.
        """
        from celeriac.result import AsyncResult

        options = self["options"]
        task_id = options.get("task_id") or _id or uuid4_text()
        options["task_id"] = task_id
        if root_id:
            options["root_id"] = root_id
        if parent_id:
            options["parent_id"] = parent_id
        if group_id and "group_id" not in options:
            options["group_id"] = group_id
        if chord:
            options["chord"] = chord
        if group_index is not None:
            options["group_index"] = group_index
        return AsyncResult(task_id, app=self.app, task_name=self.task)

    def __or__(self, other: Any) -> Any:
        """``a | b``: a chain (a group or chord on the right joins it as one step)."""
        from celeriac.canvas.chain import chain

        if isinstance(other, Signature):
            return chain(self, other, app=self._app)
        return NotImplemented

    def __ior__(self, other: Any) -> Any:  # ``sig |= other``: a chain, not a dict merge
        return self.__or__(other)

    # -- calling --------------------------------------------------------------------------
    def _calls(
        self, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None, options: dict[str, Any]
    ) -> list[Call]:
        """The task messages that start this signature (one, for a task), not yet sent.

        Merges like ``clone`` without copying the signature (a workflow sends its own copy).
        """
        own_args, own_kwargs, own = self["args"], self["kwargs"], self["options"]
        if self.immutable:
            args_list, kwargs_dict = list(own_args), dict(own_kwargs)
        else:
            args_list = [*args, *own_args] if args else list(own_args)
            kwargs_dict = {**own_kwargs, **kwargs} if kwargs else dict(own_kwargs)
        merged = dict(own)
        for key, value in options.items():
            if key not in MEMBERSHIP_OPTIONS or key not in own:
                merged[key] = value
        task = self.app.tasks.get(self["task"])
        if task is None:
            return [Call(self.task, args_list, kwargs_dict, merged)]
        return [Call(task.name, *task._call_options(args_list, kwargs_dict, merged))]

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
            result: AsyncResult[R] = task.apply_async(sig["args"], sig["kwargs"], **sig.options)
            return result
        return app.send_task(sig.task, sig["args"], sig["kwargs"], **sig.options)

    async def aapply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """``apply_async`` for asyncio code: the broker I/O does not block the loop."""
        sig = self.clone(args, kwargs, **options)
        app = self.app
        task = app.tasks.get(sig.task)
        if task is not None:
            sent: AsyncResult[R] = await task.aapply_async(
                sig["args"], sig["kwargs"], **sig.options
            )
            return sent
        return await app.asend_task(sig.task, sig["args"], sig["kwargs"], **sig.options)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[R]:
        """``apply_async`` with positional and keyword arguments."""
        return self.apply_async(args, kwargs)

    async def adelay(self, *args: Any, **kwargs: Any) -> AsyncResult[R]:
        """``delay`` for asyncio code."""
        return await self.aapply_async(args, kwargs)

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **opts: Any,
    ) -> EagerResult[R]:
        """Run the task here and now; returns an eager result."""
        sig = self.clone(args, kwargs, **opts)
        return self.type.apply(sig["args"], sig["kwargs"], **sig.options)

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        """Call the task function in this process (no message is sent)."""
        sig = self.clone(args, kwargs)
        return self.type(*sig["args"], **sig["kwargs"])

    def __repr__(self) -> str:
        args = ", ".join(
            [*(repr(a) for a in self["args"]), *(f"{k}={v!r}" for k, v in self["kwargs"].items())]
        )
        return f"{self.task}({args}){'!' if self.immutable else ''}"

    def __deepcopy__(self, memo: dict[int, Any]) -> Signature[R]:
        sig = type(self)._from_dict(copy.deepcopy(dict(self), memo), self._app)
        return sig

    def __reduce__(self) -> Any:
        return (from_dict, (dict(self),))


def from_dict(data: Mapping[str, Any], app: Celery | None = None) -> Signature[Any]:
    """The signature (of the right class: chain, group...) for a dict in Celery's form."""
    cls = SIGNATURE_TYPES.get(str(data.get("subtask_type")), Signature)
    return cls._from_dict(data, app)


def as_member(value: Any, app: Celery | None) -> Signature[Any]:
    """A workflow member as a signature, without copying it (the caller owns the data)."""
    if isinstance(value, Signature):
        return value
    if isinstance(value, Mapping) and "task" in value:
        return from_dict(value, app)
    raise TypeError(f"expected a signature (or its dict form), got {value!r}")


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
    if isinstance(varies, Mapping):
        return from_dict(copy.deepcopy(dict(varies)), app)
    immutable = bool(extra.pop("immutable", False))
    return Signature(varies, args, kwargs, options, immutable=immutable, app=app, **extra)


subtask = signature


def maybe_signature(value: Any, app: Celery | None = None) -> Signature[Any]:
    """``value`` as a signature (a dict in Celery's form is converted, with its class).

    Raises:
        TypeError: ``value`` is neither a signature nor a mapping with a ``task`` key.
    """
    if isinstance(value, Signature):
        return value
    if isinstance(value, Mapping) and "task" in value:
        return from_dict(copy.deepcopy(dict(value)), app)
    raise TypeError(f"expected a signature (or its dict form), got {value!r}")


maybe_subtask = maybe_signature


def signatures(values: Any, app: Celery | None = None) -> list[Signature[Any]]:
    """One signature or a list of them (for ``link``/``link_error``), as a list."""
    if values is None:
        return []
    if isinstance(values, Mapping):
        return [maybe_signature(values, app)]
    if isinstance(values, Iterable):
        return [maybe_signature(v, app) for v in values]
    raise TypeError(f"expected a signature or a list of them, got {values!r}")
