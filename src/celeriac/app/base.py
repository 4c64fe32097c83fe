"""``Celery``: the application object: configuration, task registry, sending and results.

Moving from Celery is a change of imports::

    from celeriac import Celery

    app = Celery("proj")          # broker and results: ./celeriac.db, no server needed

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    add.delay(2, 2).get(timeout=10)

Nothing connects until something is sent or read; decorating functions is cheap.
"""

from __future__ import annotations

import functools
import importlib
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar, overload
from zoneinfo import ZoneInfo

from celeriac import signals
from celeriac.app import state
from celeriac.app.builtins import register_builtin_tasks
from celeriac.app.protocol import TaskMessage, build_task_message
from celeriac.app.registry import TaskRegistry
from celeriac.app.routes import Router
from celeriac.app.settings import Settings, settings_from_envvar, settings_from_object
from celeriac.app.task import Task as BaseTask
from celeriac.canvas import Call, signatures
from celeriac.messaging.connection import Connection
from celeriac.messaging.entities import Queue
from celeriac.messaging.pools import ConnectionPool, ProducerPool
from celeriac.messaging.retry import RetryPolicy
from celeriac.result import AsyncResult as Result
from celeriac.utils.ids import uuid4_text
from celeriac.utils.url import scheme_of

if TYPE_CHECKING:
    from celeriac.app.task import Context
    from celeriac.backends.base import ResultBackend
    from celeriac.backends.rpc import RPCBackend
    from celeriac.control import Control
    from celeriac.events.app import Events
    from celeriac.events.clock import LamportClock

P = ParamSpec("P")
R = TypeVar("R")

#: The embedded default: broker and results in one SQLite file in the working directory.
DEFAULT_DATABASE = "celeriac.db"

_shared_tasks: list[Callable[[Celery], Any]] = []


def default_sqlite_url() -> str:
    """``sqlite:////abs/path/celeriac.db`` for the working directory."""
    return "sqlite:///" + os.path.abspath(DEFAULT_DATABASE)


def task_name_for(app_main: str | None, fun: Callable[..., Any]) -> str:
    """Celery's automatic name: ``module.function`` (``main.function`` for ``__main__``)."""
    module = fun.__module__
    if module == "__main__" and app_main:
        module = app_main
    return f"{module}.{fun.__qualname__}"


def _aware(value: datetime | str, tz: ZoneInfo) -> datetime:
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    return when if when.tzinfo is not None else when.replace(tzinfo=tz)


