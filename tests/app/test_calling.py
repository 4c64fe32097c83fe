"""Sending tasks: the protocol v2 message, call-site validation, options and routing."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from celeriac import Celery, signature
from celeriac.exceptions import ImproperlyConfigured, QueueNotFound
from celeriac.messaging import Exchange, Message, Queue

PROTOCOL_V2_HEADERS = {
    "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
    "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result",
    "replaced_task_nesting", "stamped_headers", "stamps",
}  # fmt: skip


def receive(app: Celery, queue: str = "celery") -> Message:
    """The next message in ``queue``, fetched raw (not decoded by a worker)."""
    conn = app.connection()
    consumer = conn.Consumer(Queue(queue), accept=["json", "pickle", "yaml", "msgpack"])
    consumer.consume()
    messages = consumer.fetch(1)
    assert messages, f"no message in {queue!r}"
    return messages[0]


def test_a_message_carries_every_protocol_v2_header_and_property(app: Celery) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    result = add.delay(2, 3)
    message = receive(app)
    assert set(message.headers) == PROTOCOL_V2_HEADERS
    h = message.headers
    assert h["lang"] == "py"
    assert h["task"] == add.name
    assert h["id"] == result.id == h["root_id"]
    assert h["retries"] == 0 and h["timelimit"] == [None, None]
    assert h["parent_id"] is None and h["eta"] is None and h["expires"] is None
    assert h["argsrepr"] == "(2, 3)" and h["kwargsrepr"] == "{}"
    assert re.fullmatch(r"\d+@.+", h["origin"])
    props = message.properties
    assert props.correlation_id == result.id
    assert props.content_type == "application/json" and props.content_encoding == "utf-8"
    assert props.delivery_mode == 2
    assert props.reply_to == ""
    assert message.decode() == [
        [2, 3],
        {},
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    ]


def test_task_names_come_from_the_module_and_function(app: Celery) -> None:
    @app.task
    def ping() -> str:
        return "pong"

    @app.task(name="custom.name")
    def other() -> None:
        return None

    assert ping.name.endswith(
        "test_calling.test_task_names_come_from_the_module_and_function.<locals>.ping"
    )
    assert other.name == "custom.name"
    assert app.tasks["custom.name"] is other


def test_bad_calls_fail_at_the_call_site(app: Celery) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(TypeError, match="args must be a list or tuple"):
        add.apply_async(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="kwargs must be a mapping"):
        add.apply_async((1, 2), [("y", 2)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="missing a required argument"):
        add.delay(1)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="countdown or eta"):
        add.apply_async((1, 2), countdown=5, eta=datetime.now(UTC))
    with pytest.raises(ImproperlyConfigured, match="json"):
        add.apply_async((1, 2), serializer="jsn")
    assert app.connection().transport.queue_length("celery") == 0


def test_a_countdown_becomes_an_eta_and_expires_seconds_become_a_time(app: Celery) -> None:
    @app.task
    def noop() -> None:
        return None

    before = datetime.now(UTC)
    noop.apply_async(countdown=30, expires=60)
    headers = receive(app).headers
    eta = datetime.fromisoformat(headers["eta"])
    expires = datetime.fromisoformat(headers["expires"])
    assert eta.tzinfo is not None and expires.tzinfo is not None
    assert before + timedelta(seconds=29) < eta < before + timedelta(seconds=31)
    assert before + timedelta(seconds=59) < expires < before + timedelta(seconds=61)


def test_a_naive_eta_is_read_in_the_apps_timezone(app: Celery) -> None:
    app.conf.timezone = "Europe/Paris"

    @app.task
    def noop() -> None:
        return None

    noop.apply_async(eta=datetime(2030, 1, 1, 12, 0))
    eta = datetime.fromisoformat(receive(app).headers["eta"])
    assert eta == datetime(2030, 1, 1, 12, 0, tzinfo=ZoneInfo("Europe/Paris"))
    assert eta.astimezone(UTC).hour == 11


def test_links_travel_in_celerys_signature_form(app: Celery) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def on_error(request: Any, exc: Any, traceback: Any) -> None:
        return None

    add.apply_async((2, 2), link=[add.s(16), add.si(1, 1)], link_error=on_error.s())
    embed = receive(app).decode()[2]
    assert embed["callbacks"] == [
        {"task": add.name, "args": [16], "kwargs": {}, "options": {},
         "subtask_type": None, "immutable": False},
        {"task": add.name, "args": [1, 1], "kwargs": {}, "options": {},
         "subtask_type": None, "immutable": True},
    ]  # fmt: skip
    assert embed["errbacks"][0]["task"] == on_error.name


def test_a_signature_from_its_dict_form_sends_like_the_task(app: Celery) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    sig = signature({"task": add.name, "args": [1], "kwargs": {}, "options": {}}, app=app)
    result = sig.delay(41)
    body = receive(app).decode()
    assert body[0] == [41, 1]
    assert result.id


def test_options_set_priority_time_limits_and_headers(app: Celery) -> None:
    @app.task(time_limit=30, soft_time_limit=20)
    def work() -> None:
        return None

    work.apply_async(priority=7, headers={"tenant": "acme"}, shadow="work-shadow")
    message = receive(app)
    assert message.properties.priority == 7
    assert message.headers["timelimit"] == [30, 20]
    assert message.headers["tenant"] == "acme"
    assert message.headers["shadow"] == "work-shadow"


def test_task_routes_send_tasks_to_queues_by_name_glob_regex_and_router(app: Celery) -> None:
    def router(name: str, args: Any, kwargs: Any, options: Any, **_: Any) -> Any:
        return {"queue": "routed"} if name == "by.router" else None

    app.conf.task_routes = [
        {"exact.task": {"queue": "exact"}, "feed.*": {"queue": "feeds"},
         re.compile(r"(image|video)\.encode"): {"queue": "media"}},
        router,
    ]  # fmt: skip
    for name in ("exact.task", "feed.fetch", "video.encode", "by.router", "other.task"):
        app.send_task(name)
    lengths = {q: app.connection().transport.queue_length(q)
               for q in ("exact", "feeds", "media", "routed", "celery")}  # fmt: skip
    assert lengths == {"exact": 1, "feeds": 1, "media": 1, "routed": 1, "celery": 1}


def test_an_explicit_queue_wins_over_the_route(app: Celery) -> None:
    app.conf.task_routes = {"a.task": {"queue": "from-route"}}
    app.send_task("a.task", queue="explicit")
    assert app.connection().transport.queue_length("explicit") == 1
    assert app.connection().transport.queue_length("from-route") == 0


def test_task_queues_define_exchanges_and_missing_queues_can_be_refused(app: Celery) -> None:
    media = Exchange("media", type="topic")
    app.conf.task_queues = [Queue("video", media, routing_key="media.video")]
    app.conf.task_create_missing_queues = False
    app.send_task("encode", queue="video")
    assert app.connection().transport.queue_length("video") == 1
    with pytest.raises(QueueNotFound, match="nowhere"):
        app.send_task("encode", queue="nowhere")


def test_shared_task_registers_with_every_app_without_connecting() -> None:
    from celeriac import shared_task

    first = Celery("first", broker="memory://shared-1", backend="memory://shared-1")

    @shared_task
    def shared_add(x: int, y: int) -> int:
        return x + y

    second = Celery("second", broker="memory://shared-2", backend="memory://shared-2")
    assert shared_add.name in first.tasks and shared_add.name in second.tasks
    assert first._pool is None and second._pool is None  # nothing connected
    assert shared_add(2, 3) == 5
    assert shared_add.delay(1, 1).id
    assert second.connection().transport.queue_length("celery") == 1
