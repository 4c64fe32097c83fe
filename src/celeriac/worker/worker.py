"""The worker process: pool, consumer, signals and shutdown.

``Worker(app, ...).run()`` blocks until the worker is told to stop:

- SIGTERM or SIGINT: warm shutdown: stop fetching, let running tasks finish, return held
  (ETA, rate-limited) messages to the broker, exit 0;
- a second SIGTERM/SIGINT, or SIGQUIT: cold shutdown: stop the pool at once; unacked
  messages go back to the broker when the connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import signal
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import celeriac
from celeriac import signals
from celeriac.app.trace import Tracer
from celeriac.messaging.entities import Queue
from celeriac.transports.sqlite_db import path_from_url
from celeriac.utils.url import mask_password, scheme_of
from celeriac.worker.consumer import TaskConsumer
from celeriac.worker.pidbox import PidboxNode
from celeriac.worker.pools import pool_class

if TYPE_CHECKING:
    from celeriac.app.base import Celery
    from celeriac.worker.pools.base import Pool

logger = logging.getLogger("celeriac.worker")


def display_url(url: str) -> str:
    """``url`` for people: password masked, an SQLite file's path made absolute."""
    if scheme_of(url) in ("sqlite", "db+sqlite", "sqla+sqlite"):
        return f"{url.partition('://')[0]}:///{path_from_url(url)}"
    return mask_password(url)


def expand_hostname(name: str | None) -> str:
    """Celery's node name expansion: ``%h`` host, ``%n`` short host, ``%d`` domain."""
    host = socket.gethostname()
    short, _, domain = host.partition(".")
    name = name or "celeriac@%h"
    return name.replace("%h", host).replace("%n", short).replace("%d", domain)


@dataclass
class WorkerOptions:
    """What ``celeriac worker`` was asked for (None: the app's setting)."""

    concurrency: int | None = None
    pool: str | None = None
    queues: Sequence[str] | None = None
    hostname: str | None = None
    prefetch_multiplier: int | None = None
    max_tasks_per_child: int | None = None
    max_memory_per_child: int | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    purge: bool = False
    #: Send task events (``-E``; the ``worker_send_task_events`` setting when False).
    task_events: bool = False
    #: Seconds between ``worker-heartbeat`` events (2 by default, as in Celery).
    heartbeat_interval: float | None = None


