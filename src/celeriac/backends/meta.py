"""Celery's result format: the keys and the dicts every key-value backend stores.

What lives where (PROTOCOL.md, "Result meta"):

- ``celery-task-meta-<task_id>``: a task's meta, ``{"status", "result", "traceback",
  "children", "date_done", ["group_id", "parent_id", extended fields...], "task_id"}``.
- ``celery-taskset-meta-<group_id>``: a saved group, ``{"result": GroupResult tuple}``
  where the tuple is ``[[group_id, parent], [[[task_id, parent], None], ...]]``.

Results and children travel as Celery's result tuples (``AsyncResult.as_tuple()``), so a
Celery client rebuilds them with ``result_from_tuple``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from celeriac import states

TASK_KEY_PREFIX = "celery-task-meta-"
GROUP_KEY_PREFIX = "celery-taskset-meta-"
#: The ``status`` a group's key is stored with: not SUCCESS, so a group can be saved again.
GROUP_STATUS = "GROUP"


def pending_meta(task_id: str) -> dict[str, Any]:
    """The meta of a task nothing is stored for."""
    return {
        "status": states.PENDING,
        "result": None,
        "traceback": None,
        "children": [],
        "date_done": None,
        "task_id": task_id,
    }


def build_meta(
    task_id: str,
    result: Any,
    state: str,
    traceback: str | None,
    request: Mapping[str, Any] | None,
    *,
    extended: bool = False,
) -> dict[str, Any]:
    """A task's meta, keys in Celery's order.

    Args:
        task_id: The task's id.
        result: The value to store, already in its stored form (exceptions prepared).
        state: The task's state; ready states get ``date_done`` (ISO 8601, UTC).
        traceback: The failure's formatted traceback, if any.
        request: The task's request: ``group`` and ``parent_id`` are copied when set, and
            ``children`` (result objects or tuples) as result tuples.
        extended: Also copy ``task`` (as ``name``), ``args``, ``kwargs``, ``hostname``
            (as ``worker``), ``retries`` and the ``delivery_info`` routing key (as ``queue``).
    """
    done = datetime.now(UTC).isoformat() if state in states.READY_STATES else None
    meta: dict[str, Any] = {
        "status": state,
        "result": result,
        "traceback": traceback,
        "children": _children(request),
        "date_done": done,
    }
    if request:
        if request.get("group"):
            meta["group_id"] = request["group"]
        if request.get("parent_id"):
            meta["parent_id"] = request["parent_id"]
        if extended:
            meta.update(_extended_fields(request))
    meta["task_id"] = task_id
    return meta


def _extended_fields(request: Mapping[str, Any]) -> dict[str, Any]:
    delivery_info = request.get("delivery_info") or {}
    return {
        "name": request.get("task", request.get("name")),
        "args": request.get("args"),
        "kwargs": request.get("kwargs"),
        "worker": request.get("hostname"),
        "retries": request.get("retries"),
        "queue": delivery_info.get("routing_key"),
    }


def _children(request: Mapping[str, Any] | None) -> list[Any]:
    # Result objects are asked for their tuple; tuples already made pass through.
    children = request.get("children") if request else None
    out: list[Any] = []
    for child in children or ():
        as_tuple = getattr(child, "as_tuple", None)
        out.append(as_tuple() if callable(as_tuple) else child)
    return out


def group_meta(group_id: str, result_ids: Sequence[str]) -> dict[str, Any]:
    """A saved group's meta: Celery's ``GroupResult.as_tuple()`` under ``result``."""
    return {"result": [[group_id, None], [[[task_id, None], None] for task_id in result_ids]]}


def group_members(meta: Any) -> list[str]:
    """The member ids of a saved group's meta (Celery 5's format or Celery 4's).

    Raises:
        ValueError: The meta is not a saved group.
    """
    try:
        _, members = meta["result"]
        return [_result_id(member) for member in members]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a saved group: {meta!r:.200}") from exc


def _result_id(node: Any) -> str:
    # A result tuple is ``[[id, parent], nodes]``; Celery 4 wrote ``[id, nodes]``.
    head = node[0]
    ident = head[0] if isinstance(head, (list, tuple)) else head
    if not isinstance(ident, str):
        raise TypeError(f"not a result id: {ident!r}")
    return ident
