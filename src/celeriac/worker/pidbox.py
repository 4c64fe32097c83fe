"""The worker's mailbox: remote-control requests in, replies out, on the worker's event loop.

The node has a broker connection of its own, so a busy task consumer (a full prefetch
window, a slow fetch) never delays an answer, and its queue ``<hostname>.celery.pidbox``
(see ``celeriac.control.mailbox``) is bound to the pidbox fanout exchange. On start it binds
the queue first and then reads the durable record of revoked tasks: a revoke made between
the two arrives as a broadcast, so none is missed.

Requests addressed to other nodes are skipped; a request is handled completely (reply
included) before the node stops, so ``shutdown`` is answered.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from celeriac.control.mailbox import TRANSIENT, ControlRequest, Mailbox
from celeriac.control.revoked import load_revokes
from celeriac.exceptions import EncodeError, MissingDependency, SerializationError
from celeriac.messaging.consumer import Consumer
from celeriac.messaging.entities import Exchange
from celeriac.messaging.producer import Producer
from celeriac.worker.control import CONTROL_HANDLERS, ControlState, Handler, nok
from celeriac.worker.inspect import INSPECT_HANDLERS

if TYPE_CHECKING:
    from celeriac.messaging.message import Message
    from celeriac.worker.worker import Worker

logger = logging.getLogger("celeriac.worker")

#: Longest idle wait before looking at the broker again.
IDLE_WAIT = 1.0
#: Longest pause between attempts while the broker cannot be reached.
MAX_PAUSE = 2.0
#: Every command's handler, by name.
HANDLERS: dict[str, Handler] = {**INSPECT_HANDLERS, **CONTROL_HANDLERS}
#: Requests taken at once. A window also makes push transports (RabbitMQ) keep one
#: standing consumer on the queue: an auto-delete queue goes when its last consumer does.
PREFETCH = 10


class PidboxNode:
    """Receives and answers the remote-control requests for one worker."""

    def __init__(self, worker: Worker) -> None:
        app = worker.app
        self.worker = worker
        self.hostname = worker.hostname
        self.mailbox = Mailbox.for_app(app)
        self.connection = app.connection()
        self.state = ControlState(worker)
        self.consumer = Consumer(
            self.connection,
            self.mailbox.node_queue(self.hostname),
            accept=self.mailbox.accept,
            no_ack=True,
            prefetch_count=PREFETCH,
            on_decode_error=self._undecodable,
        )
        self._stopping = False
        self._wake = asyncio.Event()
        self._task: asyncio.Future[None] | None = None

    # -- life cycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Bind the node's queue, learn the revokes made so far, and start answering."""
        await self.connection.arun(self.consumer.consume)
        await self._load_revokes()
        self._task = asyncio.ensure_future(self._run())

    async def _load_revokes(self) -> None:
        try:
            found = await asyncio.to_thread(load_revokes, self.worker.app.backend)
        except Exception as exc:
            logger.warning(
                "Could not read revoked tasks from the result backend (%s: %s); only revokes "
                "broadcast from now on are honoured",
                type(exc).__name__,
                exc,
            )
            return
        self.state.consumer.revoked.update(found)
        if found:
            logger.info("Honouring %d task(s) revoked before this worker started", len(found))

    async def stop(self) -> None:
        """Stop after the request being handled (if any); release the connection."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        self.consumer.cancel()
        await self.connection.arun(self.connection.close)

    # -- the loop ---------------------------------------------------------------------------
    async def _run(self) -> None:
        recoverable = self.connection.transport_cls.recoverable_errors
        pause = 0.0
        while not self._stopping:
            try:
                if pause:  # the connection failed: a new session needs the queue again
                    await self.connection.arun(self.connection.reset)
                    await self.connection.arun(self.consumer.consume)
                    pause = 0.0
                await self._step()
            except recoverable as exc:
                if not pause:
                    logger.warning("Remote control lost the broker connection (%s)", exc)
                pause = min(max(pause * 2, 0.1), MAX_PAUSE)
                await asyncio.sleep(pause)
            except Exception:
                logger.exception("Error in the remote-control loop; continuing")
                await asyncio.sleep(IDLE_WAIT)

    async def _step(self) -> None:
        messages = await self.consumer.afetch()
        for message in messages:
            await self.handle(message)
        if messages or self._stopping:
            return
        self._wake.clear()
        waiters = [
            asyncio.ensure_future(self._wake.wait()),
            asyncio.ensure_future(self.connection.transport.await_ready(IDLE_WAIT)),
        ]
        _done, pending = await asyncio.wait(
            waiters, timeout=IDLE_WAIT, return_when=asyncio.FIRST_COMPLETED
        )
        for waiter in pending:
            waiter.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # -- one request ------------------------------------------------------------------------
    def _undecodable(self, message: Message, exc: Exception) -> None:
        logger.error("Ignoring a remote-control request that cannot be decoded: %s", exc)

    async def handle(self, message: Message) -> None:
        """Act on one request (if it is for this node) and send the reply it asks for."""
        clock = self.worker.app.clock
        header = message.headers.get("clock")
        if isinstance(header, int):
            clock.adjust(header)
        else:
            clock.forward()
        try:
            request = ControlRequest.from_body(message.decode())
            if not request.addressed_to(self.hostname):
                return
        except (ValueError, SerializationError, MissingDependency) as exc:
            logger.error("Ignoring a malformed remote-control request: %s", exc)
            return
        reply = await self.dispatch(request)
        if request.reply_to is not None and request.ticket is not None:
            await self._reply(request, reply)

    async def dispatch(self, request: ControlRequest) -> Any:
        """Run the request's command; its reply (an ``{"error": ...}`` when it failed)."""
        handle = HANDLERS.get(request.method)
        if handle is None:
            logger.error("No such remote-control command: %s", request.method)
            return nok(f"unknown command {request.method!r}")
        logger.debug("Remote control: %s(%s)", request.method, dict(request.arguments))
        try:
            return await handle(self.state, **request.arguments)
        except Exception as exc:
            logger.exception("Remote-control command %s failed", request.method)
            return nok(repr(exc))

    async def _reply(self, request: ControlRequest, reply: Any) -> None:
        assert request.reply_to is not None
        exchange = Exchange(request.reply_to.exchange, "direct", durable=False)
        producer = Producer(self.connection, auto_declare=False)
        options: dict[str, Any] = {
            "exchange": exchange.name,
            "declare": [exchange],
            "headers": {"ticket": request.ticket, "clock": self.worker.app.clock.forward()},
            "serializer": self.mailbox.serializer,
            "delivery_mode": TRANSIENT,
        }
        key = request.reply_to.routing_key
        try:
            try:
                await producer.apublish({self.hostname: reply}, key, **options)
            except EncodeError as exc:
                failed = nok(f"the reply cannot be serialized: {exc}")
                await producer.apublish({self.hostname: failed}, key, **options)
        except Exception as exc:
            logger.warning("Could not send the reply to %s: %s", request.method, exc)
