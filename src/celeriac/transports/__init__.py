"""The transport registry: URL scheme -> transport class, imported lazily.

A transport module is imported only when a URL names it, so an optional broker's client
library is needed only by users of that broker. Unknown schemes get a "did you mean ...?",
and a transport whose library is missing names the extra to install.
"""

from __future__ import annotations

from celeriac.exceptions import UnknownTransport
from celeriac.transports.base import Transport
from celeriac.utils.plugins import PluginEntry, PluginRegistry

#: Kept under its historic name: where a transport lives and what it needs.
TransportEntry = PluginEntry

TRANSPORTS: dict[str, PluginEntry] = {
    "memory": PluginEntry("celeriac.transports.memory:MemoryTransport"),
    "sqlite": PluginEntry("celeriac.transports.sqlite:SQLiteTransport"),
    "redis": PluginEntry("celeriac.transports.redis:RedisTransport", "redis"),
    "amqp": PluginEntry("celeriac.transports.amqp:AMQPTransport", "amqp"),
}

ALIASES: dict[str, str] = {
    "sqlite3": "sqlite",
    "sqla+sqlite": "sqlite",
    "rediss": "redis",
    "pyamqp": "amqp",
    "amqps": "amqp",
}

_registry: PluginRegistry[Transport] = PluginRegistry(
    "transport", TRANSPORTS, ALIASES, UnknownTransport
)


def register_transport(scheme: str, target: str, extra: str | None = None) -> None:
    """Make ``scheme://`` URLs use the transport class at ``target`` (``"module:Class"``)."""
    _registry.register(scheme, target, extra)


def resolve_transport(url: str) -> type[Transport]:
    """The transport class for ``url``.

    Raises:
        UnknownTransport: No transport handles the URL's scheme.
        MissingDependency: The transport needs a package that is not installed.
    """
    return _registry.resolve(url)
