"""Results as messages to the client's own reply queue (``rpc://``), as Celery's rpc backend.

| feature                  | supported                                                    |
|--------------------------|--------------------------------------------------------------|
| shared between processes | no: a client reads the results of the tasks it sent         |
| survives the process     | no: results live in the reply queue, then in client memory  |
| expiry                   | received results are kept ``result_expires`` seconds         |
| waking waiters           | one receiver thread per client; threads and event loops wake |
| groups                   | no (``save_group`` and friends raise NotImplementedError)    |
| chords                   | no: refused when sent (NotImplementedError), as in Celery    |
| broker                   | the app's own: any transport (memory, sqlite, redis, amqp)   |

How a result travels (Celery's wire format, so Celery clients and workers interoperate):

- The client's reply queue is named after its app's ``oid`` (one per app and process): not
  durable, auto-delete, expiring after ``result_expires`` unused. It is declared before the
  first task that names it is sent, so no reply can arrive before it exists.
- Each task message carries ``reply_to`` = that queue (the app sets it when its backend is
  rpc) and ``correlation_id`` = the task id.
- The worker publishes every state (STARTED, custom states, RETRY, SUCCESS...) to the
  default exchange with routing key = the request's ``reply_to`` and ``correlation_id``
  = the request's correlation id, the body being the result meta (as stored by key-value
  backends), transient (``delivery_mode`` 1) unless the ``persistent`` option is set.
  A task sent without ``reply_to`` has no one to tell: its states are not published.
- The client's receiver thread takes replies as they arrive and keeps them in memory,
  keyed by task id, whichever result they belong to: an ``AsyncResult`` made later (or in
  another thread, or an event loop) reads them from there. ``on_message`` sees every state.

Results are therefore private and not persistent: only the client that sent a task reads
its result, and only while it runs; a reply that arrives while its queue is gone (the
client closed, or lost its broker connection) is dropped by the broker.

Chords (and a group piped into a task, which is one) are refused when they are sent, as
Celery's rpc backend refuses them. A chord's body must run once, when the last of its
header tasks has ended, and those end on different workers, so something they share must
count them atomically. With rpc they share only the broker, which cannot count for them
without a task that holds a worker slot and polls a queue. The error names the backends
that count chords: ``redis://``, ``sqlite://`` and ``memory://``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from celeriac.app.state import current_request
from celeriac.backends.base import ChordPart, Record, ResultBackend, StoreItem, Write
from celeriac.backends.memory import MemoryBackend
from celeriac.exceptions import ImproperlyConfigured, SerializationError
from celeriac.messaging import compression
from celeriac.messaging.connection import MAX_WAIT, Connection
from celeriac.messaging.consumer import Consumer
from celeriac.messaging.entities import Queue
from celeriac.messaging.message import Message
from celeriac.messaging.pools import ConnectionPool, PooledProducer, ProducerPool
from celeriac.messaging.retry import RetryPolicy
from celeriac.messaging.serialization import registry

logger = logging.getLogger(__name__)

#: How a worker retries publishing a reply (Celery's rpc backend policy).
REPLY_RETRY_POLICY = RetryPolicy(max_retries=20, interval_start=0, interval_step=1, interval_max=1)
#: Longest pause between two attempts of the receiver to reconnect.
MAX_BACKOFF = 2.0

E_GROUPS = "The rpc:// result backend does not store groups; use redis://, sqlite:// or memory://"
E_CHORDS = (
    "The rpc:// result backend does not support chords (nor a group piped into a task, which "
    "is a chord): its results are messages to the client that sent each task, so no worker "
    "can count a chord's header. Use a result backend that counts chords: redis://, "
    "sqlite:// or memory://."
)


class RPCBackend(ResultBackend):
    """Results sent as messages to the client's reply queue over the app's broker.

    Args:
        url: ``rpc://``.
        broker_url: The broker to publish and receive replies on (the app passes its own).
        broker_options: The broker's transport options (``broker_transport_options``).
        reply_queue: Name of this client's reply queue (the app passes its ``oid``); a new
            uuid when not given.
        **options: As for every backend. ``options`` may hold ``persistent`` (publish
            replies as persistent messages) and ``pool_limit`` (connections used to
            publish replies, 10 by default).
    """

    schemes: ClassVar[tuple[str, ...]] = ("rpc",)

    def __init__(
        self,
        url: str,
        *,
        broker_url: str | None = None,
        broker_options: Mapping[str, Any] | None = None,
        reply_queue: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(url, **options)
        if broker_url is None:
            raise ImproperlyConfigured(
                "rpc:// sends results as messages over the broker: give broker_url= "
                "(a Celery app passes its own broker_url)"
            )
        self.broker_url = broker_url
        self.broker_options = dict(broker_options or {})
        self.oid = reply_queue or str(uuid.uuid4())
        self.delivery_mode = 2 if self.options.get("persistent") else 1
        self.reply_queue = Queue(self.oid, durable=False, auto_delete=True, expires=self.expires)
        self._content_type = registry.content_type_of(self.serializer)
        self._content_encoding = registry.get(self.serializer).content_encoding
        # Received results live here; it wakes waiting threads and event loops.
        self._local = MemoryBackend(
            f"memory://celeriac-rpc-{uuid.uuid4().hex}",
            serializer=self.serializer,
            accept=self.accept,
            expires=self.expires,
            options={"cleanup_interval": self.cleanup_interval},
        )
        #: Replies this client received so far (readable or not).
        self.received = 0
        self._lock = threading.Lock()
        self._receiver: _Receiver | None = None
        self._producers: ProducerPool | None = None
        self._connections: ConnectionPool | None = None

    # -- the client's side ------------------------------------------------------------------
    def ensure_reply_queue(self) -> None:
        """Declare the reply queue (once): call before sending a task that replies to it."""
        self._receiver_for(start=False)

    def receive_replies(self) -> None:
        """Start taking replies now, rather than at the first look at a result."""
        self._receiver_for(start=True)

    async def aensure_reply_queue(self) -> None:
        """``ensure_reply_queue`` for asyncio code."""
        receiver = self._receiver
        if receiver is None or not receiver.declared:
            await asyncio.to_thread(self.ensure_reply_queue)

    def _receiver_for(self, start: bool) -> _Receiver:
        with self._lock:
            if self._receiver is None:
                self._receiver = _Receiver(self)
            receiver = self._receiver
            if not receiver.declared:
                receiver.declare()
            if start and not receiver.started:
                receiver.start()
            return receiver

    def _receive(self, message: Message) -> None:
        """Keep one reply (called by the receiver thread)."""
        try:
            self._keep(message)
        finally:
            self.received += 1

    def _keep(self, message: Message) -> None:
        correlation_id = message.properties.correlation_id
        body = message.body
        try:
            if encoding := message.headers.get("compression"):
                body = compression.decompress(body, str(encoding))
            meta = message.decode()
            if not isinstance(meta, dict) or "status" not in meta:
                raise SerializationError(f"not a result meta: {type(meta).__name__}")
            task_id, status = str(meta.get("task_id") or correlation_id), str(meta["status"])
        except Exception as exc:
            if not correlation_id:
                logger.error("Dropping an unreadable reply without correlation_id: %s", exc)
                return
            # Kept as it came: reading it raises this error, as on the other backends.
            logger.warning("The reply for task %s cannot be read: %s", correlation_id, exc)
            task_id, status = correlation_id, ""
        content_type = message.content_type or self._content_type
        write = Write(self.task_key(task_id), status, content_type, body, self._expiry())
        self._local._store_many([write])
        self._local._maybe_cleanup()

    # -- the worker's side ------------------------------------------------------------------
    def store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: str | None = None,
        request: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Publish a state to the reply queue of the client that sent the task."""
        return self.store_many([(task_id, result, state, traceback, request)])[0]

    def store_many(self, items: Iterable[StoreItem]) -> list[dict[str, Any]]:
        """Publish several states in one broker call (each to its own client)."""
        metas: list[dict[str, Any]] = []
        outgoing = []
        with self._producer() as producer:
            for item in items:
                write, meta = self._prepare(item)
                metas.append(meta)
                reply_to, correlation_id = _destination(item[0], item[4])
                if not reply_to:
                    continue  # Sent without reply_to: no client waits for it.
                outgoing.append(
                    producer.prepare(
                        write.value,
                        reply_to,
                        exchange="",
                        content_type=write.content_type,
                        content_encoding=self._content_encoding,
                        correlation_id=correlation_id,
                        delivery_mode=self.delivery_mode,
                    )
                )
            if outgoing:
                producer.send(outgoing, retry=True, retry_policy=REPLY_RETRY_POLICY)
        return metas

    def _producer(self) -> PooledProducer:
        with self._lock:
            if self._producers is None:
                limit = int(self.options.get("pool_limit", 10))
                self._connections = ConnectionPool(
                    lambda: Connection(self.broker_url, self.broker_options), limit=limit
                )
                self._producers = ProducerPool(self._connections, auto_declare=False)
            return self._producers.acquire()

    # -- groups: not stored by rpc, as in Celery --------------------------------------------
    def save_group(self, group_id: str, result_ids: Sequence[str]) -> dict[str, Any]:
        raise NotImplementedError(E_GROUPS)

    def restore_group(self, group_id: str) -> list[str] | None:
        raise NotImplementedError(E_GROUPS)

    def delete_group(self, group_id: str) -> None:
        raise NotImplementedError(E_GROUPS)

    # -- chords: refused, as in Celery (see the module's docstring) ------------------------
    def ensure_chords_allowed(self) -> None:
        """Refuse a chord when it is sent: this backend cannot count its header."""
        raise NotImplementedError(E_CHORDS)

    def _chord_part(
        self, group_id: str, part: ChordPart, size: int | None, expires_at: float | None
    ) -> list[ChordPart] | None:
        raise NotImplementedError(E_CHORDS)

    # -- the storage surface: what this client received -------------------------------------
    def _get(self, key: str) -> Record | None:
        self._receiver_for(start=True)
        return self._local._get(key)

    def _history(self, key: str, after_seq: int) -> list[Record]:
        self._receiver_for(start=True)
        return self._local._history(key, after_seq)

    def _store_many(self, writes: Sequence[Write]) -> list[bool]:
        # Only this client's own memory: results for others travel through store_many.
        return self._local._store_many(writes)

    def _delete(self, key: str) -> None:
        self._local._delete(key)

    def _wait(self, watch: Mapping[str, int], timeout: float) -> None:
        self._receiver_for(start=True)
        self._local._wait(watch, timeout)

    async def _await(self, watch: Mapping[str, int], timeout: float) -> None:
        if self._receiver is None or not self._receiver.started:
            await asyncio.to_thread(self._receiver_for, True)
        await self._local._await(watch, timeout)

    def cleanup(self, now: float | None = None) -> int:
        return self._local.cleanup(now)

    def close(self) -> None:
        with self._lock:
            receiver, self._receiver = self._receiver, None
            connections, self._connections, self._producers = self._connections, None, None
        if receiver is not None:
            receiver.stop()
        if connections is not None:
            connections.close()
        self._local.cleanup(float("inf"))  # Drops what it holds (all of it, with expiry on).
        self._local.close()


