"""The result backend registry: URL scheme -> backend class, imported lazily.

A backend module is imported only when a URL names it, so an optional backend's client
library is needed only by its users. Unknown schemes get a "did you mean ...?", and a
backend whose library is missing names the extra to install. Celery's scheme names work
too: ``cache+memory://`` and ``db+sqlite:///results.db``.
"""

from __future__ import annotations

from typing import Any

from celeriac.backends.base import ResultBackend
from celeriac.exceptions import ImproperlyConfigured
from celeriac.utils.plugins import PluginEntry, PluginRegistry

__all__ = [
    "ALIASES",
    "BACKENDS",
    "BackendEntry",
    "ResultBackend",
    "backend_from_url",
    "register_backend",
    "resolve_backend",
]


#: Where a result backend lives and what it needs.
BackendEntry = PluginEntry

BACKENDS: dict[str, PluginEntry] = {
    "memory": PluginEntry("celeriac.backends.memory:MemoryBackend"),
    "sqlite": PluginEntry("celeriac.backends.sqlite:SQLiteBackend"),
    "redis": PluginEntry("celeriac.backends.redis:RedisBackend", "redis"),
    "rpc": PluginEntry("celeriac.backends.rpc:RPCBackend"),
}

#: Other names of the same backends, Celery's among them.
ALIASES: dict[str, str] = {
    "cache+memory": "memory",
    "db+sqlite": "sqlite",
    "rediss": "redis",
}

_registry: PluginRegistry[ResultBackend] = PluginRegistry(
    "result backend", BACKENDS, ALIASES, ImproperlyConfigured
)


def register_backend(scheme: str, target: str, extra: str | None = None) -> None:
    """Make ``scheme://`` URLs use the backend class at ``target`` (``"module:Class"``)."""
    _registry.register(scheme, target, extra)


def resolve_backend(url: str) -> type[ResultBackend]:
    """The backend class for ``url``.

    Raises:
        ImproperlyConfigured: No backend handles the URL's scheme.
        MissingDependency: The backend needs a package that is not installed.
    """
    return _registry.resolve(url)


def backend_from_url(url: str, **options: Any) -> ResultBackend:
    """A backend for ``url``; ``options`` go to its constructor (``serializer``, ``accept``,
    ``expires``, ``extended``, ``options``).

    Raises:
        ImproperlyConfigured: No backend handles the URL's scheme.
        MissingDependency: The backend needs a package that is not installed.
    """
    return resolve_backend(url)(url, **options)
