"""What the RabbitMQ transport logs: a line of ours per connection event, not pika's flood.

pika logs each connection and channel at INFO and one failed connection attempt as half a
dozen ERROR lines; a worker at ``-l INFO`` would show them all. The session reports a lost
connection, a failing reconnect and the recovery itself, and keeps pika quiet unless the
user configured pika's logger.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from celeriac.messaging import Connection, Queue
from celeriac.testing import service_url
from celeriac.transports import amqp_logs
from celeriac.transports.amqp import AMQPTransport

SHARED_URL = "amqp://guest:guest@127.0.0.1:5672//"
#: A port nothing listens on (binding it needs root), so connecting there is refused.
REFUSING_PORT = 1


@pytest.fixture
def url() -> str:
    return service_url(SHARED_URL)


@pytest.fixture
def pika_logger() -> Iterator[logging.Logger]:
    """The ``pika`` logger, restored to how it was after the test."""
    logger = logging.getLogger("pika")
    level, handlers = logger.level, list(logger.handlers)
    yield logger
    logger.setLevel(level)
    logger.handlers[:] = handlers


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {predicate}"
        time.sleep(0.01)


def pika_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.name.startswith("pika")]


def test_connecting_declaring_and_closing_log_nothing_at_info(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with Connection(url) as conn:
        queue = Queue(f"test-amqp-logs-{time.monotonic_ns()}", auto_delete=True)
        conn.declare(queue)
        conn.transport.queue_length(queue.name)
    assert pika_records(caplog) == []


def test_a_failing_reconnect_is_a_line_of_ours_each_not_pikas_errors(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    transport = AMQPTransport(url)
    try:
        session = transport.session
        broker_port = session.params.port
        session.params.port = REFUSING_PORT
        # Cut the connection under pika (as a broker going away does).
        session.post(lambda: session.connection._transport._sock.shutdown(socket.SHUT_RDWR))  # type: ignore[union-attr]
        wait_for(lambda: session.failed_attempts >= 3)
        session.params.port = broker_port
        wait_for(session.ready.is_set)
    finally:
        transport.close()
    ours = [r for r in caplog.records if r.name == "celeriac.transports.amqp_session"]
    assert [r.levelno for r in ours] == [logging.WARNING] * 3
    lost, failing, back = (r.getMessage() for r in ours)
    assert lost.startswith("Lost the RabbitMQ connection to 127.0.0.1:")
    assert failing.startswith("Cannot reconnect to RabbitMQ at 127.0.0.1:1 (")
    assert "Connection refused" in failing and "AMQPConnectionWorkflowFailed" not in failing
    assert back.startswith(f"Reconnected to RabbitMQ at 127.0.0.1:{broker_port} after ")
    assert pika_records(caplog) == []


def test_a_first_connection_that_fails_says_why_in_one_short_message() -> None:
    with pytest.raises(ConnectionError) as failed:
        AMQPTransport(f"amqp://guest:guest@127.0.0.1:{REFUSING_PORT}//")
    assert str(failed.value) == (
        f"cannot connect to RabbitMQ at 127.0.0.1:{REFUSING_PORT}: "
        "ConnectionRefusedError: [Errno 111] Connection refused"
    )


def test_a_pika_logger_the_user_configured_keeps_its_settings(
    pika_logger: logging.Logger,
) -> None:
    pika_logger.setLevel(logging.NOTSET)
    pika_logger.addHandler(logging.StreamHandler())
    amqp_logs.quiet_pika()
    assert pika_logger.level == logging.NOTSET
    pika_logger.handlers[:] = [
        h for h in pika_logger.handlers if isinstance(h, logging.NullHandler)
    ]
    amqp_logs.quiet_pika()  # pika's own NullHandler is no configuration of the user's
    assert pika_logger.level == logging.WARNING


def test_asking_pika_for_debug_later_brings_its_connection_lines_back(
    pika_logger: logging.Logger,
) -> None:
    lifecycle = logging.getLogger("pika.adapters.utils.connection_workflow")
    record = lifecycle.makeRecord(lifecycle.name, logging.ERROR, __file__, 0, "x", (), None)
    pika_logger.setLevel(logging.WARNING)  # as quiet_pika leaves it
    assert not lifecycle.filter(record)
    pika_logger.setLevel(logging.DEBUG)
    assert lifecycle.filter(record)
