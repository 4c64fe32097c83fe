"""Registries of lazily imported implementations, keyed by URL scheme.

Transports and result backends are both chosen by a URL's scheme. A module is imported only
when a URL names it, so an optional broker's client library is needed only by its users; an
unknown scheme gets a "did you mean ...?", and a missing library names the extra to install.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from celeriac.exceptions import MissingDependency
from celeriac.utils.url import mask_password, scheme_of

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PluginEntry:
    """Where an implementation lives and what it needs.

    Attributes:
        target: ``"module:Class"`` of the implementation.
        extra: The ``celeriac[extra]`` that installs its dependencies, if any.
    """

    target: str
    extra: str | None = None


class PluginRegistry(Generic[T]):
    """Scheme -> implementation class, with aliases.

    Args:
        kind: What the implementations are, for messages ("transport", "result backend").
        entries: Canonical scheme -> entry (the registry uses and updates this dict).
        aliases: Other scheme names -> canonical scheme.
        unknown: The exception raised for a scheme nothing handles.
    """

    def __init__(
        self,
        kind: str,
        entries: dict[str, PluginEntry],
        aliases: dict[str, str],
        unknown: type[Exception],
    ) -> None:
        self.kind = kind
        self.entries = entries
        self.aliases = aliases
        self.unknown = unknown

    def register(self, scheme: str, target: str, extra: str | None = None) -> None:
        """Make ``scheme://`` URLs use the class at ``target`` (``"module:Class"``)."""
        self.entries[scheme] = PluginEntry(target, extra)

    def resolve(self, url: str) -> type[T]:
        """The class for ``url``.

        Raises:
            The registry's ``unknown`` error: no entry handles the URL's scheme.
            MissingDependency: The implementation needs a package that is not installed.
        """
        scheme = scheme_of(url)
        name = self.aliases.get(scheme, scheme)
        entry = self.entries.get(name)
        if entry is None:
            known = sorted({*self.entries, *self.aliases})
            close = difflib.get_close_matches(scheme, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise self.unknown(
                f"No {self.kind} for {mask_password(url)!r} (scheme {scheme!r}).{hint} "
                f"Known schemes: {', '.join(known)}."
            )
        module_name, _, class_name = entry.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if entry.extra is None:
                raise
            raise MissingDependency(
                f"The {name!r} {self.kind} needs "
                f"{exc.name or 'a package that is not installed'}: "
                f"pip install 'celeriac[{entry.extra}]'"
            ) from exc
        found: Any = getattr(module, class_name)
        return found  # type: ignore[no-any-return]
