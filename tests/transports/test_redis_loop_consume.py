"""The Redis transport consumed from an event loop: its own connection, read by the loop."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from celeriac.messaging import Connection, Queue
from celeriac.testing import service_url
from celeriac.transports import redis as redis_transport
from celeriac.transports.redis_aio import Endpoint, LoopLink
from celeriac.transports.redis_layout import FETCH
from celeriac.transports.redis_link import Script

SHARED_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture
def url() -> str:
    return service_url(SHARED_URL)


@pytest.fixture
def prefix(url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}:"
    yield name
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{name}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def endpoint(url: str, **changes: Any) -> Endpoint:
    found = Endpoint.of_pool(redis.ConnectionPool.from_url(url))
    assert found is not None
    return Endpoint(**{**{f: getattr(found, f) for f in found.__slots__}, **changes})


def test_a_script_runs_on_the_loop_and_is_loaded_when_redis_lacks_it(url: str) -> None:
    # A script text no one ran before: Redis answers NOSCRIPT, the link loads it.
    script = Script.of(f"return ARGV[1] .. '{uuid.uuid4().hex}'")
    suffix = script.text.rsplit("'", 2)[1]

    async def scenario() -> list[Any]:
        link = LoopLink(endpoint(url), asyncio.get_running_loop())
        try:
            return [await link.call(script, ["a"]), await link.call(script, ["b"])]
        finally:
            link.close()

    assert asyncio.run(scenario()) == [f"a{suffix}".encode(), f"b{suffix}".encode()]


def test_calls_in_flight_together_get_their_own_replies(url: str) -> None:
    script = Script.of("return ARGV[1]")

    async def scenario() -> list[Any]:
        link = LoopLink(endpoint(url), asyncio.get_running_loop())
        try:
            return list(await asyncio.gather(*(link.call(script, [n]) for n in range(50))))
        finally:
            link.close()

    assert asyncio.run(scenario()) == [str(n).encode() for n in range(50)]


def test_a_script_error_raises_and_the_connection_goes_on(url: str) -> None:
    failing, echo = Script.of("return redis.call('NOSUCHCOMMAND')"), Script.of("return 7")

    async def scenario() -> Any:
        link = LoopLink(endpoint(url), asyncio.get_running_loop())
        try:
            with pytest.raises(redis.ResponseError):
                await link.call(failing, [])
            return await link.call(echo, [])
        finally:
            link.close()

    assert asyncio.run(scenario()) == 7


def test_a_server_that_does_not_answer_times_out_as_a_recoverable_error() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        accepted: list[socket.socket] = []
        thread = threading.Thread(target=lambda: accepted.append(server.accept()[0]))
        thread.start()
        silent = Endpoint(port=server.getsockname()[1], connect_timeout=0.3, timeout=0.2)

        async def scenario() -> None:
            link = LoopLink(silent, asyncio.get_running_loop())
            try:
                await link.call(Script.of("return 1"), [])
            finally:
                link.close()

        with pytest.raises(redis.TimeoutError):
            asyncio.run(scenario())
        thread.join()
        for conn in accepted:
            conn.close()
    assert issubclass(redis.TimeoutError, redis_transport.CONNECTION_ERRORS)


def test_a_refused_login_raises_a_connection_error(url: str) -> None:
    # The test server has no password: AUTH with one is refused.
    async def scenario() -> None:
        link = LoopLink(endpoint(url, password="wrong"), asyncio.get_running_loop())
        await link.call(Script.of("return 1"), [])

    with pytest.raises(redis.ConnectionError, match="AUTH"):
        asyncio.run(scenario())


def test_a_connection_the_server_killed_is_replaced_and_nothing_is_lost(
    url: str, prefix: str
) -> None:
    queue = Queue("work")
    with Connection(url, {"global_keyprefix": prefix}) as conn:
        conn.declare(queue)
        consumer = conn.Consumer(queue, prefetch_count=1)
        consumer.consume()

        async def fetch_one() -> Any:
            # As a consumer does: fetch, and wait for a wake-up while there is nothing.
            # The fetch may be the one to find the connection dead: a recoverable error,
            # and the next fetch goes on a new connection.
            failures = 0
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    got = await consumer.afetch()
                except redis.ConnectionError:
                    failures += 1
                    assert failures == 1
                    continue
                if got:
                    (message,) = got
                    await message.aack()
                    return message.decode()
                await conn.transport.await_ready(0.5)
            raise AssertionError("no message came")

        async def scenario() -> list[Any]:
            assert await consumer.afetch() == []  # registers the session (in a thread)
            for n in range(2):
                conn.Producer().publish({"n": n}, "work")
            got = [await fetch_one()]  # on the loop's own connection
            link = conn.transport._loop_link
            assert link is not None and link._socket is not None
            host, port = link._socket.sock.getsockname()[:2]
            killer = redis.Redis.from_url(url)
            killer.execute_command("CLIENT", "KILL", "ADDR", f"{host}:{port}")
            killer.close()
            got.append(await fetch_one())
            return got

        assert asyncio.run(scenario()) == [{"n": 0}, {"n": 1}]
        assert conn.transport.queue_length("work") == 0


def test_messages_whose_fetch_was_interrupted_come_back_redelivered(
    url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = Queue("work")
    with Connection(url, {"global_keyprefix": prefix}) as conn:
        conn.declare(queue)
        consumer = conn.Consumer(queue, prefetch_count=0)
        consumer.consume()
        call = LoopLink.call

        async def interrupt_after_the_fetch_ran(self: LoopLink, script: Script, args: Any) -> Any:
            reply = await call(self, script, args)
            if script.text == FETCH:  # it ran in Redis; this task is cancelled meanwhile
                monkeypatch.setattr(LoopLink, "call", call)
                raise asyncio.CancelledError
            return reply

        async def scenario() -> list[Any]:
            assert await consumer.afetch() == []  # registers the session (in a thread)
            producer = conn.Producer()
            for n in range(3):
                producer.publish({"n": n}, "work")
            monkeypatch.setattr(LoopLink, "call", interrupt_after_the_fetch_ran)
            with pytest.raises(asyncio.CancelledError):
                await consumer.afetch()
            got = await consumer.afetch()
            for message in got:
                await message.aack()
            return got

        got = asyncio.run(scenario())
        assert sorted(m.decode()["n"] for m in got) == [0, 1, 2]
        assert all(m.redelivered for m in got)
        assert conn.transport.queue_length("work") == 0


def test_an_empty_queue_is_not_asked_again_until_a_message_wakes_it(
    url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = Queue("work")
    fetches: list[int] = []
    call = LoopLink.call

    async def counting(self: LoopLink, script: Script, args: Any) -> Any:
        if script.text == FETCH:
            fetches.append(1)
        return await call(self, script, args)

    monkeypatch.setattr(LoopLink, "call", counting)
    with Connection(url, {"global_keyprefix": prefix}) as conn:
        conn.declare(queue)
        consumer = conn.Consumer(queue, prefetch_count=4)
        consumer.consume()

        async def scenario() -> Any:
            assert await consumer.afetch() == []  # registers the session (in a thread)
            assert await consumer.afetch() == []  # found empty on the loop's connection
            asked = len(fetches)
            for _ in range(5):  # nothing was published: Redis is not asked again
                assert await consumer.afetch() == []
            assert len(fetches) == asked
            publisher = Connection(url, {"global_keyprefix": prefix})  # another session
            publisher.Producer().publish({"n": 1}, "work")
            publisher.close()  # confirms the publish
            await conn.transport.await_ready(5)  # the wake-up arrives...
            (message,) = await consumer.afetch()  # ...and the queue is asked again
            await message.aack()
            return message.decode()

        assert asyncio.run(scenario()) == {"n": 1}


def test_a_lost_wake_up_subscription_is_made_again_and_still_wakes_the_consumer(
    url: str, prefix: str
) -> None:
    queue = Queue("work")
    with Connection(url, {"global_keyprefix": prefix}) as conn:
        conn.declare(queue)
        consumer = conn.Consumer(queue, prefetch_count=4)
        consumer.consume()

        async def wait_for_one(within: float) -> tuple[Any, float]:
            started = time.monotonic()
            while time.monotonic() - started < within:
                got = await consumer.afetch()
                if got:
                    (message,) = got
                    await message.aack()
                    return message.decode(), time.monotonic() - started
                await conn.transport.await_ready(within)
            raise AssertionError("no message came")

        async def scenario() -> tuple[Any, float]:
            assert await consumer.afetch() == []  # registers the session (in a thread)
            assert await consumer.afetch() == []  # subscribed on the loop's own connection
            sub = conn.transport._loop_sub
            assert sub is not None and sub._socket is not None
            host, port = sub._socket.sock.getsockname()[:2]
            killer = redis.Redis.from_url(url)
            killer.execute_command("CLIENT", "KILL", "ADDR", f"{host}:{port}")
            killer.close()
            waiting = asyncio.ensure_future(wait_for_one(5))
            await asyncio.sleep(0.2)  # the loss is noticed; the consumer subscribes again
            publisher = Connection(url, {"global_keyprefix": prefix})
            publisher.Producer().publish({"n": 1}, "work")
            publisher.close()
            return await waiting

        body, waited = asyncio.run(scenario())
        assert body == {"n": 1}
        assert waited < 0.2 + 0.5  # woken by the new subscription, not a periodic look
