"""Broker URLs: parsing, and masking the password wherever a URL is shown."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def scheme_of(url: str) -> str:
    """The scheme of ``url`` (``sqlite``, ``memory``...), lower-cased; '' when there is none."""
    head, sep, _ = url.partition("://")
    return head.lower() if sep else ""


def mask_password(url: str) -> str:
    """``url`` with any password replaced by ``**``, safe to print or log."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{user}:**@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