def _destination(task_id: str, request: Mapping[str, Any] | None) -> tuple[str | None, str]:
    """``(reply_to, correlation_id)`` of a task's states, from its request.

    Without a request, the task running in this thread (if it is this one) tells, as in
    Celery, whose tracer does not always pass the request on.
    """
    if request is None or "reply_to" not in request:
        running = current_request.get()
        if running is not None and running.id == task_id:
            request = {"reply_to": running.reply_to, "correlation_id": running.correlation_id}
    if not request:
        return None, task_id
    return request.get("reply_to") or None, request.get("correlation_id") or task_id


class _Receiver:
    """One consumer of the reply queue, on its own connection and thread."""

    def __init__(self, backend: RPCBackend) -> None:
        self.backend = backend
        self.connection = Connection(backend.broker_url, backend.broker_options)
        self.consumer = Consumer(
            self.connection,
            [backend.reply_queue],
            on_message=backend._receive,
            accept=backend.accept,
            no_ack=True,
        )
        self.declared = False
        self.started = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def declare(self) -> None:
        self.connection.declare(self.backend.reply_queue)
        self.declared = True

    def start(self) -> None:
        """Take what is already queued (so a first look sees it), then keep receiving."""
        self.consumer.consume()
        self._drain_once()
        self._thread = threading.Thread(target=self._run, name="celeriac-rpc-replies", daemon=True)
        self._thread.start()
        self.started = True

    def _drain_once(self) -> int:
        return self.consumer.dispatch(self.consumer.fetch())

    def _run(self) -> None:
        errors = self.connection.transport_cls.recoverable_errors
        pause = 0.05
        while not self._stopping.is_set():
            try:
                if not self._drain_once():
                    self.connection.transport.wait(MAX_WAIT)
                pause = 0.05
                continue
            except errors as exc:
                logger.warning("Lost the broker connection for rpc replies (%s); retrying", exc)
                self.connection.reset()
            except Exception:
                logger.exception("Receiving rpc replies failed; retrying")
            self._stopping.wait(pause)
            pause = min(pause * 2, MAX_BACKOFF)
            with contextlib.suppress(Exception):
                self.connection.declare(self.backend.reply_queue)

    def stop(self) -> None:
        self._stopping.set()
        thread = self._thread
        deadline = time.monotonic() + 5
        while thread is not None and thread.is_alive() and time.monotonic() < deadline:
            # A wake-up sent just before the thread waits can be lost: repeat it.
            with contextlib.suppress(Exception):
                self.connection.transport.wake()
            thread.join(0.02)
        self.connection.close()
