"""Signals: hooks that run when something happens (task started, worker ready...).

Names and arguments follow Celery's, so receivers carry over::

    from celeriac.signals import task_success

    @task_success.connect
    def on_success(sender=None, result=None, **kwargs): ...

Receivers are called in the order they connected; an exception in one is logged and does
not stop the others or the task.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

Receiver = Callable[..., Any]


class Signal:
    """A named hook receivers connect to, optionally for one sender only."""

    def __init__(self, name: str, providing_args: tuple[str, ...] = ()) -> None:
        self.name = name
        self.providing_args = providing_args
        self._receivers: list[tuple[Receiver, object | None]] = []
        self._lock = threading.Lock()

    def connect(
        self, receiver: Receiver | None = None, *, sender: object | None = None, weak: bool = False
    ) -> Any:
        """Connect ``receiver`` (usable as a decorator, with or without arguments)."""

        def register(fn: Receiver) -> Receiver:
            with self._lock:
                if all(r is not fn or s is not sender for r, s in self._receivers):
                    self._receivers.append((fn, sender))
            return fn

        return register if receiver is None else register(receiver)

    def disconnect(self, receiver: Receiver, sender: object | None = None) -> bool:
        """Disconnect ``receiver``; returns whether it was connected."""
        with self._lock:
            before = len(self._receivers)
            self._receivers = [
                (r, s) for r, s in self._receivers if r is not receiver or s is not sender
            ]
            return len(self._receivers) != before

    @property
    def receivers(self) -> list[Receiver]:
        """The connected receivers, in order."""
        return [r for r, _ in self._receivers]

    def send(self, sender: object | None = None, **named: Any) -> list[tuple[Receiver, Any]]:
        """Call every receiver for ``sender``; returns ``(receiver, result)`` pairs."""
        if not self._receivers:
            return []
        responses: list[tuple[Receiver, Any]] = []
        for receiver, wanted in list(self._receivers):
            if wanted is not None and wanted is not sender:
                continue
            try:
                responses.append((receiver, receiver(signal=self, sender=sender, **named)))
            except Exception as exc:
                logger.exception("Signal receiver %r of %s raised", receiver, self.name)
                responses.append((receiver, exc))
        return responses

    def __repr__(self) -> str:
        return f"<Signal: {self.name}>"


before_task_publish = Signal("before_task_publish")
after_task_publish = Signal("after_task_publish")
task_received = Signal("task_received")
task_prerun = Signal("task_prerun")
task_postrun = Signal("task_postrun")
task_success = Signal("task_success")
task_failure = Signal("task_failure")
task_retry = Signal("task_retry")
task_revoked = Signal("task_revoked")
task_rejected = Signal("task_rejected")
task_unknown = Signal("task_unknown")
task_internal_error = Signal("task_internal_error")
worker_init = Signal("worker_init")
worker_ready = Signal("worker_ready")
worker_shutdown = Signal("worker_shutdown")
worker_shutting_down = Signal("worker_shutting_down")
worker_process_init = Signal("worker_process_init")
worker_process_shutdown = Signal("worker_process_shutdown")
celeryd_init = Signal("celeryd_init")
import_modules = Signal("import_modules")
