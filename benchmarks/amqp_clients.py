"""Which AMQP client should the ``amqp://`` transport sit on? Measured, not guessed.

Each candidate (aiormq 7, pika 1.x, py-amqp 5) talks to the local RabbitMQ and is asked for
what the transport needs, with a task-sized message (Celery protocol v2 headers and body,
persistent, to a durable queue):

- publish: one message per call, no confirms, one thread;
- publish, confirmed (pipelined): the channel in confirm mode, the whole batch written, then
  one wait until the broker confirmed all of it;
- consume+ack: ``basic.consume`` with prefetch 1,000, an ack with ``multiple=True`` every
  100 messages (what a batching consumer sends).

The last row is celeriac's own ``amqp://`` transport (on pika, with its network thread) seen
through the messaging API: ``Producer.publish`` per message, ``Producer.send`` in batches of
500 without confirms, one ``Producer.send`` of the whole batch with ``confirm_publish``, and
``fetch(limit=100, ack=<the previous batch>)`` with a window of 1,000. A publish without
confirms returns once the network thread has it, so those two figures count until the
network thread has handed every message to pika's output buffer.

Each figure is the best of ``--repeat`` runs (the machine is shared). The queue is a fresh
``bench-amqp-<uuid>`` and is deleted afterwards. Run with::

    .venv/bin/python benchmarks/amqp_clients.py [--count 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

URL = "amqp://guest:guest@127.0.0.1:5672/"
PREFETCH = 1000
ACK_EVERY = 100

TASK_ID = str(uuid.uuid4())
HEADERS: dict[str, Any] = {
    "lang": "py",
    "task": "peers.noop",
    "id": TASK_ID,
    "shadow": None,
    "eta": None,
    "expires": None,
    "group": None,
    "group_index": None,
    "retries": 0,
    "timelimit": [None, None],
    "root_id": TASK_ID,
    "parent_id": None,
    "argsrepr": "()",
    "kwargsrepr": "{}",
    "origin": "1234@bench",
    "ignore_result": True,
    "replaced_task_nesting": 0,
    "stamped_headers": None,
    "stamps": {},
}
BODY = json.dumps(
    [[], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
).encode()
PROPS: dict[str, Any] = {
    "content_type": "application/json",
    "content_encoding": "utf-8",
    "correlation_id": TASK_ID,
    "reply_to": "",
    "delivery_mode": 2,
}

Rates = dict[str, float]


def timed(count: int, run: Callable[[], None]) -> float:
    started = time.perf_counter()
    run()
    return count / (time.perf_counter() - started)


# -- py-amqp ----------------------------------------------------------------------------------
def bench_pyamqp(queue: str, count: int) -> Rates:
    import amqp

    conn = amqp.Connection("127.0.0.1:5672", userid="guest", password="guest")
    conn.connect()
    ch = conn.channel()
    ch.queue_declare(queue, durable=True, auto_delete=False)
    rates: Rates = {}

    def publish() -> None:
        for _ in range(count):
            ch.basic_publish(amqp.Message(BODY, application_headers=HEADERS, **PROPS), "", queue)

    rates["publish"] = timed(count, publish)

    confirm_ch = conn.channel()
    confirm_ch.confirm_select()
    confirmed = [0]

    def on_ack(tag: int, multiple: bool) -> None:
        confirmed[0] = max(confirmed[0], tag)

    confirm_ch.events["basic_ack"].add(on_ack)

    def publish_confirmed() -> None:
        for _ in range(count):
            message = amqp.Message(BODY, application_headers=HEADERS, **PROPS)
            confirm_ch.basic_publish(message, "", queue)
        while confirmed[0] < count:
            conn.drain_events(timeout=10)

    rates["publish, confirmed (pipelined)"] = timed(count, publish_confirmed)

    received = [0]

    def on_message(message: Any) -> None:
        received[0] += 1
        if received[0] % ACK_EVERY == 0:
            ch.basic_ack(message.delivery_tag, multiple=True)

    def consume() -> None:
        ch.basic_qos(0, PREFETCH, False)
        tag = ch.basic_consume(queue, callback=on_message)
        while received[0] < 2 * count:
            conn.drain_events(timeout=10)
        ch.basic_cancel(tag)

    rates["consume+ack"] = timed(2 * count, consume)
    ch.queue_delete(queue)
    conn.close()
    return rates


# -- pika -------------------------------------------------------------------------------------
def bench_pika(queue: str, count: int) -> Rates:
    """Publish through BlockingConnection; confirms and consuming on SelectConnection, the
    I/O-loop API a network thread would run (BlockingConnection's confirms wait per message).
    """
    import pika

    params = pika.URLParameters(URL)
    blocking = pika.BlockingConnection(params)
    ch = blocking.channel()
    ch.queue_declare(queue, durable=True)
    props = pika.BasicProperties(headers=HEADERS, **PROPS)
    rates: Rates = {}

    def publish() -> None:
        for _ in range(count):
            ch.basic_publish("", queue, BODY, pika.BasicProperties(headers=HEADERS, **PROPS))

    rates["publish"] = timed(count, publish)
    rates.update(_pika_async(params, queue, count, props))
    ch.queue_delete(queue)
    blocking.close()
    return rates


def _pika_async(params: Any, queue: str, count: int, props: Any) -> Rates:
    import pika

    rates: Rates = {}
    state: dict[str, Any] = {"confirmed": 0, "received": 0}

    def on_open(conn: Any) -> None:
        conn.channel(on_open_callback=on_channel)

    def on_channel(ch: Any) -> None:
        state["ch"] = ch
        ch.confirm_delivery(on_confirm, callback=lambda _f: start_publishing(ch))

    def start_publishing(ch: Any) -> None:
        state["t0"] = time.perf_counter()
        for _ in range(count):
            ch.basic_publish("", queue, BODY, pika.BasicProperties(headers=HEADERS, **PROPS))

    def on_confirm(frame: Any) -> None:
        state["confirmed"] = max(state["confirmed"], frame.method.delivery_tag)
        if state["confirmed"] >= count and "consume_t0" not in state:
            rates["publish, confirmed (pipelined)"] = count / (time.perf_counter() - state["t0"])
            ch = state["ch"]
            state["consume_t0"] = time.perf_counter()
            ch.basic_qos(prefetch_count=PREFETCH)
            state["tag"] = ch.basic_consume(queue, on_message)

    def on_message(ch: Any, method: Any, _props: Any, _body: bytes) -> None:
        state["received"] += 1
        if state["received"] % ACK_EVERY == 0:
            ch.basic_ack(method.delivery_tag, multiple=True)
        if state["received"] == 2 * count:
            rates["consume+ack"] = 2 * count / (time.perf_counter() - state["consume_t0"])
            ch.basic_cancel(state["tag"], callback=lambda _f: conn.close())

    conn = pika.SelectConnection(
        params, on_open_callback=on_open, on_close_callback=lambda *_: conn.ioloop.stop()
    )
    conn.ioloop.start()
    return rates


# -- aiormq -----------------------------------------------------------------------------------
def bench_aiormq(queue: str, count: int) -> Rates:
    return asyncio.run(_aiormq(queue, count))


async def _aiormq(queue: str, count: int) -> Rates:
    import aiormq
    from aiormq.abc import DeliveredMessage

    conn = await aiormq.connect(URL)
    ch = await conn.channel(publisher_confirms=False)
    await ch.queue_declare(queue, durable=True)
    rates: Rates = {}

    def props() -> Any:
        return aiormq.spec.Basic.Properties(headers=HEADERS, **PROPS)

    started = time.perf_counter()
    for _ in range(count):
        await ch.basic_publish(BODY, routing_key=queue, properties=props(), wait=False)
    rates["publish"] = count / (time.perf_counter() - started)

    confirm_ch = await conn.channel(publisher_confirms=True)
    started = time.perf_counter()
    await asyncio.gather(
        *(
            confirm_ch.basic_publish(BODY, routing_key=queue, properties=props())
            for _ in range(count)
        )
    )
    rates["publish, confirmed (pipelined)"] = count / (time.perf_counter() - started)

    done = asyncio.get_running_loop().create_future()
    received = 0

    async def on_message(message: DeliveredMessage) -> None:
        nonlocal received
        received += 1
        if received % ACK_EVERY == 0:
            await ch.basic_ack(message.delivery_tag, multiple=True)
        if received == 2 * count and not done.done():
            done.set_result(None)

    started = time.perf_counter()
    await ch.basic_qos(prefetch_count=PREFETCH)
    consume_ok = await ch.basic_consume(queue, on_message)
    await done
    rates["consume+ack"] = 2 * count / (time.perf_counter() - started)
    await ch.basic_cancel(consume_ok.consumer_tag)
    await ch.queue_delete(queue)
    await conn.close()
    return rates


# -- celeriac's transport ---------------------------------------------------------------------
def handed_to_socket(conn: Any) -> None:
    """Wait until the network thread has written every publish so far (as the clients above
    have when their publish returns)."""
    from concurrent.futures import Future

    done: Future[None] = Future()
    conn.transport.session.post(lambda: done.set_result(None))
    done.result()


def bench_celeriac(queue: str, count: int) -> Rates:
    from celeriac.messaging import Connection, Queue

    url = URL + "/"
    options = {"content_type": "application/json", "content_encoding": "utf-8"}
    rates: Rates = {}
    with Connection(url) as conn:
        conn.declare(Queue(queue))
        producer = conn.Producer()

        def publish() -> None:
            for _ in range(count):
                producer.publish(BODY, queue, headers=HEADERS, correlation_id=TASK_ID, **options)
            handed_to_socket(conn)

        rates["publish"] = timed(count, publish)

        def publish_batches() -> None:
            for _ in range(0, count, 500):
                batch = [producer.prepare(BODY, queue, headers=HEADERS, **options)] * 500
                producer.send(batch)
            handed_to_socket(conn)

        rates["publish, batches of 500"] = timed(count, publish_batches)
    with Connection(url, {"confirm_publish": True}) as conn:
        producer = conn.Producer()
        batch = [producer.prepare(BODY, queue, headers=HEADERS, **options)] * count
        rates["publish, confirmed (pipelined)"] = timed(count, lambda: producer.send(batch))
    with Connection(url) as conn:
        transport = conn.transport
        total = transport.queue_length(queue)
        transport.qos([queue], PREFETCH)

        def consume() -> None:
            received, previous = 0, []
            while received < total:
                batch = transport.fetch([queue], ACK_EVERY, [d.delivery_tag for d in previous])
                received += len(batch)
                previous = batch
                if not batch:
                    transport.wait(1.0)
            transport.ack([d.delivery_tag for d in previous])

        rates["consume+ack"] = timed(total, consume)
        transport.delete_queue(queue)
    return rates


CLIENTS: dict[str, Callable[[str, int], Rates]] = {
    "aiormq": bench_aiormq,
    "pika": bench_pika,
    "py-amqp": bench_pyamqp,
    "celeriac amqp://": bench_celeriac,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000, help="messages per measure")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best is kept")
    parser.add_argument("--clients", default=",".join(CLIENTS), help="comma-separated")
    args = parser.parse_args()
    names = args.clients.split(",")
    best: dict[str, Rates] = {name: {} for name in names}
    for _ in range(args.repeat):
        for name in names:
            rates = CLIENTS[name](f"bench-amqp-{uuid.uuid4().hex[:12]}", args.count)
            for measure, value in rates.items():
                best[name][measure] = max(best[name].get(measure, 0.0), value)
    measures = list(dict.fromkeys(m for rates in best.values() for m in rates))
    print(f"{args.count:,} messages per measure, best of {args.repeat} (msg/s)\n")
    print("| client | " + " | ".join(measures) + " |")
    print("|---|" + "---:|" * len(measures))
    for name in names:
        cells = " | ".join(f"{best[name][m]:,.0f}" if m in best[name] else "-" for m in measures)
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
