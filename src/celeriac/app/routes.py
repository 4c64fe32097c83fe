"""Routing tasks to queues: ``task_routes``, ``task_queues`` and the defaults.

A route is found by asking each router in ``task_routes`` in turn: a dict maps task names
(exact, glob patterns like ``"feed.tasks.*"``, or compiled regexes) to options; a callable
(or its import path) is asked ``router(name, args, kwargs, options, task=task)`` and may
return options, a queue name or None. Options given at the call site win over the route.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from celeriac.app.settings import Settings, load_object
from celeriac.exceptions import QueueNotFound
from celeriac.messaging.entities import Exchange, Queue

RouterFn = Callable[..., Any]


def _compile_map(routes: Mapping[Any, Any]) -> RouterFn:
    exact: dict[str, Any] = {}
    patterns: list[tuple[re.Pattern[str], Any]] = []
    for key, value in routes.items():
        if isinstance(key, re.Pattern):
            patterns.append((key, value))
        elif isinstance(key, str) and any(ch in key for ch in "*?["):
            patterns.append((re.compile(fnmatch.translate(key)), value))
        else:
            exact[str(key)] = value

    def route(name: str, *_args: Any, **_kwargs: Any) -> Any:
        if name in exact:
            return exact[name]
        for pattern, value in patterns:
            if pattern.match(name):
                return value
        return None

    return route


def _routers(task_routes: Any) -> list[RouterFn]:
    if task_routes is None:
        return []
    if isinstance(task_routes, Mapping) or callable(task_routes) or isinstance(task_routes, str):
        task_routes = [task_routes]
    routers: list[RouterFn] = []
    for entry in task_routes:
        if isinstance(entry, Mapping):
            routers.append(_compile_map(entry))
        elif isinstance(entry, str):
            routers.append(load_object(entry))
        elif callable(entry):
            routers.append(entry)
        else:
            raise TypeError(f"task_routes entries must be dicts or callables, got {entry!r}")
    return routers


class Router:
    """Decides the queue, exchange and routing key of every task message."""

    def __init__(self, conf: Settings) -> None:
        self.conf = conf
        self.routers = _routers(conf.task_routes)
        self.queues: dict[str, Queue] = {}
        for queue in _as_queues(conf.task_queues):
            self.queues[queue.name] = queue
        self.default_queue = self.queue(conf.task_default_queue, create=True)

    def queue(self, name: str, create: bool | None = None) -> Queue:
        """The queue called ``name`` (from ``task_queues``, or made when allowed).

        Raises:
            QueueNotFound: It is not in ``task_queues`` and missing queues are not created.
        """
        known = self.queues.get(name)
        if known is not None:
            return known
        if create is None:
            create = self.conf.task_create_missing_queues
        if not create:
            raise QueueNotFound(
                f"Queue {name!r} is not in task_queues (and task_create_missing_queues is off)"
            )
        exchange_name = (
            self.conf.task_default_exchange if name == self.conf.task_default_queue else None
        )
        exchange = Exchange(exchange_name or name, self.conf.task_default_exchange_type)
        routing_key = (
            self.conf.task_default_routing_key if name == self.conf.task_default_queue else None
        )
        queue = Queue(
            name,
            exchange,
            routing_key or name,
            max_priority=self.conf.task_queue_max_priority,
        )
        self.queues[name] = queue
        return queue

    def _lookup(
        self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any], options: dict[str, Any]
    ) -> dict[str, Any] | None:
        for router in self.routers:
            found = router(name, args, kwargs, options, task=None)
            if found is None:
                continue
            if isinstance(found, str):
                return {"queue": found}
            if isinstance(found, Queue):
                return {"queue": found}
            return dict(found)
        return None

    def route(
        self, options: dict[str, Any], name: str, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> tuple[Queue, str, str]:
        """``(queue, exchange, routing_key)`` for a call of task ``name`` with ``options``."""
        found = self._lookup(name, args, kwargs, options) if self.routers else None

        def pick(key: str) -> Any:  # the call's option, else the router's
            value = options.get(key)
            return found.get(key) if value is None and found else value

        if found and "priority" in found and options.get("priority") is None:
            options["priority"] = found["priority"]
        queue_value = pick("queue")
        if isinstance(queue_value, Queue):
            queue = queue_value
        elif queue_value:
            queue = self.queue(str(queue_value))
        else:
            queue = self.default_queue
        exchange = pick("exchange")
        if isinstance(exchange, Exchange):
            exchange = exchange.name
        if exchange is None:
            exchange = queue.exchange.name if queue.exchange is not None else ""
        routing_key = pick("routing_key")
        if routing_key is None:
            routing_key = queue.routing_key or queue.name
        return queue, str(exchange), str(routing_key)


def _as_queues(value: Any) -> list[Queue]:
    if value is None:
        return []
    if isinstance(value, Queue):
        return [value]
    if isinstance(value, Mapping):
        return [Queue(name, **dict(opts)) for name, opts in value.items()]
    queues = list(value)
    for queue in queues:
        if not isinstance(queue, Queue):
            raise TypeError(
                f"task_queues must hold celeriac.messaging.Queue objects, got {queue!r}"
            )
    return queues
