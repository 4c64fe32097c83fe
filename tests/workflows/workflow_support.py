"""Helpers of the workflow tests."""

from __future__ import annotations

from celeriac import Celery
from celeriac.messaging import Message, Queue

#: Seconds a test waits for a workflow's result.
TIMEOUT = 20


def receive_all(app: Celery, queue: str = "celery") -> list[Message]:
    """Every message waiting in ``queue``, fetched raw (no worker decodes them)."""
    with app.connection() as conn:
        consumer = conn.Consumer(Queue(queue), accept=["json"])
        consumer.consume()
        messages: list[Message] = []
        while batch := consumer.fetch(100):
            messages.extend(batch)
        for message in messages:
            message.ack()
    return messages
