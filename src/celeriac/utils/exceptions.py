"""Exceptions as result backends store them, and safely back again.

A failed task's exception travels as Celery's JSON-friendly dict::

    {"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"}

Reading one back must never import a module or call anything the stored data names
(CVE-2021-23727: a forged result naming ``os.system`` ran commands on the reader). So
:func:`exception_to_python` only *looks up* classes, without triggering ``__getattr__`` or
descriptors, in modules that are already imported, and only instantiates ``Exception``
subclasses. Everything else becomes :class:`~celeriac.exceptions.RemoteError`, which keeps
the names and arguments for display.
"""

from __future__ import annotations

import builtins
import inspect
import sys
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, TypeGuard

from celeriac import exceptions
from celeriac.exceptions import RemoteError

#: Modules whose exception names celeriac mirrors in :mod:`celeriac.exceptions`, so a
#: result written by Celery rebuilds as celeriac's class of the same name when the original
#: package is not imported here. (Celery re-exports billiard's time-limit and worker-lost
#: errors, so their stored module is ``billiard.exceptions``.)
MIRRORED_MODULES = frozenset({"celery.exceptions", "billiard.exceptions", "kombu.exceptions"})

_MISSING = object()


def prepare_exception(exc: BaseException, check: Callable[[Any], object]) -> dict[str, Any]:
    """Celery's stored form of an exception.

    Args:
        exc: The exception a task raised.
        check: Serializes a value or raises; arguments it refuses are stored as their
            ``repr`` so that an odd argument never prevents the failure from being recorded.

    Returns:
        ``{"exc_type": qualified class name, "exc_message": [args...], "exc_module": module}``.
    """
    cls = type(exc)
    return {
        "exc_type": cls.__qualname__,
        "exc_message": _serializable_args(exc.args, check),
        "exc_module": cls.__module__,
    }


def _serializable_args(args: tuple[Any, ...], check: Callable[[Any], object]) -> list[Any]:
    try:
        check(args)
    except Exception:
        pass
    else:
        return list(args)
    # Only on failure is each argument tried alone, so the common case costs one check.
    safe: list[Any] = []
    for arg in args:
        try:
            check(arg)
        except Exception:
            safe.append(_safe_repr(arg))
        else:
            safe.append(arg)
    return safe


def _safe_repr(value: object) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<unrepresentable {type(value).__name__}>"


def is_stored_exception(value: object) -> TypeGuard[Mapping[str, Any]]:
    """True when ``value`` has the shape :func:`prepare_exception` produces."""
    return isinstance(value, Mapping) and isinstance(value.get("exc_type"), str)


def exception_to_python(stored: object) -> BaseException | None:
    """Rebuild a stored exception without importing or calling what the data names.

    Args:
        stored: A dict from :func:`prepare_exception` (or Celery), an exception instance
            (pickle results), or None.

    Returns:
        None for an empty value; the instance itself for an exception instance; an
        instance of the named class when it is a safe, already-imported ``Exception``
        subclass; otherwise a :class:`~celeriac.exceptions.RemoteError` carrying the names.

    Raises:
        ValueError: ``stored`` is neither an exception nor a dict naming one.
    """
    if not stored:
        return None
    if isinstance(stored, BaseException):
        return stored
    if not is_stored_exception(stored):
        raise ValueError(f"Not a stored exception (no exc_type): {stored!r}")
    exc_type: str = stored["exc_type"]
    module = stored.get("exc_module")
    exc_module = module if isinstance(module, str) else ""
    raw = stored.get("exc_message", ())
    args = tuple(raw) if isinstance(raw, (list, tuple)) else (raw,)
    cls = _find_class(exc_module, exc_type)
    if cls is None:
        return RemoteError(exc_type, exc_module, args)
    try:
        return cls(*args)
    except Exception:
        # Its constructor wants other arguments than its ``args`` (a custom __init__).
        return RemoteError(exc_type, exc_module, args)


def _find_class(exc_module: str, exc_type: str) -> type[Exception] | None:
    """The named class when it is safe to instantiate; None otherwise."""
    if not exc_module:
        module: ModuleType | None = builtins  # Celery 3 stored no module: builtins only.
    else:
        # sys.modules only: looking a name up must never import anything.
        module = sys.modules.get(exc_module)
    if module is None and exc_module in MIRRORED_MODULES:
        module = exceptions
    if module is None:
        return None
    found: object = module
    for part in exc_type.split("."):
        # getattr_static runs no module __getattr__, lazy-module loader or descriptor.
        found = inspect.getattr_static(found, part, _MISSING)
        if found is _MISSING:
            return None
    # Only Exception subclasses: rebuilding SystemExit, KeyboardInterrupt or
    # CancelledError would let a stored result stop or cancel the reader when re-raised.
    if isinstance(found, type) and issubclass(found, Exception):
        return found
    return None
