"""Connection URLs, declaration caching and message preparation: the messaging API's edges."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from typing import Any
from unittest.mock import Mock

import pytest

from celeriac.exceptions import (
    ImproperlyConfigured,
    MissingDependency,
    UnknownTransport,
)
from celeriac.messaging import Connection, Exchange, Queue, compression
from celeriac.transports import register_transport
from celeriac.utils.url import mask_password


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# -- URLs ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "suggestion"), [("sqlit:///broker.db", "sqlite"), ("memroy://", "memory")]
)
def test_an_unknown_scheme_is_refused_with_a_suggestion(url: str, suggestion: str) -> None:
    with pytest.raises(UnknownTransport, match=f"[Dd]id you mean '{suggestion}'"):
        Connection(url)


def test_schemes_are_case_insensitive() -> None:
    assert Connection("MEMORY://x").transport_cls is Connection("memory://x").transport_cls


def test_an_unknown_scheme_is_a_configuration_error_that_hides_the_password() -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        Connection("amqpp://guest:hunter2@broker:5672//")
    assert isinstance(info.value, UnknownTransport)
    assert "hunter2" not in str(info.value)
    assert "amqpp" in str(info.value)


def test_a_url_without_a_scheme_is_refused() -> None:
    with pytest.raises(UnknownTransport):
        Connection("localhost:5672")


def test_a_transport_whose_module_cannot_be_imported_names_the_extra_to_install(
    transport_registry: dict[str, object],
) -> None:
    register_transport("fakemq", "celeriac_tests_no_such_module:FakeTransport", extra="fakemq")
    with pytest.raises(MissingDependency, match=r"pip install 'celeriac\[fakemq\]'") as info:
        Connection("fakemq://localhost//")
    assert isinstance(info.value, ImportError)  # existing `except ImportError` still works
    assert isinstance(info.value.__cause__, ImportError)


@pytest.mark.parametrize("module", ["celeriac.transports", "celeriac.transports.base"])
def test_the_transport_contract_can_be_imported_first(module: str) -> None:
    # A third-party transport starts with `from celeriac.transports.base import Transport`.
    result = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_a_connection_contacts_the_broker_only_when_first_used(memory_url: str) -> None:
    conn = Connection(memory_url)
    assert not conn.connected
    with conn.connect():
        assert conn.connected
    assert not conn.connected


# -- passwords ----------------------------------------------------------------------------
def test_as_uri_masks_the_password_unless_asked_for_it() -> None:
    url = "memory://user:secret@localhost/vhost"
    conn = Connection(url)
    assert conn.as_uri() == "memory://user:**@localhost/vhost"
    assert conn.as_uri(include_password=True) == url
    assert "secret" not in repr(conn)
    assert conn.clone().as_uri(include_password=True) == url


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp://guest:secret@broker:5672//", "amqp://guest:**@broker:5672//"),
        ("redis://:secret@localhost:6379/0", "redis://:**@localhost:6379/0"),
        ("redis://user@localhost/0", "redis://user@localhost/0"),
        ("sqlite:////var/lib/broker.db", "sqlite:////var/lib/broker.db"),
        ("amqp://u:s%40cret@host/vh?heartbeat=10", "amqp://u:**@host/vh?heartbeat=10"),
        ("amqp://u:secret@[::1]:5672//", "amqp://u:**@[::1]:5672//"),
    ],
)
def test_mask_password_hides_only_the_password(url: str, masked: str) -> None:
    assert mask_password(url) == masked


# -- declaring ----------------------------------------------------------------------------
def spy(monkeypatch: pytest.MonkeyPatch, obj: object, name: str) -> Mock:
    """Record calls to ``obj.name`` while still making them."""
    mock = Mock(wraps=getattr(obj, name))
    monkeypatch.setattr(obj, name, mock)
    return mock


def test_declaring_the_same_entities_twice_reaches_the_transport_once(
    memory_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Connection(memory_url) as conn:
        declare_queue = spy(monkeypatch, conn.transport, "declare_queue")
        declare_exchange = spy(monkeypatch, conn.transport, "declare_exchange")
        queue = Queue(unique("q"), Exchange(unique("ex"), type="topic"), routing_key="a.#")
        conn.declare(queue)
        conn.declare(queue)
        conn.Producer().publish({}, "a.b", exchange=queue.exchange, declare=[queue])
        assert declare_queue.call_count == 1
        assert declare_exchange.call_count == 1
        conn.declare(Queue(queue.name, max_length=5))  # a changed definition goes through
        assert declare_queue.call_count == 2


def test_a_new_session_declares_again(memory_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with Connection(memory_url) as conn:
        queue = Queue(unique("q"))
        conn.declare(queue)
        conn.reset()
        declare_queue = spy(monkeypatch, conn.transport, "declare_queue")
        conn.declare(queue)
        assert declare_queue.call_count == 1


# -- preparing messages -------------------------------------------------------------------
def test_prepare_sets_the_properties_brokers_and_workers_read(memory_url: str) -> None:
    conn = Connection(memory_url)
    producer = conn.Producer(routing_key="default-key")
    out = producer.prepare(
        {"x": 1},
        priority=7,
        correlation_id="task-id",
        reply_to="replies",
        message_id="mid",
        expiration=30,
        headers={"task": "add"},
    )
    p = out.envelope.properties
    assert (p.content_type, p.content_encoding) == ("application/json", "utf-8")
    assert (p.delivery_mode, p.priority, p.expiration) == (2, 7, 30)
    assert (p.correlation_id, p.reply_to, p.message_id) == ("task-id", "replies", "mid")
    assert p.timestamp == pytest.approx(time.time(), abs=5)
    assert json.loads(out.envelope.body) == {"x": 1}
    assert dict(out.envelope.headers) == {"task": "add"}
    assert (out.exchange, out.routing_key) == ("", "default-key")
    assert not conn.connected  # preparing never touches the broker


def test_prepare_takes_the_exchange_key_and_delivery_mode_given_per_message(
    memory_url: str,
) -> None:
    producer = Connection(memory_url).Producer(exchange="tasks", auto_declare=False)
    assert producer.prepare({}).exchange == "tasks"
    out = producer.prepare({}, "key", exchange=Exchange("events"), delivery_mode=1)
    assert (out.exchange, out.routing_key) == ("events", "key")
    assert out.envelope.properties.delivery_mode == 1
    assert producer.prepare({}, exchange="").exchange == ""


def test_prepare_sends_an_already_serialized_body_as_is(memory_url: str) -> None:
    producer = Connection(memory_url).Producer()
    out = producer.prepare(b"\x80\x04K\x01.", content_type="application/x-python-serialize")
    assert out.envelope.body == b"\x80\x04K\x01."
    p = out.envelope.properties
    assert (p.content_type, p.content_encoding) == ("application/x-python-serialize", "binary")


@pytest.mark.parametrize("priority", [-1, 256])
def test_a_priority_outside_0_to_255_is_refused(memory_url: str, priority: int) -> None:
    producer = Connection(memory_url).Producer()
    with pytest.raises(ValueError, match="priority"):
        producer.prepare({}, "key", priority=priority)


def test_an_unknown_serializer_is_refused_with_a_suggestion(memory_url: str) -> None:
    producer = Connection(memory_url).Producer()
    with pytest.raises(ImproperlyConfigured, match="json"):
        producer.prepare({}, "key", serializer="jsno")


def test_an_unknown_compression_is_refused(memory_url: str) -> None:
    producer = Connection(memory_url).Producer(compression="zlb")
    with pytest.raises(ImproperlyConfigured, match="zlib"):
        producer.prepare({}, "key")


# -- consuming ----------------------------------------------------------------------------
def test_a_message_whose_decompressor_is_not_installed_is_rejected_not_fatal(
    memory_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As when a message arrives compressed with brotli on a worker without the package.
    def not_installed(body: bytes, name: str) -> bytes:
        raise MissingDependency(f"{name} needs a package: pip install brotli")

    monkeypatch.setattr(compression, "decompress", not_installed)
    dlx = Exchange(unique("dlx"), type="fanout")
    dlq = Queue(unique("dlq"), dlx)
    work = Queue(unique("work"), dead_letter_exchange=dlx.name)
    received: list[Any] = []
    with Connection(memory_url) as conn:
        conn.declare(dlq, work)
        headers = {"compression": "application/x-brotli"}
        conn.Producer().publish(b"...", work.name, content_type="application/json", headers=headers)
        with conn.Consumer(work, callbacks=[lambda body, _m: received.append(body)]):
            conn.drain_events(timeout=1)
        assert received == []
        assert conn.transport.queue_length(dlq.name) == 1
