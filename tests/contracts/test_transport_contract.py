"""The transport contract (``celeriac.testing.contract``) over every transport celeriac ships.

Adding a transport is one entry in ``BROKERS``: a function from the test's ``tmp_path`` to
the URL of a broker no other test writes to. A transport that needs a server wraps its URL
in ``service_url``, which skips when the server is absent and fails under ``CI=true``::

    "redis": lambda _tmp: service_url("redis://127.0.0.1:6379/15"),
    "amqp": lambda _tmp: service_url("amqp://guest:guest@127.0.0.1:5672//"),
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from celeriac.testing import require_service, service_url
from celeriac.testing.contract import TransportContract

BROKERS: dict[str, Callable[[Path], str]] = {
    "memory": lambda _tmp: f"memory://{uuid.uuid4().hex}",
    "sqlite": lambda tmp: f"sqlite:///{tmp / 'broker.db'}",
    "amqp": lambda _tmp: service_url("amqp://guest:guest@127.0.0.1:5672//"),
    "redis": lambda _tmp: service_url("redis://127.0.0.1:6379/15"),
}


class TestTransportContract(TransportContract):
    @pytest.fixture(params=list(BROKERS))
    def broker_url(self, request: pytest.FixtureRequest, tmp_path: Path) -> str:
        make_url: Callable[[Path], str] = BROKERS[request.param]
        return make_url(tmp_path)


# -- the guard for brokers that need a server ---------------------------------------------
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_an_absent_service_skips_the_test_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="redis is not reachable"):
        require_service("127.0.0.1", closed_port(), "redis")


def test_an_absent_service_fails_the_test_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="redis is not reachable"):
        service_url(f"redis://127.0.0.1:{closed_port()}/15")


def test_a_listening_service_lets_the_test_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = f"amqp://guest:guest@127.0.0.1:{server.getsockname()[1]}//"
        assert service_url(url) == url
