"""The transport registry: URL scheme -> transport class, imported lazily.

A transport module is imported only when a URL names it, so an optional broker's client
library is needed only by users of that broker. Unknown schemes get a "did you mean ...?",
and a transport whose library is missing names the extra to install.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass

from celeriac.exceptions import MissingDependency, UnknownTransport
from celeriac.transports.base import Transport
from celeriac.utils.url import mask_password, scheme_of


@dataclass(frozen=True, slots=True)
class TransportEntry:
    """Where a transport lives and what it needs.

    Attributes:
        target: ``"module:Class"`` of the transport.
        extra: The ``celeriac[extra]`` that installs its dependencies, if any.
    """

    target: str
    extra: str | None = None


TRANSPORTS: dict[str, TransportEntry] = {
    "memory": TransportEntry("celeriac.transports.memory:MemoryTransport"),
    "sqlite": TransportEntry("celeriac.transports.sqlite:SQLiteTransport"),
}

ALIASES: dict[str, str] = {
    "sqlite3": "sqlite",
    "sqla+sqlite": "sqlite",
}


def register_transport(scheme: str, target: str, extra: str | None = None) -> None:
    """Make ``scheme://`` URLs use the transport class at ``target`` (``"module:Class"``)."""
    TRANSPORTS[scheme] = TransportEntry(target, extra)


def resolve_transport(url: str) -> type[Transport]:
    """The transport class for ``url``.

    Raises:
        UnknownTransport: No transport handles the URL's scheme.
        MissingDependency: The transport needs a package that is not installed.
    """
    scheme = scheme_of(url)
    name = ALIASES.get(scheme, scheme)
    entry = TRANSPORTS.get(name)
    if entry is None:
        known = sorted({*TRANSPORTS, *ALIASES})
        close = difflib.get_close_matches(scheme, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownTransport(
            f"No transport for {mask_password(url)!r} (scheme {scheme!r}).{hint} "
            f"Known schemes: {', '.join(known)}."
        )
    module_name, _, class_name = entry.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if entry.extra is None:
            raise
        raise MissingDependency(
            f"The {name!r} transport needs {exc.name or 'a package that is not installed'}: "
            f"pip install 'celeriac[{entry.extra}]'"
        ) from exc
    transport: type[Transport] = getattr(module, class_name)
    return transport