class Worker:
    """One worker: an event loop consuming task queues into an execution pool."""

    def __init__(self, app: Celery, options: WorkerOptions | None = None) -> None:
        self.app = app
        self.options = options or WorkerOptions()
        conf = app.conf
        opts = self.options
        self.hostname = expand_hostname(opts.hostname)
        self.pool_name = opts.pool or conf.worker_pool
        self.concurrency = opts.concurrency or conf.worker_concurrency or os.cpu_count() or 1
        multiplier = opts.prefetch_multiplier or conf.worker_prefetch_multiplier
        self.prefetch = max(1, multiplier * self.concurrency)
        self.queues = self._queues(opts.queues)
        self.consumer: TaskConsumer | None = None
        self.pool: Pool | None = None
        self.pidbox: PidboxNode | None = None
        self._stop_requests = 0
        self._stop: asyncio.Event | None = None  # made on the worker's loop
        self._cold = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._terminating: asyncio.Future[None] | None = None
        #: Set once the worker consumes (for embedding and tests).
        self.ready = threading.Event()
        self.exitcode = 0

    def _queues(self, names: Sequence[str] | None) -> list[Queue]:
        router = self.app.router
        if not names:
            return [
                router.default_queue,
                *[q for q in router.queues.values() if q.name != router.default_queue.name],
            ]
        return [router.queue(name) for name in names]

    # -- running --------------------------------------------------------------------------
    def run(self) -> int:
        """Run until stopped; returns the exit code."""
        signals.worker_init.send(sender=self)
        self.app.import_task_modules()
        asyncio.run(self._main())
        return self.exitcode

    async def _main(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        stop = self._stop = asyncio.Event()
        tracer = Tracer(self.app, hostname=self.hostname)
        cls = pool_class(self.pool_name)
        self.pool = cls(
            tracer.run,
            self.concurrency,
            async_runner=tracer.arun,
            max_tasks_per_child=self.options.max_tasks_per_child
            or self.app.conf.worker_max_tasks_per_child,
            max_memory_per_child=self.options.max_memory_per_child
            or self.app.conf.worker_max_memory_per_child,
            on_process_start=self._on_process_start,
        )
        # Children are forked before any I/O thread exists.
        await self.pool.start()
        self.consumer = TaskConsumer(
            self.app,
            self.pool,
            self.queues,
            self.hostname,
            self.prefetch,
            self.options.time_limit,
            self.options.soft_time_limit,
        )
        if self.options.purge:
            purged = await self.consumer.connection.arun(self._purge)
            logger.warning("Purged %d message(s) from %d queue(s)", purged, len(self.queues))
        await self.consumer.start()
        if self.app.conf.worker_enable_remote_control:
            # Before fetching: it also loads the revokes made while no worker listened.
            self.pidbox = PidboxNode(self)
            await self.pidbox.start()
        await self._start_events()
        self._install_signal_handlers(loop)
        print(self.banner(), flush=True)
        logger.info("%s ready.", self.hostname)
        signals.worker_ready.send(sender=self)
        self.ready.set()
        fetching = asyncio.ensure_future(self.consumer.run())
        await stop.wait()
        await self._shutdown(fetching)

    @property
    def task_events(self) -> bool:
        """True when this worker sends task events (``-E``, ``worker_send_task_events``)."""
        return self.options.task_events or self.app.conf.worker_send_task_events

    async def _start_events(self) -> None:
        """Send worker-online and start heartbeats (and task events when asked for)."""
        assert self.consumer is not None
        events = self.consumer.events
        events.task_events = self.task_events
        if self.options.heartbeat_interval:
            events.heartbeat_interval = self.options.heartbeat_interval
        await events.start()

    def _purge(self) -> int:
        assert self.consumer is not None
        transport = self.consumer.connection.transport
        self.consumer.connection.declare(*self.queues)
        return sum(transport.purge(q.name) for q in self.queues)

    def _on_process_start(self) -> None:
        self.app.after_fork()
        signals.worker_process_init.send(sender=None)

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Embedded in a thread: the host program stops it with stop().
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGQUIT, self.request_stop, True)

    def request_stop(self, cold: bool = False) -> None:
        """Warm shutdown the first time; cold when asked twice (or ``cold``)."""
        self._stop_requests += 1
        if cold or self._stop_requests > 1:
            logger.warning("worker: Cold shutdown (MainProcess)")
            self._cold = True
        else:
            logger.warning("worker: Warm shutdown (MainProcess)")
        if self._stop is not None:
            self._stop.set()
        if self.consumer is not None:
            self.consumer.stop()
        if self._cold and self.consumer is not None:
            self.consumer.terminating = True
        if self._cold and self.pool is not None:
            self._terminating = asyncio.ensure_future(self.pool.terminate())

    def stop(self, cold: bool = False) -> None:
        """Ask the worker to shut down, from any thread (warm unless ``cold``).

        A worker that already stopped (its loop is closed) is left as it is.
        """
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # it closed just now
                self._loop.call_soon_threadsafe(self.request_stop, cold)

    async def _shutdown(self, fetching: asyncio.Future[Any]) -> None:
        assert self.consumer is not None and self.pool is not None
        signals.worker_shutting_down.send(sender=self.hostname, sig="SIGTERM", how="warm")
        await fetching
        if self._cold:
            await self.pool.terminate()
        else:
            await self.pool.join()
        if self.pidbox is not None:
            await self.pidbox.stop()
        await self.consumer.events.stop()  # worker-offline, and the last task events
        await self.consumer.shutdown()
        signals.worker_shutdown.send(sender=self)

    # -- presentation ---------------------------------------------------------------------
    def _events_banner(self) -> str:
        return "ON" if self.task_events else "OFF (enable -E to monitor tasks in this worker)"

    def banner(self) -> str:
        """The start-up banner, like Celery's (passwords masked)."""
        app = self.app
        queues = "\n".join(
            f"                .> {q.name:<16} exchange={q.exchange.name if q.exchange else ''}"
            f"({q.exchange.type if q.exchange else 'direct'}) key={q.routing_key or q.name}"
            for q in self.queues
        )
        tasks = "\n".join(f"  . {name}" for name in sorted(app.tasks.regular()))
        return (
            f"\n -------------- {self.hostname} v{celeriac.__version__} "
            f"(Python {platform.python_version()})\n"
            f"--- ***** ----- {platform.platform()}\n"
            f"-- ******* ---- [config]\n"
            f"- *** --- * --- .> app:         {app.main or '__main__'}:{id(app):#x}\n"
            f"- ** ---------- .> transport:   {display_url(app.broker_url)}\n"
            f"- ** ---------- .> results:     {display_url(app.result_backend_url)}\n"
            f"- *** --- * --- .> concurrency: {self.concurrency} ({self.pool_name})\n"
            f"-- ******* ---- .> prefetch:    {self.prefetch}\n"
            f"--- ***** ----- .> task events: {self._events_banner()}\n"
            f" -------------- [queues]\n{queues}\n\n[tasks]\n{tasks}\n"
        )
