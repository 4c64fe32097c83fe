"""Helpers for testing celeriac and the transports written for it (they need pytest).

``celeriac.testing.contract`` is the transport contract suite. ``require_service`` and
``service_url`` guard tests that need a broker server: where the server is absent they skip
on a developer's machine but fail under ``CI=true``, where a missing service is a broken
pipeline rather than a choice, and a green run must mean the tests ran.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import pytest

from celeriac.utils.url import mask_password

# The contract's plain ``assert`` statements get pytest's detailed failure reports.
pytest.register_assert_rewrite("celeriac.testing.contract")

__all__ = ["in_ci", "require_service", "service_url"]


def in_ci() -> bool:
    """True when running under CI (``CI=true``, as GitHub Actions and most CIs set it)."""
    return os.environ.get("CI") == "true"


def require_service(host: str, port: int, name: str, timeout: float = 1.0) -> None:
    """Skip the calling test unless ``host:port`` accepts TCP connections (fail under CI).

    Args:
        host: Address of the service, usually ``127.0.0.1``.
        port: Its TCP port.
        name: What it is (``redis``), for the skip or failure message.
        timeout: Seconds to wait for the connection.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as exc:
        reason = f"{name} is not reachable at {host}:{port} ({exc})"
    if in_ci():
        pytest.fail(f"{reason}; CI=true, so the service must be running", pytrace=False)
    pytest.skip(reason)


def service_url(url: str, name: str | None = None) -> str:
    """Return ``url`` once its host and port answer; see ``require_service``.

    Args:
        url: A broker URL with an explicit host and port
            (``redis://127.0.0.1:6379/15``).
        name: What the service is; the URL's scheme when None.

    Raises:
        ValueError: The URL names no host or no port.
    """
    parts = urlsplit(url)
    if parts.hostname is None or parts.port is None:
        raise ValueError(
            f"service_url needs a host and a port in the URL, got {mask_password(url)!r}"
        )
    require_service(parts.hostname, parts.port, name or parts.scheme)
    return url
