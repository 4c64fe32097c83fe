"""The result backend registry: URL scheme -> backend class, imported lazily.

A backend module is imported only when a URL names it, so an optional backend's client
library is needed only by its users. Unknown schemes get a "did you mean ...?", and a
backend whose library is missing names the extra to install. Celery's scheme names work
too: ``cache+memory://`` and ``db+sqlite:///results.db``.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any

from celeriac.backends.base import ResultBackend
from celeriac.exceptions import ImproperlyConfigured, MissingDependency
from celeriac.utils.url import mask_password, scheme_of

__all__ = [
    "ALIASES",
    "BACKENDS",
    "BackendEntry",
    "ResultBackend",
    "backend_from_url",
    "register_backend",
    "resolve_backend",
]


@dataclass(frozen=True, slots=True)
class BackendEntry:
    """Where a result backend lives and what it needs.

    Attributes:
        target: ``"module:Class"`` of the backend.
        extra: The ``celeriac[extra]`` that installs its dependencies, if any
            (``redis`` and ``rpc`` will name theirs when they exist).
    """

    target: str
    extra: str | None = None


BACKENDS: dict[str, BackendEntry] = {
    "memory": BackendEntry("celeriac.backends.memory:MemoryBackend"),
    "sqlite": BackendEntry("celeriac.backends.sqlite:SQLiteBackend"),
}

#: Other names of the same backends, Celery's among them.
ALIASES: dict[str, str] = {
    "cache+memory": "memory",
    "db+sqlite": "sqlite",
}


def register_backend(scheme: str, target: str, extra: str | None = None) -> None:
    """Make ``scheme://`` URLs use the backend class at ``target`` (``"module:Class"``)."""
    BACKENDS[scheme] = BackendEntry(target, extra)


def resolve_backend(url: str) -> type[ResultBackend]:
    """The backend class for ``url``.

    Raises:
        ImproperlyConfigured: No backend handles the URL's scheme.
        MissingDependency: The backend needs a package that is not installed.
    """
    scheme = scheme_of(url)
    name = ALIASES.get(scheme, scheme)
    entry = BACKENDS.get(name)
    if entry is None:
        known = sorted({*BACKENDS, *ALIASES})
        close = difflib.get_close_matches(scheme, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ImproperlyConfigured(
            f"No result backend for {mask_password(url)!r} (scheme {scheme!r}).{hint} "
            f"Known schemes: {', '.join(known)}."
        )
    module_name, _, class_name = entry.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if entry.extra is None:
            raise
        raise MissingDependency(
            f"The {name!r} result backend needs "
            f"{exc.name or 'a package that is not installed'}: "
            f"pip install 'celeriac[{entry.extra}]'"
        ) from exc
    backend: type[ResultBackend] = getattr(module, class_name)
    return backend


def backend_from_url(url: str, **options: Any) -> ResultBackend:
    """A backend for ``url``; ``options`` go to its constructor (``serializer``, ``accept``,
    ``expires``, ``extended``, ``options``).

    Raises:
        ImproperlyConfigured: No backend handles the URL's scheme.
        MissingDependency: The backend needs a package that is not installed.
    """
    return resolve_backend(url)(url, **options)
