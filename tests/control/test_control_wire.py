"""The pidbox wire format, the command table and the revoked-task record, without workers.

Where Celery and kombu are installed (they are test dependencies), the names and queue
options are compared with theirs: a Celery client and a celeriac worker must agree on them.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from celeriac import Celery
from celeriac.backends.memory import MemoryBackend
from celeriac.backends.sqlite import SQLiteBackend
from celeriac.control.commands import COMMANDS, commands_of
from celeriac.control.mailbox import ControlRequest, Mailbox, ReplyTo, flatten_replies
from celeriac.control.revoked import LOG_SPAN, RevokedSet, load_revokes, record_revokes
from celeriac.worker.control import signal_number
from celeriac.worker.pidbox import HANDLERS


# -- the wire format -----------------------------------------------------------------------
def test_mailbox_names_and_queue_options_are_kombus() -> None:
    pidbox = pytest.importorskip("kombu.pidbox")
    theirs = pidbox.Mailbox("celery", type="fanout", queue_ttl=300.0, queue_expires=10.0)
    ours = Mailbox()
    assert (ours.exchange.name, ours.exchange.type) == (theirs.exchange.name, "fanout")
    assert ours.exchange.durable is theirs.exchange.durable is False
    assert ours.reply_exchange.name == theirs.reply_exchange.name
    assert ours.reply_exchange.durable is theirs.reply_exchange.durable is False
    their_queue = theirs.get_queue("w1@host")
    our_queue = ours.node_queue("w1@host")
    assert our_queue.name == their_queue.name == "w1@host.celery.pidbox"
    assert our_queue.exclusive is their_queue.exclusive
    assert our_queue.auto_delete is their_queue.auto_delete
    assert our_queue.durable is their_queue.durable
    assert our_queue.expires == their_queue.expires
    assert our_queue.message_ttl == their_queue.message_ttl
    assert ours.reply_queue("k").name == "k.reply.celery.pidbox"


def test_the_mailbox_follows_the_apps_control_exchange_and_serializer() -> None:
    app = Celery("m", broker="memory://", control_exchange="ops", set_as_current=False)
    mailbox = Mailbox.for_app(app)
    assert mailbox.exchange.name == "ops.pidbox"
    assert mailbox.node_queue("a@b").name == "a@b.ops.pidbox"
    assert mailbox.serializer == "json" and mailbox.accept == ("json",)


def test_a_request_body_has_celerys_keys_and_reads_back() -> None:
    request = ControlRequest(
        "rate_limit",
        {"task_name": "t", "rate_limit": "1/s"},
        ["a@h"],
        ticket="tk",
        reply_to=ReplyTo("reply.celery.pidbox", "key"),
    )
    body = request.to_body()
    assert body == {
        "method": "rate_limit",
        "arguments": {"task_name": "t", "rate_limit": "1/s"},
        "destination": ["a@h"],
        "pattern": None,
        "matcher": None,
        "ticket": "tk",
        "reply_to": {"exchange": "reply.celery.pidbox", "routing_key": "key"},
    }
    assert ControlRequest.from_body(body) == request
    assert "ticket" not in ControlRequest("ping").to_body()


@pytest.mark.parametrize(
    "body",
    [[], {"arguments": {}}, {"method": ""}, {"method": "ping", "arguments": [1]}],
    ids=["not-a-mapping", "no-method", "empty-method", "list-arguments"],
)
def test_a_malformed_request_is_refused_with_a_reason(body: object) -> None:
    with pytest.raises(ValueError, match=r"."):
        ControlRequest.from_body(body)


def test_requests_reach_their_destinations_or_matching_names_or_everyone() -> None:
    assert ControlRequest("ping").addressed_to("a@h")
    assert ControlRequest("ping", destination=["a@h"]).addressed_to("a@h")
    assert not ControlRequest("ping", destination=["b@h"]).addressed_to("a@h")
    assert ControlRequest("ping", pattern="a@*", matcher="glob").addressed_to("a@h")
    assert not ControlRequest("ping", pattern="b@*", matcher="glob").addressed_to("a@h")
    assert ControlRequest("ping", pattern=r"a@\w", matcher="pcre").addressed_to("a@h")
    assert not ControlRequest("ping", pattern=r"h$", matcher="pcre").addressed_to("a@h")


def test_replies_flatten_to_one_mapping_by_node() -> None:
    assert flatten_replies([{"a": 1}, {"b": 2}]) == {"a": 1, "b": 2}


# -- the command table -----------------------------------------------------------------------
def test_every_command_has_a_worker_handler() -> None:
    assert set(COMMANDS) == set(HANDLERS)


def test_the_visible_commands_have_celerys_names_and_kinds() -> None:
    control = pytest.importorskip("celery.worker.control")
    theirs = {name: meta.type for name, meta in control.Panel.meta.items() if meta.visible}
    for kind in ("inspect", "control"):
        for name in commands_of(kind):
            assert theirs.get(name) == kind, name


def test_command_line_words_become_typed_arguments() -> None:
    assert COMMANDS["rate_limit"].parse(["t", "5/s"]) == {"task_name": "t", "rate_limit": "5/s"}
    assert COMMANDS["time_limit"].parse(["t", "1.5"]) == {"task_name": "t", "soft": 1.5}
    assert COMMANDS["revoke"].parse(["a", "b"]) == {"task_id": ["a", "b"]}
    assert COMMANDS["terminate"].parse(["KILL", "a"]) == {"signal": "KILL", "task_id": ["a"]}
    assert COMMANDS["active"].parse(["yes"]) == {"safe": True}
    with pytest.raises(ValueError, match="bad n"):
        COMMANDS["pool_grow"].parse(["many"])
    with pytest.raises(ValueError, match="at most"):
        COMMANDS["ping"].parse(["extra"])


@pytest.mark.parametrize("value", ["SIGKILL", "KILL", "kill", "9", 9])
def test_signals_are_named_as_celery_accepts_them(value: object) -> None:
    assert signal_number(value) == 9


def test_an_unknown_signal_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown signal"):
        signal_number("SIGNOPE")


# -- revoked ids ---------------------------------------------------------------------------
def test_revoked_ids_expire() -> None:
    revoked = RevokedSet(expires=60)
    revoked.add("old", expires_at=time.time() - 1)
    revoked.add("new")
    assert "new" in revoked and "old" not in revoked
    assert list(revoked) == ["new"]


def test_beyond_its_limit_the_set_forgets_the_oldest_revokes() -> None:
    revoked = RevokedSet(maxlen=3)
    revoked.update(["a", "b", "c", "d"])
    assert list(revoked) == ["b", "c", "d"]


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> MemoryBackend | SQLiteBackend:
    if request.param == "memory":
        return MemoryBackend(f"memory://{uuid.uuid4().hex}")
    sqlite = SQLiteBackend(f"sqlite:///{tmp_path / 'r.db'}")
    request.addfinalizer(sqlite.close)
    return sqlite


def test_the_durable_record_keeps_every_revoke_until_it_expires(
    backend: MemoryBackend | SQLiteBackend,
) -> None:
    now = time.time()
    record_revokes(backend, ["a", "b"], now=now - 3 * LOG_SPAN, expires=10 * LOG_SPAN)
    record_revokes(backend, ["c"], now=now - 60, expires=3600)
    record_revokes(backend, ["gone"], now=now - 120, expires=30)
    found = load_revokes(backend, now=now, expires=10 * LOG_SPAN)
    assert list(found) == ["a", "b", "c"]
    assert found["c"] == pytest.approx(now - 60 + 3600)


def test_concurrent_revokes_in_one_span_are_all_kept(
    backend: MemoryBackend | SQLiteBackend,
) -> None:
    now = time.time()
    for i in range(20):
        record_revokes(backend, [f"t{i}"], now=now)
    assert set(load_revokes(backend, now=now)) == {f"t{i}" for i in range(20)}


def test_the_rpc_backend_keeps_no_record_and_reads_none() -> None:
    app = Celery(
        "rpc", broker=f"memory://{uuid.uuid4().hex}", backend="rpc://", set_as_current=False
    )
    try:
        record_revokes(app.backend, ["a"])
        assert load_revokes(app.backend) == {}
    finally:
        app.close()
