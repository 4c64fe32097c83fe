"""The events wire format: exchange, routing keys, properties, fields, clocks, and the
receiver that reads it back (one event or a list, filtered by routing key)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from celeriac import Celery, group, signature
from celeriac.events import Event, EventDispatcher, EventReceiver, LamportClock
from celeriac.events import event as event_module
from celeriac.events.event import routing_key_for, utcoffset
from celeriac.messaging import Connection, Consumer, Exchange, Message, Queue

COMMON = {"type", "hostname", "timestamp", "utcoffset", "pid", "clock"}


def tap(conn: Connection, key: str = "#") -> Consumer:
    """A plain queue bound to the events exchange, to look at the raw messages."""
    queue = Queue(f"tap-{time.monotonic_ns()}", Exchange("celeryev", "topic"), routing_key=key)
    consumer = Consumer(conn, queue, prefetch_count=0)
    consumer.consume()
    return consumer


def take(consumer: Consumer, count: int, timeout: float = 5.0) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        batch = consumer.fetch(count - len(got))
        if not batch:
            consumer.connection.transport.wait(0.05)
        got.extend(batch)
    return got


def test_an_event_is_sent_transient_as_json_to_the_topic_exchange(memory_app: Celery) -> None:
    with memory_app.connection() as conn:
        raw = tap(conn)
        dispatcher = EventDispatcher(conn, "w1@example")
        dispatcher.send("task-succeeded", uuid="id-1", result="3", runtime=0.5)
        (message,) = take(raw, 1)
    assert message.delivery_info["exchange"] == "celeryev"
    assert message.delivery_info["routing_key"] == "task.succeeded"
    assert message.properties.delivery_mode == 1
    assert message.content_type == "application/json"
    assert message.headers["hostname"] == "w1@example"
    body = json.loads(message.body)
    assert body["type"] == "task-succeeded"
    assert body["hostname"] == "w1@example"
    assert body["uuid"] == "id-1" and body["result"] == "3" and body["runtime"] == 0.5
    assert set(body) >= COMMON
    assert abs(body["timestamp"] - time.time()) < 5
    assert body["utcoffset"] == utcoffset()


def test_routing_keys_are_the_type_with_dots() -> None:
    assert routing_key_for("worker-heartbeat") == "worker.heartbeat"
    assert routing_key_for("task-succeeded") == "task.succeeded"


def test_each_event_moves_the_senders_lamport_clock_forward(memory_app: Celery) -> None:
    with memory_app.connection() as conn:
        clock = LamportClock(41)
        dispatcher = EventDispatcher(conn, "w1", clock=clock)
        first = dispatcher.send("worker-heartbeat")
        second = dispatcher.send("worker-heartbeat")
    assert first is not None and second is not None
    assert (first.clock, second.clock) == (42, 43)
    assert clock.value == 43


def test_the_lamport_clock_moves_past_what_it_receives() -> None:
    clock = LamportClock(5)
    assert clock.adjust(10) == 11
    assert clock.adjust(3) == 12
    assert clock.forward() == 13


def test_utcoffset_is_positive_west_of_greenwich(monkeypatch: pytest.MonkeyPatch) -> None:
    # Celery's convention (time.timezone): Berlin in winter is -1, New York +5.
    monkeypatch.setattr(event_module.time, "timezone", -3600)
    monkeypatch.setattr(event_module.time, "altzone", -7200)
    monkeypatch.setattr(event_module.time, "localtime", lambda: time.struct_time((0,) * 8 + (0,)))
    assert event_module.utcoffset() == -1
    monkeypatch.setattr(event_module.time, "timezone", 5 * 3600)
    assert event_module.utcoffset() == 5


def test_buffered_task_events_go_as_one_list_and_worker_events_alone(
    memory_app: Celery,
) -> None:
    with memory_app.connection() as conn:
        raw = tap(conn)
        dispatcher = EventDispatcher(conn, "w1")
        dispatcher.put("task-received", uuid="a", name="t")
        dispatcher.put("worker-heartbeat", freq=2.0)
        dispatcher.put("task-started", uuid="a")
        assert dispatcher.buffered == 3
        assert dispatcher.flush() == 3
        messages = take(raw, 2)
        assert dispatcher.buffered == 0
    by_key = {m.delivery_info["routing_key"]: json.loads(m.body) for m in messages}
    assert set(by_key) == {"task.multi", "worker.heartbeat"}
    assert [e["type"] for e in by_key["task.multi"]] == ["task-received", "task-started"]
    assert by_key["worker.heartbeat"]["type"] == "worker-heartbeat"


def test_a_disabled_dispatcher_sends_nothing_and_groups_filter(memory_app: Celery) -> None:
    with memory_app.connection() as conn:
        raw = tap(conn)
        off = EventDispatcher(conn, "w1", enabled=False)
        assert off.send("worker-heartbeat") is None
        assert off.put("task-received", uuid="x") is False
        workers_only = EventDispatcher(conn, "w1", groups=["worker"])
        assert workers_only.send("task-received", uuid="x") is None
        assert workers_only.send("worker-heartbeat") is not None
        messages = take(raw, 2, timeout=0.3)
    assert [m.delivery_info["routing_key"] for m in messages] == ["worker.heartbeat"]


def test_an_event_that_cannot_be_encoded_is_dropped_not_its_batch(memory_app: Celery) -> None:
    with memory_app.connection() as conn:
        raw = tap(conn)
        dispatcher = EventDispatcher(conn, "w1")
        dispatcher.put("task-received", uuid="good")
        dispatcher.put("task-received", uuid="bad", args={1, 2})  # a set is not JSON
        dispatcher.flush()
        (message,) = take(raw, 1)
    assert [e["uuid"] for e in json.loads(message.body)] == ["good"]
    assert dispatcher.dropped == 1


def test_event_reads_like_celerys_event_dict() -> None:
    data = {"type": "task-failed", "hostname": "h", "timestamp": 1.5, "utcoffset": 0,
            "pid": 7, "clock": 3, "uuid": "u", "exception": "ValueError('x')"}  # fmt: skip
    event = Event.decode(data, local_received=2.0)
    assert event["uuid"] == "u" and event.uuid == "u"
    assert event["type"] == "task-failed" and event.group == "task"
    assert event.encode() == data
    assert dict(event) == {**data, "local_received": 2.0}


def test_the_listener_queue_is_celerys(memory_app: Celery) -> None:
    memory_app.conf.event_queue_ttl = 3.0
    with memory_app.connection() as conn:
        receiver = memory_app.events.Receiver(conn, node_id="abc")
    queue = receiver.queue
    assert queue.name == "celeryev.abc"
    assert queue.auto_delete and not queue.durable
    assert queue.message_ttl == 3.0 and queue.expires == 60.0
    assert queue.exchange == Exchange("celeryev", "topic")
    assert queue.routing_key == "#"


def publish_raw(conn: Connection, body: Any, key: str) -> None:
    producer = conn.Producer(exchange=Exchange("celeryev", "topic"))
    producer.publish(body, key, delivery_mode=1)


def test_a_receiver_reads_single_events_and_lists_and_skips_bad_items(
    memory_app: Celery,
) -> None:
    def event(kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "hostname": "h", "timestamp": time.time(), "utcoffset": 0,
                "pid": 1, "clock": 7, **fields}  # fmt: skip

    seen: list[Event] = []
    with memory_app.connection() as conn:
        receiver = memory_app.events.Receiver(conn, handlers={"*": seen.append})
        receiver.consume()
        publish_raw(conn, event("worker-online", freq=2.0), "worker.online")
        publish_raw(
            conn,
            [event("task-received", uuid="u"), "junk", {"no": "type"}, event("task-started")],
            "task.multi",
        )
        assert receiver.capture(limit=3, timeout=5) == 3
        receiver.close()
    assert [e.type for e in seen] == ["worker-online", "task-received", "task-started"]
    assert all(e.local_received is not None for e in seen)
    assert receiver.clock.value >= 8  # moved past the clocks it saw


def test_a_receiver_bound_to_one_type_picks_it_out_of_task_lists(memory_app: Celery) -> None:
    with memory_app.connection() as conn:
        receiver = memory_app.events.Receiver(conn, routing_key="task.failed")
        receiver.consume()
        dispatcher = EventDispatcher(conn, "w1")
        dispatcher.put("task-succeeded", uuid="ok")
        dispatcher.put("task-failed", uuid="bad")
        dispatcher.send("worker-heartbeat")
        dispatcher.flush()
        events = list(receiver.itercapture(timeout=0.5))
        receiver.close()
    assert [(e.type, e.uuid) for e in events] == [("task-failed", "bad")]


def test_closing_a_receiver_deletes_its_queue(memory_app: Celery) -> None:
    with memory_app.connection() as conn:
        receiver = memory_app.events.Receiver(conn)
        receiver.consume()
        dispatcher = EventDispatcher(conn, "w1")
        dispatcher.send("worker-heartbeat")
        assert conn.transport.queue_length(receiver.queue.name) == 1
        receiver.close()
        dispatcher.send("worker-heartbeat")  # routed nowhere now
        assert conn.transport.queue_length(receiver.queue.name) == 0


def test_the_asyncio_face_receives_events(memory_app: Celery) -> None:
    async def main() -> list[str]:
        async with memory_app.connection() as conn:
            receiver = EventReceiver(conn)
            await receiver.aconsume()
            dispatcher = EventDispatcher(conn, "w1")
            await dispatcher.asend("worker-online")
            dispatcher.put("task-received", uuid="u")
            await dispatcher.aflush()
            types = [e.type async for e in receiver.aitercapture(limit=2, timeout=5)]
            await receiver.aclose()
            return types

    assert asyncio.run(main()) == ["worker-online", "task-received"]


def test_task_sent_events_go_with_the_task_when_enabled(memory_app: Celery) -> None:
    memory_app.conf.task_send_sent_event = True
    with memory_app.connection() as conn:
        receiver = memory_app.events.Receiver(conn)
        receiver.consume()
        result = memory_app.send_task("proj.add", (2, 3), {"z": 1}, countdown=60)
        (event,) = receiver.itercapture(limit=1, timeout=5)
        memory_app.conf.task_send_sent_event = False
        memory_app.send_task("proj.add", (1, 1))
        assert list(receiver.itercapture(timeout=0.3)) == []
        receiver.close()
    assert event.type == "task-sent"
    assert event.hostname.startswith("gen")
    assert event["uuid"] == result.id and event["name"] == "proj.add"
    assert event["args"] == "(2, 3)" and event["kwargs"] == "{'z': 1}"
    assert event["retries"] == 0 and event["eta"] is not None and event["expires"] is None
    assert event["root_id"] == result.id and event["parent_id"] is None
    route = (event["queue"], event["exchange"], event["routing_key"])
    assert route == ("celery", "celery", "celery")


def test_a_group_sends_a_task_sent_event_per_member(memory_app: Celery) -> None:
    memory_app.conf.task_send_sent_event = True
    with memory_app.connection() as conn:
        receiver = memory_app.events.Receiver(conn)
        receiver.consume()
        sigs = [signature("proj.add", (i, i), app=memory_app) for i in range(3)]
        result = group(sigs).apply_async()
        events = list(receiver.itercapture(limit=3, timeout=5))
        receiver.close()
    assert [e.type for e in events] == ["task-sent"] * 3
    assert sorted(e["uuid"] for e in events) == sorted(r.id for r in result.results)
    assert sorted(e["args"] for e in events) == ["(0, 0)", "(1, 1)", "(2, 2)"]
