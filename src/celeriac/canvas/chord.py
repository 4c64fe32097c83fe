"""``chord``: a group (the header) and a body run once with the list of the header's results.

Celery's form: ``{"task": "celery.chord", "kwargs": {"kwargs": {}, "header": [sig, ...] or
a group, "body": sig}, "subtask_type": "chord", ...}``. Every header task's message carries
the body (the ``chord`` field of the body) and the header's group id; the body carries
``chord_size``, the number of reports that complete the chord. Each header task reports to
the result backend when it finishes, and the one whose report completes the set sends the
body (``celeriac.app.chords``): counted in the backend, no task polls for completion.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from celeriac.canvas.group import group
from celeriac.canvas.signature import Call, Signature, as_member, maybe_signature
from celeriac.canvas.workflow import Workflow

if TYPE_CHECKING:
    from celeriac.app.base import Celery
    from celeriac.result import AnyResult

#: A call's options that delay the header, not the body.
_HEADER_ONLY = ("countdown", "eta")
#: Options that belong to the body alone (the rest of a chain continues after the body).
_BODY_ONLY = ("chain",)


class chord(Workflow[Any]):
    """``chord(header, body)``: ``body`` runs with the header's results, in header order."""

    subtask_type_name = "chord"

    def __init__(
        self,
        header: Any,
        body: Any = None,
        task: str = "celery.chord",
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        app: Celery | None = None,
        **options: Any,
    ) -> None:
        header_sig = header if isinstance(header, group) else group(header, app=app)
        body_sig = maybe_signature(body, app)._copy() if body is not None else None
        if app is None:
            app = header_sig._app or (body_sig._app if body_sig is not None else None)
        content = {**(kwargs or {"kwargs": {}}), "header": header_sig._copy(), "body": body_sig}
        super().__init__(task, args or (), content, options, "chord", app=app)

    def _adopt(self) -> None:
        content = self["kwargs"]
        header = content.get("header") or []
        if isinstance(header, Mapping):
            content["header"] = as_member(header, self._app)
        else:  # Celery keeps a plain list until the chord is frozen
            content["header"] = group([as_member(t, self._app) for t in header], app=self._app)
        if content.get("body") is not None:
            content["body"] = as_member(content["body"], self._app)

    def _copy(self) -> chord:
        sig = super()._copy()
        sig["kwargs"]["header"] = self.tasks._copy()
        if self.body is not None:
            sig["kwargs"]["body"] = self.body._copy()
        return sig  # type: ignore[return-value]  # same class

    @property
    def tasks(self) -> group:
        """The header, as a group."""
        header: group = self["kwargs"]["header"]
        return header

    header = tasks

    @property
    def body(self) -> Signature[Any]:
        """The body: what runs with the header's results."""
        body: Signature[Any] = self["kwargs"]["body"]
        return body

    def __or__(self, other: Any) -> Any:
        """``chord | task``: the task runs after the body, with its result."""
        if isinstance(other, Signature) and not isinstance(other, group):
            sig = self._copy()
            sig["kwargs"]["body"] = sig.body | other
            return sig
        return super().__or__(other)

    def link(self, callback: Mapping[str, Any]) -> Signature[Any]:
        """Run ``callback`` with the body's result."""
        return self.body.link(callback)

    def link_error(self, errback: Mapping[str, Any]) -> Signature[Any]:
        """Run ``errback`` when the body fails, or a header task did (the chord failed)."""
        return self.body.link_error(errback)

    def size(self) -> int:
        """How many reports complete the chord: the header's tasks, nested ones counted."""
        return chord_size(self.tasks)

    # -- sending --------------------------------------------------------------------------
    def freeze(  # type: ignore[override]  # the body's result (maybe a group's)
        self,
        _id: str | None = None,
        group_id: str | None = None,
        chord: Mapping[str, Any] | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> AnyResult:
        """Give every header task its id and the body; the body takes the chord's place.

        Returns the body's result, whose (first) parent is the header's GroupResult.
        """
        if self["kwargs"].get("body") is None:
            raise ValueError("a chord needs a body: chord(header, body) or chord(header)(body)")
        body = self.body
        body_result: AnyResult = body.freeze(
            _id, group_id=group_id, chord=chord, root_id=root_id, group_index=group_index
        )
        header = self.tasks
        body["chord_size"] = chord_size(header)
        header_result = header.freeze(chord=body, root_id=root_id, parent_id=parent_id)
        self["options"]["task_id"] = header_result.id
        first_of(body_result).parent = header_result
        return body_result

    def _calls(
        self, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None, options: dict[str, Any]
    ) -> list[Call]:
        sending = self._sending_options(options)
        body = self.body
        body_only = {k: v for k, v in sending.items() if k not in (*_HEADER_ONLY, "parent_id")}
        body["options"].update(body_only)
        self.freeze()  # ids stay; every header task now carries the body as it is now
        header = self.tasks
        backend = self.app.backend
        backend.ensure_chords_allowed()
        backend.set_chord_size(str(header.id), int(body["chord_size"]))
        partial_args, partial_kwargs = self._own_args(args, kwargs)
        if not header.tasks:
            return body._calls(([],), None, {})
        header_options = {k: v for k, v in sending.items() if k not in _BODY_ONLY}
        return header._calls(partial_args, partial_kwargs, header_options)

    def apply(  # type: ignore[override]
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        propagate: bool = True,
        **options: Any,
    ) -> AnyResult:
        """Run the header here, then the body with its results; returns the body's result."""
        sig = self._copy()
        sig.freeze(options.pop("task_id", None))
        partial_args, partial_kwargs = sig._own_args(args, kwargs)
        values = sig.tasks.apply(partial_args, partial_kwargs).get(propagate=propagate)
        return sig.body.apply((values,), **options)

    def __call__(self, body: Any = None, **options: Any) -> Any:
        """``chord(header)(body)``: send the chord with this body."""
        sig = self
        if body is not None:
            sig = self._copy()
            sig["kwargs"]["body"] = maybe_signature(body, self._app)._copy()
        return sig.apply_async((), None, **options)

    def __repr__(self) -> str:
        return f"chord({self.tasks!r}, {self['kwargs'].get('body')!r})"


def chord_size(sig: Signature[Any]) -> int:
    """How many chord reports ``sig`` makes as (part of) a chord header.

    A task reports once; a group, once per member; a chain, as its last step does; a
    nested chord, as its body does (Celery's count, so mixed workers agree).
    """
    from celeriac.canvas.chain import chain

    if isinstance(sig, group):
        return sum(chord_size(task) for task in sig.tasks)
    if isinstance(sig, chain):
        for step in reversed(sig.tasks):
            size = chord_size(step)
            if size:
                return size
        return 0
    if isinstance(sig, chord):
        return chord_size(sig.body)
    return 1


def first_of(result: AnyResult) -> AnyResult:
    """The earliest result ``result`` links back to through ``parent``."""
    seen: set[int] = set()
    while result.parent is not None:
        if id(result) in seen:
            raise RuntimeError("results link back to themselves through parent")
        seen.add(id(result))
        result = result.parent
    return result
