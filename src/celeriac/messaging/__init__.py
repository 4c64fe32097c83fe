"""celeriac's messaging layer: exchanges, queues, producers and consumers over transports.

This is to celeriac what kombu is to Celery, and the names follow kombu's::

    from celeriac.messaging import Connection, Exchange, Queue

    orders = Exchange("orders", type="topic")
    eu = Queue("eu-orders", orders, routing_key="eu.#")
    with Connection("sqlite:///broker.db") as conn:
        conn.Producer().publish({"id": 1}, "eu.orders.created", exchange=orders, declare=[eu])
        with conn.Consumer(eu, callbacks=[lambda body, message: message.ack()]):
            conn.drain_events(timeout=1)
"""

from celeriac.messaging.connection import Channel, Connection
from celeriac.messaging.consumer import Consumer
from celeriac.messaging.entities import Binding, Exchange, Queue
from celeriac.messaging.message import Message
from celeriac.messaging.pools import ConnectionPool, ProducerPool
from celeriac.messaging.producer import Producer
from celeriac.messaging.retry import RetryPolicy
from celeriac.transports.base import Properties

__all__ = [
    "Binding",
    "Channel",
    "Connection",
    "ConnectionPool",
    "Consumer",
    "Exchange",
    "Message",
    "Producer",
    "ProducerPool",
    "Properties",
    "Queue",
    "RetryPolicy",
]
