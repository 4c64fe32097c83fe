"""Chord completion, in the worker: each header task reports; the last report sends the body.

A chord's header tasks carry the body in their message (``chord``) and the header's group
id (``group``). When one finishes, success or failure, the tracer calls
:func:`on_chord_part_return` once its outcome is stored: the result backend counts the
report atomically (``ResultBackend.add_chord_part``) and hands every outcome, in header
order, to the one report that completes the set. That worker sends the body with the list
of results, or, when a header task failed or was revoked, fails the body with a
``ChordError`` naming that task and runs the body's errbacks. So the body is sent exactly
once, from whichever worker finished last, and no task waits or polls for the header.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from celeriac import states
from celeriac.app.task import Context
from celeriac.canvas import Signature, chain, chord, group, maybe_signature
from celeriac.exceptions import ChordError

if TYPE_CHECKING:
    from celeriac.app.base import Celery

logger = logging.getLogger("celeriac.app.chords")


def on_chord_part_return(app: Celery, request: Context, state: str, result: Any) -> None:
    """Count a header task's outcome; the report that completes the chord ends it.

    Args:
        app: The worker's app (its backend counts, its broker gets the body).
        request: The header task's request (``group``, ``group_index``, ``chord``).
        state: SUCCESS, FAILURE or REVOKED.
        result: The task's return value or exception.
    """
    group_id, body = request.group, request.chord
    if not group_id or not body:
        return
    callback = maybe_signature(body, app=app)
    size = body.get("chord_size") if isinstance(body, Mapping) else None
    try:
        outcomes = app.backend.add_chord_part(
            group_id, str(request.id), request.group_index, state, result, size
        )
    except Exception as exc:
        logger.exception("Counting a result of chord %s failed", group_id)
        chord_error(app, callback, ChordError(f"Chord {group_id} could not count: {exc!r}"))
        return
    if outcomes is None:
        return
    failed = next((o for o in outcomes if o.state in states.PROPAGATE_STATES), None)
    if failed is not None:
        error = ChordError(f"Dependency {failed.task_id} raised {failed.result!r}")
        chord_error(app, callback, error)
        return
    try:
        callback.apply_async(
            ([outcome.result for outcome in outcomes],),
            parent_id=request.id,
            root_id=request.root_id or request.id,
        )
    except Exception as exc:
        logger.exception("Sending the body of chord %s failed", group_id)
        chord_error(app, callback, ChordError(f"Callback error: {exc!r}"))


def chord_error(app: Celery, callback: Signature[Any], exc: ChordError) -> None:
    """Fail a chord's body with ``exc`` (it will not run) and run the body's errbacks.

    Every task the body would have run is stored as failed (the rest of a chain after
    the chord too), so whoever waits on any of them gets the error instead of waiting for
    ever.
    """
    from celeriac.app.trace import call_errbacks

    ids = task_ids(callback)
    request = Context(
        id=callback.id or (ids[-1] if ids else None),
        task=callback.task,
        args=callback.args,
        kwargs=callback.kwargs,
        root_id=callback.options.get("root_id"),
        errbacks=_errbacks(callback),
        delivery_info={},
        children=[],
    )
    try:
        app.backend.store_many([(task_id, exc, states.FAILURE, None, None) for task_id in ids])
    except Exception:
        logger.exception("Recording the failure of chord body %s failed", request.id)
    call_errbacks(app, request, exc, "")


def task_ids(sig: Signature[Any]) -> list[str]:
    """The ids of every task ``sig`` would run, the rest of a chain it carries included.

    Frozen signatures (every one a workflow sent) have them; a step without an id counts
    for nothing.
    """
    ids: list[str] = []
    if isinstance(sig, group | chain):
        ids = [task_id for task in sig.tasks for task_id in task_ids(task)]
    elif isinstance(sig, chord):
        ids = [*task_ids(sig.tasks), *task_ids(sig.body)]
    elif sig.id:
        ids = [sig.id]
    for step in sig.options.get("chain") or ():
        ids.extend(task_ids(maybe_signature(step, app=sig._app)))
    return ids


def _errbacks(sig: Signature[Any]) -> list[Any]:
    """The errbacks of ``sig`` and of the tasks in it, each once."""
    found: list[Any] = []
    pending: list[Signature[Any]] = [sig]
    while pending:
        current = pending.pop(0)
        for errback in current.options.get("link_error") or ():
            if errback not in found:
                found.append(errback)
        if isinstance(current, group | chain):
            pending.extend(current.tasks)
        elif isinstance(current, chord):
            pending.append(current.body)
    return found
