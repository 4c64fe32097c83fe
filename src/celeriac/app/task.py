"""``Task``: a registered function plus the options and methods to call it remotely.

``Task[P, R]`` is generic in the function's parameters and return type, so
``add.delay(1, 2)`` is checked against ``add``'s signature and returns ``AsyncResult[R]``.
Calling the task object runs the function here; ``delay``/``apply_async`` send a message;
``apply`` runs it here through the same tracer the worker uses.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Generic, ParamSpec, TypeVar, cast

from celeriac import states
from celeriac.app.state import current_request
from celeriac.canvas import Signature, chunks, group, maybe_signature, xmap, xstarmap
from celeriac.exceptions import Ignore, MaxRetriesExceededError, Retry
from celeriac.result import AsyncResult, EagerResult

if TYPE_CHECKING:
    from celeriac.app.base import Celery

P = ParamSpec("P")
R = TypeVar("R")

#: The calling options a task's own attributes provide defaults for.
TASK_OPTIONS = (
    "queue",
    "exchange",
    "routing_key",
    "priority",
    "serializer",
    "compression",
    "time_limit",
    "soft_time_limit",
    "expires",
)


class Context:
    """``self.request``: what the running task knows about its own call."""

    id: str | None = None
    task: str | None = None
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = {}
    retries: int = 0
    eta: str | None = None
    expires: str | None = None
    hostname: str | None = None
    delivery_info: Mapping[str, Any] = {}
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    callbacks: list[Any] | None = None
    errbacks: list[Any] | None = None
    chain: list[Any] | None = None
    chord: Any = None
    correlation_id: str | None = None
    reply_to: str | None = None
    origin: str | None = None
    shadow: str | None = None
    timelimit: tuple[float | None, float | None] = (None, None)
    ignore_result: bool = False
    headers: Mapping[str, Any] | None = None
    is_eager: bool = False
    called_directly: bool = True
    children: list[Any] = []  # noqa: RUF012 (each running request gets its own list)

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)

    def get(self, key: str, default: Any = None) -> Any:
        """A field's value, or ``default``."""
        return getattr(self, key, default)

    def as_dict(self) -> dict[str, Any]:
        """The fields that were set."""
        return dict(self.__dict__)

    def __repr__(self) -> str:
        return f"<Context {self.__dict__!r}>"