class Celery:
    """A celeriac application.

    Args:
        main: Name of the main module (used for task names defined in ``__main__``).
        broker: Broker URL (``broker_url``); the embedded SQLite file when not given.
        backend: Result backend URL (``result_backend``); the same SQLite file by default.
        include: Modules the worker imports (where tasks are defined).
        set_as_current: Make this the current app (used by ``shared_task`` and signatures).
        **settings: More settings by name.
    """

    Task: type[BaseTask[Any, Any]] = BaseTask

    def __init__(
        self,
        main: str | None = None,
        broker: str | None = None,
        backend: str | None = None,
        include: Sequence[str] | None = None,
        set_as_current: bool = True,
        **settings: Any,
    ) -> None:
        self.main = main
        self.conf = Settings()
        if broker is not None:
            self.conf.broker_url = broker
        if backend is not None:
            self.conf.result_backend = backend
        if include is not None:
            self.conf.include = list(include)
        self.conf.update(settings)
        self.tasks = TaskRegistry()
        self._lock = threading.RLock()
        self._pool: ConnectionPool | None = None
        self._producers: ProducerPool | None = None
        self._backend: ResultBackend | None = None
        self._oid: tuple[int, str] | None = None
        self._router: Router | None = None
        self._retry_policy: tuple[dict[str, Any], RetryPolicy] | None = None
        register_builtin_tasks(self)
        state.register_app(self)
        if set_as_current:
            state.set_current_app(self)
        for register in list(_shared_tasks):
            register(self)

    def __repr__(self) -> str:
        return f"<Celery {self.main or '__main__'} at {id(self):#x}>"

    # -- configuration --------------------------------------------------------------------
    def config_from_object(
        self, obj: Any, silent: bool = False, force: bool = True, namespace: str | None = None
    ) -> None:
        """Load settings from a module, class, mapping or import path (``"proj.config"``)."""
        try:
            values = settings_from_object(obj, namespace)
        except ImportError:
            if silent:
                return
            raise
        self.conf.update(values)
        self._reset_clients()

    def config_from_envvar(self, variable_name: str, silent: bool = False) -> bool:
        """Load settings from the module named by an environment variable."""
        try:
            values = settings_from_envvar(variable_name)
        except Exception:
            if silent:
                return False
            raise
        self.conf.update(values)
        self._reset_clients()
        return True

    def _reset_clients(self) -> None:
        with self._lock:
            pool, self._pool, self._producers, self._router = self._pool, None, None, None
        if pool is not None:
            pool.close()

    @property
    def timezone(self) -> ZoneInfo:
        """The app's timezone (``timezone`` setting; UTC by default)."""
        return ZoneInfo(self.conf.timezone or "UTC")

    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""
        return datetime.now(UTC)

    # -- tasks ----------------------------------------------------------------------------
    @overload
    def task(self, fun: Callable[P, R], /) -> BaseTask[P, R]: ...

    @overload
    def task(
        self,
        *,
        bind: Literal[True],
        name: str | None = ...,
        base: type[BaseTask[Any, Any]] | None = ...,
        **options: Any,
    ) -> Callable[[Callable[Concatenate[Any, P], R]], BaseTask[P, R]]: ...

    @overload
    def task(
        self,
        *,
        bind: Literal[False] = ...,
        name: str | None = ...,
        base: type[BaseTask[Any, Any]] | None = ...,
        **options: Any,
    ) -> Callable[[Callable[P, R]], BaseTask[P, R]]: ...

    def task(self, *args: Any, **options: Any) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(bind=True, ...)``."""
        if args:
            if len(args) != 1 or not callable(args[0]) or options:
                raise TypeError("use @app.task or @app.task(name=..., bind=..., ...)")
            return self._task_from_fun(args[0])

        def decorate(f: Callable[..., Any]) -> BaseTask[Any, Any]:
            return self._task_from_fun(f, **options)

        return decorate

    def _task_from_fun(
        self,
        fun: Callable[..., Any],
        name: str | None = None,
        base: type[BaseTask[Any, Any]] | None = None,
        bind: bool = False,
        **options: Any,
    ) -> BaseTask[Any, Any]:
        name = name or task_name_for(self.main, fun)
        with self._lock:
            existing = self.tasks.get(name)
            if existing is not None:
                return existing
            task = (base or self.Task)()
            task.bind_function(self, fun, name, bind, **options)
            self.tasks.register(task)
        return task

    def register_task(
        self, task: BaseTask[Any, Any] | type[BaseTask[Any, Any]]
    ) -> BaseTask[Any, Any]:
        """Register a class-based task (an instance, or a class to instantiate)."""
        instance = task() if isinstance(task, type) else task
        if not instance.name:
            cls = type(instance)
            instance.name = f"{cls.__module__}.{cls.__qualname__}"
        instance.bind_function(self, None, instance.name, False)
        self.tasks.register(instance)
        return instance

    def import_task_modules(self) -> None:
        """Import the modules of ``include`` and ``imports`` (the worker does this)."""
        for module in [*self.conf.imports, *self.conf.include]:
            importlib.import_module(module)

    def autodiscover_tasks(
        self, packages: Iterable[str] | Callable[[], Iterable[str]], related_name: str = "tasks"
    ) -> None:
        """Import ``<package>.<related_name>`` for each package that has one."""
        names = packages() if callable(packages) else packages
        for package in names:
            try:
                importlib.import_module(f"{package}.{related_name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{package}.{related_name}":
                    raise

    # -- clients --------------------------------------------------------------------------
    @property
    def broker_url(self) -> str:
        """The broker URL (the embedded SQLite file when none is configured)."""
        return self.conf.broker_url or default_sqlite_url()

    @property
    def result_backend_url(self) -> str:
        """The result backend URL (the broker's SQLite file when none is configured)."""
        if self.conf.result_backend:
            return self.conf.result_backend
        broker = self.broker_url
        return broker if broker.startswith(("sqlite:", "memory:")) else default_sqlite_url()

    def connection(self, url: str | None = None) -> Connection:
        """A new connection to the broker."""
        return Connection(url or self.broker_url, self.conf.broker_transport_options)

    connection_for_write = connection
    connection_for_read = connection

    @property
    def pool(self) -> ConnectionPool:
        """Broker connections shared by senders (``broker_pool_limit``)."""
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(self.connection, limit=self.conf.broker_pool_limit)
            return self._pool

    @property
    def producer_pool(self) -> ProducerPool:
        """Producers over ``pool``."""
        with self._lock:
            if self._producers is None:
                self._producers = ProducerPool(
                    self.pool, serializer=self.conf.task_serializer, auto_declare=False
                )
            return self._producers

    @property
    def router(self) -> Router:
        """The task router (``task_routes``, ``task_queues``)."""
        with self._lock:
            if self._router is None:
                self._router = Router(self.conf)
            return self._router

    @property
    def backend(self) -> ResultBackend:
        """The result backend (made on first use)."""
        with self._lock:
            if self._backend is None:
                from celeriac.backends import backend_from_url

                conf = self.conf
                rpc: dict[str, Any] = {}
                if self._uses_rpc():
                    # Replies travel over this app's broker, to a queue named after its oid.
                    rpc = {
                        "broker_url": self.broker_url,
                        "broker_options": conf.broker_transport_options,
                        "reply_queue": self.oid,
                    }
                self._backend = backend_from_url(
                    self.result_backend_url,
                    serializer=conf.result_serializer,
                    accept=conf.result_accept_content or conf.accept_content,
                    expires=conf.result_expires,
                    extended=conf.result_extended,
                    options=conf.result_backend_transport_options,
                    **rpc,
                )
            return self._backend

    @property
    def oid(self) -> str:
        """This app's unique id in this process (Celery's ``app.oid``): the name of the
        ``rpc://`` backend's reply queue, and the ``reply_to`` of the tasks it sends."""
        pid = os.getpid()
        with self._lock:
            if self._oid is None or self._oid[0] != pid:
                self._oid = (pid, str(uuid.uuid4()))
            return self._oid[1]

    def _uses_rpc(self) -> bool:
        return scheme_of(self.result_backend_url) == "rpc"

    def _reply_to(self, given: str | None, task_id: str, running: Context | None) -> str | None:
        """Where the states of a task being sent go (its ``reply_to``)."""
        if given:
            return given
        if running is not None and running.id == task_id and running.reply_to:
            return str(running.reply_to)  # A retry replies to whoever sent the first run.
        return self.oid if self._uses_rpc() else None

    def _reply_queue_backend(self, message: TaskMessage) -> RPCBackend | None:
        """The rpc backend whose reply queue ``message`` names, if it is this app's."""
        if not message.reply_to or not self._uses_rpc():
            return None
        from celeriac.backends.rpc import RPCBackend

        backend = self.backend
        if isinstance(backend, RPCBackend) and backend.oid == message.reply_to:
            return backend
        return None

    @functools.cached_property
    def control(self) -> Control:
        """Remote control of the workers: ``app.control.ping()``, ``.inspect().active()``."""
        from celeriac.control import Control

        return Control(self)

    @functools.cached_property
    def clock(self) -> LamportClock:
        """This process's logical clock, stamped on remote-control messages and events."""
        from celeriac.events.clock import LamportClock

        return LamportClock()

    @functools.cached_property
    def events(self) -> Events:
        """The events API: ``app.events.Receiver(conn)``, ``.State()``, ``.Dispatcher()``."""
        from celeriac.events.app import Events

        return Events(self)

    def AsyncResult(self, task_id: str, **kwargs: Any) -> Result[Any]:
        """The result of a task by id."""
        return Result(task_id, app=self, **kwargs)

    def after_fork(self) -> None:
        """Forget connections inherited from a parent process (they belong to it)."""
        with self._lock:
            self._pool = self._producers = None
            self._backend = None

    def close(self) -> None:
        """Release broker connections and the result backend."""
        self._reset_clients()
        with self._lock:
            backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()

    # -- sending --------------------------------------------------------------------------
    def _times(self, name: str, options: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
        """``(eta, expires)`` as aware times, from the ``countdown``/``eta``/``expires``
        options (each popped)."""
        countdown = options.pop("countdown", None)
        eta = options.pop("eta", None)
        expires = options.pop("expires", None)
        if countdown is None and eta is None and expires is None:
            return None, None  # the usual call: no clock or time zone needed
        if countdown is not None and eta is not None:
            raise ValueError(f"{name}: give countdown or eta, not both")
        now = self.now()
        eta_time = now + timedelta(seconds=float(countdown)) if countdown is not None else None
        if eta is not None:
            eta_time = _aware(eta, self.timezone)
        expires_time: datetime | None = None
        if isinstance(expires, int | float):
            expires_time = now + timedelta(seconds=float(expires))
        elif isinstance(expires, timedelta):
            expires_time = now + expires
        elif expires is not None:
            expires_time = _aware(expires, self.timezone)
        return eta_time, expires_time

    def _links(self, options: dict[str, Any], key: str) -> list[Any] | None:
        """The ``link``/``link_error`` option (popped) as signature dicts; None when unset."""
        value = options.pop(key, None)
        if value is None:
            return None
        return [dict(s) for s in signatures(value, self)] or None

    def _prepare(
        self, name: str, args: Any, kwargs: Any, options: dict[str, Any]
    ) -> tuple[TaskMessage, Queue, str, str, dict[str, Any]]:
        if args is not None and not isinstance(args, list | tuple):
            raise TypeError(f"{name}: args must be a list or tuple, not {type(args).__name__}")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise TypeError(f"{name}: kwargs must be a mapping, not {type(kwargs).__name__}")
        eta_time, expires_time = self._times(name, options)
        task_id = options.pop("task_id", None) or uuid4_text()
        parent = state.current_request.get()
        parent_id = options.pop("parent_id", None)
        root_id = options.pop("root_id", None)
        if parent is not None and parent.id and not parent.called_directly:
            parent_id = parent_id or parent.id
            root_id = root_id or parent.root_id or parent.id
        queue, exchange, routing_key = self.router.route(options, name, args or (), kwargs or {})
        message = build_task_message(
            task_id,
            name,
            args or (),
            kwargs or {},
            eta=eta_time,
            expires=expires_time,
            group_id=options.pop("group_id", None),
            group_index=options.pop("group_index", None),
            retries=options.pop("retries", 0) or 0,
            chord=options.pop("chord", None),
            callbacks=self._links(options, "link"),
            errbacks=self._links(options, "link_error"),
            chain=options.pop("chain", None),
            reply_to=self._reply_to(options.pop("reply_to", None), task_id, parent),
            time_limit=options.pop("time_limit", None),
            soft_time_limit=options.pop("soft_time_limit", None),
            root_id=root_id,
            parent_id=parent_id,
            shadow=options.pop("shadow", None),
            ignore_result=bool(options.pop("ignore_result", False)),
            extra_headers=options.pop("headers", None),
        )
        return message, queue, exchange, routing_key, options

    def _outgoing(
        self, producer: Any, message: TaskMessage, exchange: str, key: str, options: dict[str, Any]
    ) -> Any:
        delivery_mode = self.conf.task_default_delivery_mode
        mode = {"persistent": 2, "transient": 1}.get(str(delivery_mode), delivery_mode)
        priority = options.get("priority")
        if priority is None:
            priority = self.conf.task_default_priority
        return producer.prepare(
            message.body,
            key,
            exchange=exchange,
            serializer=options.get("serializer") or self.conf.task_serializer,
            compression=options.get("compression") or self.conf.task_compression,
            headers=message.headers,
            priority=priority,
            delivery_mode=int(mode),
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
        )

    def _retry_args(self, options: dict[str, Any]) -> tuple[bool, RetryPolicy]:
        retry = options.get("retry")
        if retry is None:
            retry = self.conf.task_publish_retry
        policy = options.get("retry_policy")
        if policy is None:
            # Parsed once per configured value, not once per message.
            configured = self.conf.task_publish_retry_policy
            cached = self._retry_policy
            if cached is None or cached[0] != configured:
                cached = self._retry_policy = (
                    dict(configured),
                    RetryPolicy.from_mapping(configured),
                )
            return bool(retry), cached[1]
        return bool(retry), RetryPolicy.from_mapping(policy)

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Result[Any]:
        """Send a task message by name (the task need not be registered here).

        Options: ``task_id``, ``countdown``, ``eta``, ``expires``, ``queue``, ``exchange``,
        ``routing_key``, ``priority``, ``serializer``, ``compression``, ``link``,
        ``link_error``, ``retry``, ``retry_policy``, ``headers``, ``time_limit``,
        ``soft_time_limit``, ``ignore_result``, ``shadow``, ``reply_to``, ``group_id``...

        Raises:
            TypeError: ``args`` is not a list/tuple or ``kwargs`` not a mapping.
            ValueError: Both ``countdown`` and ``eta`` were given.
            ImproperlyConfigured: Unknown serializer or compression.
            OperationalError: The broker could not be reached (after publish retries).
        """
        message, queue, exchange, key, rest = self._prepare(name, args, kwargs, dict(options))
        retry, policy = self._retry_args(rest)
        if (rpc := self._reply_queue_backend(message)) is not None:
            rpc.ensure_reply_queue()  # Before the task exists, so no reply finds no queue.
        signals.before_task_publish.send(
            sender=name,
            body=message.body,
            exchange=exchange,
            routing_key=key,
            headers=message.headers,
            properties={},
            declare=[queue],
            retry_policy=policy,
        )
        with self.producer_pool.acquire() as producer:
            outgoing = self._outgoing(producer, message, exchange, key, rest)
            batch, declare = [outgoing], [queue]
            if self.conf.task_send_sent_event:
                self._add_sent_event(producer, message, queue, exchange, key, batch, declare)
            producer.send(batch, declare=declare, retry=retry, retry_policy=policy)
        self._expect_result(message)
        signals.after_task_publish.send(
            sender=name, body=message.body, exchange=exchange, routing_key=key
        )
        return self._child_result(message.correlation_id, name, rest)

    async def asend_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Result[Any]:
        """``send_task`` for asyncio code: the broker I/O does not block the event loop."""
        message, queue, exchange, key, rest = self._prepare(name, args, kwargs, dict(options))
        retry, policy = self._retry_args(rest)
        if (rpc := self._reply_queue_backend(message)) is not None:
            await rpc.aensure_reply_queue()
        lease = self.producer_pool.acquire()
        try:
            producer = lease.producer
            outgoing = self._outgoing(producer, message, exchange, key, rest)
            batch, declare = [outgoing], [queue]
            if self.conf.task_send_sent_event:
                self._add_sent_event(producer, message, queue, exchange, key, batch, declare)
            await producer.asend(batch, declare=declare, retry=retry, retry_policy=policy)
        finally:
            lease.release()
        self._expect_result(message)
        return self._child_result(message.correlation_id, name, rest)

    def _expect_result(self, message: TaskMessage) -> None:
        """Tell an open result backend that a task just sent will be waited for (Redis
        subscribes to its key now, while the task travels; a waiter still reads once the
        subscription is confirmed, so a result stored before then is not missed). A
        process that never read a result has no backend open and pays nothing."""
        backend = self._backend
        if backend is not None and not message.headers["ignore_result"]:
            backend.on_task_call(message.correlation_id)

    def _add_sent_event(
        self,
        producer: Any,
        message: TaskMessage,
        queue: Queue,
        exchange: str,
        key: str,
        batch: list[Any],
        declare: list[Any],
    ) -> None:
        """Add the ``task-sent`` event to the task's publish (one broker call for both)."""
        batch.append(self.events.task_sent(producer, message.headers, queue.name, exchange, key))
        if self.events.exchange not in declare:
            declare.append(self.events.exchange)

    def send_many(self, calls: Iterable[Call]) -> None:
        """Send several task messages in one publish (what a workflow's ``apply_async`` does).

        Each call is ``(name, args, kwargs, options)``, with ``send_task``'s options; the
        messages reach the broker in one transport call. Nothing is recorded as a child
        of the running task: the workflow records its own result.
        """
        prepared = [self._prepare(c.name, c.args, c.kwargs, dict(c.options)) for c in calls]
        if not prepared:
            return
        retry, policy = self._retry_args(prepared[0][4])
        self._publish_signals(prepared, before=True, policy=policy)
        with self.producer_pool.acquire() as producer:
            batch = [self._outgoing(producer, m, ex, key, rest) for m, _, ex, key, rest in prepared]
            declare: list[Any] = _queues(prepared)
            if self.conf.task_send_sent_event:
                for m, queue, ex, key, _ in prepared:
                    self._add_sent_event(producer, m, queue, ex, key, batch, declare)
            producer.send(batch, declare=declare, retry=retry, retry_policy=policy)
        self._publish_signals(prepared, before=False, policy=policy)

    async def asend_many(self, calls: Iterable[Call]) -> None:
        """``send_many`` for asyncio code: the broker I/O does not block the event loop."""
        prepared = [self._prepare(c.name, c.args, c.kwargs, dict(c.options)) for c in calls]
        if not prepared:
            return
        retry, policy = self._retry_args(prepared[0][4])
        self._publish_signals(prepared, before=True, policy=policy)
        lease = self.producer_pool.acquire()
        try:
            producer = lease.producer
            batch = [self._outgoing(producer, m, ex, key, rest) for m, _, ex, key, rest in prepared]
            declare: list[Any] = _queues(prepared)
            if self.conf.task_send_sent_event:
                for m, queue, ex, key, _ in prepared:
                    self._add_sent_event(producer, m, queue, ex, key, batch, declare)
            await producer.asend(batch, declare=declare, retry=retry, retry_policy=policy)
        finally:
            lease.release()
        self._publish_signals(prepared, before=False, policy=policy)

    def _publish_signals(self, prepared: list[Prepared], before: bool, policy: RetryPolicy) -> None:
        signal = signals.before_task_publish if before else signals.after_task_publish
        if not signal.receivers:
            return
        for message, queue, exchange, key, _ in prepared:
            extra = {"headers": message.headers, "properties": {}, "declare": [queue]}
            signal.send(
                sender=message.headers["task"],
                body=message.body,
                exchange=exchange,
                routing_key=key,
                **({**extra, "retry_policy": policy} if before else {}),
            )

    def _child_result(self, task_id: str, name: str, options: dict[str, Any]) -> Result[Any]:
        """The result of a sent task, recorded as a child of the running task (if any)."""
        result: Result[Any] = Result(task_id, app=self, task_name=name)
        parent = state.current_request.get()
        adds = options.get("add_to_parent", True)
        if parent is not None and adds and parent.id and not parent.called_directly:
            parent.children.append(result)
        return result


#: What ``Celery._prepare`` returns: message, queue, exchange, routing key, other options.
Prepared = tuple[TaskMessage, Queue, str, str, dict[str, Any]]


def _queues(prepared: list[Prepared]) -> list[Queue]:
    """The distinct queues a batch goes to (each declared once)."""
    return list({queue.name: queue for _, queue, _, _, _ in prepared}.values())


def shared_task(*args: Any, **options: Any) -> Any:
    """A task registered with every app, present and future (for reusable apps/libraries).

    Decorating builds nothing and connects nowhere: the task is made for each app when the
    app is created (or now, for apps that already exist), and the returned object resolves
    to the current app's task each time it is used.
    """

    def decorate(fun: Callable[..., Any]) -> SharedTask:
        def register(app: Celery) -> BaseTask[Any, Any]:
            return app._task_from_fun(fun, **options)

        _shared_tasks.append(register)
        for app in state.all_apps():
            register(app)
        return SharedTask(fun, options)

    if len(args) == 1 and callable(args[0]) and not options:
        return decorate(args[0])
    return decorate


class SharedTask:
    """A ``shared_task``: stands for the task of that function in the current app."""

    def __init__(self, fun: Callable[..., Any], options: dict[str, Any]) -> None:
        self.fun = fun
        self.options = options
        self.__doc__ = fun.__doc__
        self.__wrapped__ = fun

    def resolve(self) -> BaseTask[Any, Any]:
        """The task in the current app (registered there now if it was not yet)."""
        return state.get_current_app()._task_from_fun(self.fun, **self.options)

    @property
    def name(self) -> str:
        """The task's name in the current app."""
        return self.resolve().name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def delay(self, *args: Any, **kwargs: Any) -> Result[Any]:
        """See ``Task.delay``."""
        return self.resolve().delay(*args, **kwargs)

    def apply_async(self, *args: Any, **kwargs: Any) -> Result[Any]:
        """See ``Task.apply_async``."""
        return self.resolve().apply_async(*args, **kwargs)

    async def adelay(self, *args: Any, **kwargs: Any) -> Result[Any]:
        """See ``Task.adelay``."""
        return await self.resolve().adelay(*args, **kwargs)

    def s(self, *args: Any, **kwargs: Any) -> Any:
        """See ``Task.s``."""
        return self.resolve().s(*args, **kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Any:
        """See ``Task.si``."""
        return self.resolve().si(*args, **kwargs)

    def __getattr__(self, attribute: str) -> Any:
        # Everything else a Task has (apply, signature, max_retries...), from the real task.
        return getattr(self.resolve(), attribute)

    def __repr__(self) -> str:
        return f"<shared task {self.fun.__module__}.{self.fun.__qualname__}>"
