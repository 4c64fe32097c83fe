"""The Dramatiq app: its RabbitMQ or Redis broker (``BENCH_BROKER``), results on Redis.

Dramatiq has no SQLite broker, so it runs in the Redis and RabbitMQ benchmarks only.
``add`` stores its result with Dramatiq's ``Results`` middleware on ``BENCH_BACKEND``.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from peers import tally

url = os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/12")
if url.startswith("amqp") and url.endswith("//"):
    url = url[:-1] + "%2F"  # kombu's spelling of the default vhost is not pika's
queue = os.environ.get("BENCH_QUEUE") or "default"
broker: dramatiq.Broker
broker = RabbitmqBroker(url=url) if url.startswith("amqp") else RedisBroker(url=url)
backend_url = os.environ.get("BENCH_BACKEND", "redis://127.0.0.1:6379/12")
broker.add_middleware(Results(backend=RedisBackend(url=backend_url)))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=queue)
def noop() -> None:
    tally.hit()


@dramatiq.actor(queue_name=queue, store_results=True)
def add(x: int, y: int) -> int:
    return x + y