class Task(Generic[P, R]):
    """A task. Subclass it (``base=``) for shared behaviour; attributes are defaults."""

    name: str = ""
    typing: bool = True
    max_retries: int | None = 3
    default_retry_delay: float = 180
    rate_limit: str | None = None
    ignore_result: bool | None = None
    store_errors_even_if_ignored: bool | None = None
    serializer: str | None = None
    compression: str | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    acks_late: bool | None = None
    acks_on_failure_or_timeout: bool | None = None
    reject_on_worker_lost: bool | None = None
    track_started: bool | None = None
    expires: float | datetime | None = None
    priority: int | None = None
    queue: str | None = None
    exchange: str | None = None
    routing_key: str | None = None
    autoretry_for: tuple[type[BaseException], ...] = ()
    dont_autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: ClassVar[dict[str, Any]] = {}
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600
    retry_jitter: bool = True
    throws: tuple[type[BaseException], ...] = ()

    _app: Celery | None = None
    _fun: Callable[..., Any] | None = None
    _bind: bool = False
    #: ``(function, is it async)``: asked once per task run, answered once per function.
    _coroutine: tuple[Callable[..., Any], bool] | None = None

    def bind_function(
        self, app: Celery, fun: Callable[..., Any] | None, name: str, bind: bool, **opts: Any
    ) -> None:
        """Attach the app, the function and per-task options (done by ``app.task``)."""
        self._app = app
        self._fun = fun
        self._bind = bind
        self.name = name
        for key, value in opts.items():
            setattr(self, key, value)
        if fun is not None:
            self.__doc__ = fun.__doc__
            self.__wrapped__ = fun
            self.__module__ = fun.__module__
        self._signature: inspect.Signature | None = None
        self._positional = -1

    # -- identity -------------------------------------------------------------------------
    @property
    def app(self) -> Celery:
        """The app this task is registered with."""
        if self._app is None:
            from celeriac.app.state import get_current_app

            self._app = get_current_app()
        return self._app

    @property
    def request(self) -> Context:
        """The request of the current execution of this task."""
        request = current_request.get()
        return request if request is not None else Context()

    @property
    def backend(self) -> Any:
        """The result backend (the app's)."""
        return self.app.backend

    @property
    def is_coroutine(self) -> bool:
        """True for ``async def`` tasks."""
        fun = self._fun
        if fun is None:  # a class-based task: its ``run``
            return inspect.iscoroutinefunction(self.run)
        known = self._coroutine
        if known is None or known[0] is not fun:
            known = self._coroutine = (fun, inspect.iscoroutinefunction(fun))
        return known[1]

    def __repr__(self) -> str:
        return f"<@task: {self.name} of {self.app.main}>"

    # -- running here ---------------------------------------------------------------------
    def run(self, *args: Any, **kwargs: Any) -> Any:
        """The task body; function tasks call their function, class tasks override this."""
        if self._fun is None:
            raise NotImplementedError(f"task {self.name!r} defines no run() method")
        if self._bind:
            return self._fun(self, *args, **kwargs)
        return self._fun(*args, **kwargs)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the task function in this process (no message, no result stored)."""
        if current_request.get() is not None and current_request.get().task == self.name:  # type: ignore[union-attr]
            return cast(R, self.run(*args, **kwargs))
        context = Context(task=self.name, args=args, kwargs=kwargs, children=[])
        token = current_request.set(context)
        try:
            return cast(R, self.run(*args, **kwargs))
        finally:
            current_request.reset(token)

    def check_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Raise ``TypeError`` at the call site when the arguments do not fit the function."""
        if not self.typing:
            return
        if self._signature is None:
            target = self._fun or self.run
            signature = inspect.signature(target)
            if self._bind and self._fun is not None:
                params = list(signature.parameters.values())[1:]
                signature = signature.replace(parameters=params)
            self._signature = signature
            self._positional = _plain_positional_count(signature)
        if not kwargs and len(args) == self._positional:
            return  # the common call, f(a, b) for def f(a, b): nothing to check
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}() {exc}") from None

    # -- sending --------------------------------------------------------------------------
    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send the task with these arguments; shortcut for ``apply_async``."""
        return self.apply_async(args, kwargs)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """``delay`` for asyncio code."""
        return await self.aapply_async(args, kwargs)

    def _call_options(
        self, args: Any, kwargs: Any, options: dict[str, Any]
    ) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
        if args is not None and not isinstance(args, list | tuple):
            raise TypeError(
                f"{self.name}: args must be a list or tuple, not {type(args).__name__} "
                "(did you mean args=(value,)?)"
            )
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise TypeError(f"{self.name}: kwargs must be a mapping, not {type(kwargs).__name__}")
        args_list, kwargs_dict = list(args or ()), dict(kwargs or {})
        self.check_arguments(args_list, kwargs_dict)
        merged = {k: v for k in TASK_OPTIONS if (v := getattr(self, k)) is not None}
        merged.update({k: v for k, v in options.items() if v is not None})
        if "ignore_result" not in merged:
            merged["ignore_result"] = self._ignores_result()
        return args_list, kwargs_dict, merged

    def _ignores_result(self) -> bool:
        if self.ignore_result is not None:
            return self.ignore_result
        return bool(self.app.conf.task_ignore_result)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Send the task: see ``Celery.send_task`` for the options (countdown, eta, queue...).

        With ``task_always_eager`` it runs here instead and returns an eager result.
        """
        args_list, kwargs_dict, merged = self._call_options(args, kwargs, options)
        if self.app.conf.task_always_eager:
            return self.apply(args_list, kwargs_dict, **merged)
        result: AsyncResult[R] = self.app.send_task(self.name, args_list, kwargs_dict, **merged)
        return result

    async def aapply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """``apply_async`` for asyncio code: the broker I/O does not block the loop."""
        args_list, kwargs_dict, merged = self._call_options(args, kwargs, options)
        if self.app.conf.task_always_eager:
            return self.apply(args_list, kwargs_dict, **merged)
        result: AsyncResult[R] = await self.app.asend_task(
            self.name, args_list, kwargs_dict, **merged
        )
        return result

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        task_id: str | None = None,
        throw: bool | None = None,
        retries: int = 0,
        link: Any = None,
        link_error: Any = None,
        **_options: Any,
    ) -> EagerResult[R]:
        """Run the task here, now, through the worker's tracer; returns an eager result."""
        from celeriac.app.trace import Tracer
        from celeriac.worker.job import Job

        task_id = task_id or str(uuid.uuid4())
        request = {
            "id": task_id,
            "retries": retries,
            "callbacks": _as_list(link),
            "errbacks": _as_list(link_error),
            "root_id": task_id,
        }
        parent = current_request.get()
        if parent is not None and parent.id:
            request.update(parent_id=parent.id, root_id=parent.root_id or parent.id)
        job = Job(task_id, self.name, tuple(args or ()), dict(kwargs or {}), request)
        outcome = Tracer(self.app, eager=True).run(job)
        if outcome.retry is not None and outcome.retry.get("eager_result") is not None:
            eager: EagerResult[R] = outcome.retry["eager_result"]
            return eager
        error = outcome.error.exception if outcome.error else None
        propagate = self.app.conf.task_eager_propagates if throw is None else throw
        if error is not None and propagate and outcome.state == states.FAILURE:
            raise error
        value = error if outcome.state in states.EXCEPTION_STATES else outcome.result
        traceback = outcome.error.traceback if outcome.error else None
        return EagerResult(task_id, value, outcome.state, traceback, self.name, self.app)

    # -- signatures -----------------------------------------------------------------------
    def signature(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature[R]:
        """A signature of this task with these arguments and options."""
        immutable = bool(options.pop("immutable", False))
        return Signature(self, args, kwargs, options, immutable=immutable, app=self.app)

    subtask = signature

    def s(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """A (partial) signature: ``add.s(2)`` then called with the parent's result."""
        return Signature(self, args, kwargs, app=self.app)

    def si(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """An immutable signature: callbacks do not add the parent's result to its args."""
        return Signature(self, args, kwargs, immutable=True, app=self.app)

    def map(self, it: Iterable[Any]) -> xmap:
        """``[self(item) for item in it]`` as ONE task (Celery's ``celery.map``)."""
        return xmap(self.s(), it, app=self.app)

    def starmap(self, it: Iterable[Any]) -> xstarmap:
        """``[self(*item) for item in it]`` as ONE task (Celery's ``celery.starmap``)."""
        return xstarmap(self.s(), it, app=self.app)

    def chunks(self, it: Iterable[Any], n: int) -> chunks:
        """``it`` in parts of ``n`` argument tuples, each part one task, sent as a group."""
        return chunks(self.s(), it, n, app=self.app)

    def AsyncResult(self, task_id: str) -> AsyncResult[R]:
        """The result of a call of this task by id."""
        return AsyncResult(task_id, app=self.app, task_name=self.name)

    # -- inside a running task ------------------------------------------------------------
    def update_state(
        self,
        task_id: str | None = None,
        state: str | None = None,
        meta: Any = None,
        **kwargs: Any,
    ) -> None:
        """Record a state (e.g. ``PROGRESS`` with ``meta={"done": 3}``) for ``get(on_message)``."""
        request = self.request
        task_id = task_id or request.id
        if task_id is None:
            raise RuntimeError("update_state() needs a task_id outside a running task")
        if request.is_eager and not self.app.conf.task_store_eager_result:
            return
        self.backend.store_result(
            task_id, meta, state or states.PENDING, request=_request_fields(request), **kwargs
        )

    def retry(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        """Send this task again (with ``retries + 1``) and raise ``Retry`` to end this run.

        Raises:
            Retry: Always, unless ``throw=False`` (then it is returned).
            MaxRetriesExceededError: ``max_retries`` retries were made already (``exc`` is
                raised instead when given).
        """
        request = self.request
        if request.called_directly or request.id is None:
            raise exc if exc is not None else Retry("task called directly, not retried", exc)
        limit = self.max_retries if max_retries is None else max_retries
        retries = request.retries + 1
        if limit is not None and retries > limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"Can't retry {self.name}[{request.id}] args:{request.args} "
                f"kwargs:{request.kwargs} (max_retries={limit})"
            )
        if eta is None and countdown is None:
            countdown = self.default_retry_delay
        sig = self.signature(
            request.args if args is None else args,
            request.kwargs if kwargs is None else kwargs,
            **_retry_options(request, retries, eta, countdown, options),
        )
        if request.is_eager:
            eager = sig.apply()
            retry = Retry(exc=exc, when=eta or countdown, is_eager=True, sig=eager)
        elif throw:
            # Sent by the worker once it has stored the RETRY state: the next attempt can
            # then never store its own states before this one's RETRY (which, with a
            # short countdown on a busy machine, could overwrite the next one's FAILURE).
            retry = Retry(exc=exc, when=eta or countdown, sig=sig)
            retry.unsent = True
        else:
            sig.apply_async()
            retry = Retry(exc=exc, when=eta or countdown, sig=sig)
        if throw:
            raise retry
        return retry

    def replace(self, sig: Mapping[str, Any]) -> Any:
        """End this task by handing its place in the workflow to ``sig``.

        ``sig`` runs with this task's id (its result is this task's result), group and
        chord place, callbacks, errbacks and the rest of its chain. A group is given a
        body (``celery.accumulate``) that collects its results, so a replaced task's
        result is the group's list. This run ends here (``Ignore``: nothing is stored for
        it); eagerly, the replacement runs at once and its value is returned.

        Raises:
            Ignore: Always, outside eager mode (the worker records nothing for this run).
        """
        request = self.request
        if request.called_directly or request.id is None:
            raise RuntimeError("replace() can only be called by a running task")
        replacement = maybe_signature(sig, app=self.app)._copy()
        if isinstance(replacement, group):
            replacement = replacement | self.app.tasks["celery.accumulate"].s(index=0)
        for callback in request.callbacks or ():
            replacement.link(callback)
        for errback in request.errbacks or ():
            replacement.link_error(errback)
        replacement.freeze(
            request.id,
            group_id=request.group,
            chord=request.chord,
            root_id=request.root_id,
            group_index=request.group_index,
        )
        if request.is_eager:
            return replacement.apply().get(disable_sync_subtasks=False)
        nesting = int((request.headers or {}).get("replaced_task_nesting") or 0) + 1
        replacement.apply_async(
            chain=request.chain or None, headers={"replaced_task_nesting": nesting}
        )
        raise Ignore("Replaced by new task")

    # -- hooks (override in a base class) -------------------------------------------------
    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        """Called in the worker after the task succeeded."""

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """Called in the worker after the task failed."""

    def on_retry(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """Called in the worker when the task is to be retried."""

    def after_return(
        self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """Called in the worker after the task returned, whatever the outcome."""


def _plain_positional_count(signature: inspect.Signature) -> int:
    """How many arguments a purely positional call takes, or -1 when that is not simple."""
    count = 0
    for param in signature.parameters.values():
        if param.kind not in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            return (
                -1 if param.default is param.empty and param.kind is param.KEYWORD_ONLY else count
            )
        if param.default is not param.empty:
            return -1
        count += 1
    return count


def _as_list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return [dict(value)]
    return [dict(v) for v in value]


def _request_fields(request: Context) -> dict[str, Any]:
    return {
        "id": request.id,
        "task": request.task,
        "group": request.group,
        "parent_id": request.parent_id,
        "args": request.args,
        "kwargs": request.kwargs,
        "hostname": request.hostname,
        "retries": request.retries,
        "delivery_info": request.delivery_info,
    }


def _retry_options(
    request: Context,
    retries: int,
    eta: datetime | None,
    countdown: float | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Options of the message that retries ``request``: same id, links and workflow."""
    delivery = request.delivery_info or {}
    merged: dict[str, Any] = {
        "task_id": request.id,
        "retries": retries,
        "link": request.callbacks,
        "link_error": request.errbacks,
        "group_id": request.group,
        "group_index": request.group_index,
        "root_id": request.root_id,
        "parent_id": request.parent_id,
        "chain": request.chain,
        "chord": request.chord,
        "time_limit": request.timelimit[0] if request.timelimit else None,
        "soft_time_limit": request.timelimit[1] if request.timelimit else None,
        "expires": request.expires,
        "exchange": delivery.get("exchange"),
        "routing_key": delivery.get("routing_key"),
        "priority": delivery.get("priority"),
        "countdown": countdown,
        "eta": eta,
    }
    merged.update(options)
    return {k: v for k, v in merged.items() if v is not None}
