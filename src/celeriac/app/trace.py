"""The tracer: runs one task execution and turns however it ended into an ``Outcome``.

Used by every worker pool and by ``Task.apply`` (eager), so a task behaves the same
wherever it runs. It sets ``self.request``, sends the task signals, applies
``autoretry_for``, stores the state and result, and calls the task's hooks, link callbacks
and errbacks. It never raises: every exception becomes part of the outcome.

Workflows: after a success it sends the next step of the task's chain (the ``chain`` field
of its message); after a failure it stores that failure for the chain's later steps, which
will not run. A task in a chord header reports to its chord once its outcome is stored
(``celeriac.app.chords``), success or failure.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import time
import traceback as tb
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from celeriac import signals, states
from celeriac.app.chords import on_chord_part_return, task_ids
from celeriac.app.state import current_request
from celeriac.app.task import Context, Task
from celeriac.canvas import Signature, maybe_signature
from celeriac.exceptions import Ignore, Reject, Retry
from celeriac.worker.job import ExceptionInfo, Job, Outcome

if TYPE_CHECKING:
    from celeriac.app.base import Celery

logger = logging.getLogger("celeriac.app.trace")


def exception_info(exc: BaseException, traceback: str | None = None) -> ExceptionInfo:
    """An ``ExceptionInfo`` for ``exc`` (with its formatted traceback)."""
    cls = type(exc)
    text = traceback if traceback is not None else "".join(tb.format_exception(exc))
    return ExceptionInfo(cls.__name__, cls.__module__, tuple(exc.args), text, exc)


def backoff_countdown(task: Task[Any, Any], retries: int) -> float:
    """``retry_backoff``: 1, 2, 4, 8... times the factor, capped, optionally jittered."""
    factor = 1.0 if task.retry_backoff is True else float(task.retry_backoff)
    countdown = min(float(task.retry_backoff_max), factor * float(2**retries))
    if task.retry_jitter:
        countdown = random.uniform(0, countdown)
    return countdown


def _with_autoretry(task: Task[Any, Any], exc: BaseException) -> Any:
    """Turn an ``autoretry_for`` exception into ``task.retry`` (raises Retry or the error)."""
    options = dict(task.retry_kwargs)
    if task.retry_backoff and "countdown" not in options:
        options["countdown"] = backoff_countdown(task, task.request.retries)
    return task.retry(exc=exc, **options)


def _wants_autoretry(task: Task[Any, Any], exc: BaseException) -> bool:
    return (
        bool(task.autoretry_for)
        and isinstance(exc, task.autoretry_for)
        and not isinstance(exc, task.dont_autoretry_for or ())
        and not isinstance(exc, Retry | Ignore | Reject)
    )


class Tracer:
    """Runs jobs for one app (in a worker, or eagerly)."""

    def __init__(self, app: Celery, hostname: str | None = None, eager: bool = False) -> None:
        self.app = app
        self.hostname = hostname
        self.eager = eager

    # -- entry points ---------------------------------------------------------------------
    def run(self, job: Job) -> Outcome:
        """Run ``job`` to completion (synchronous tasks; async ones get their own loop)."""
        task = self.app.tasks.get(job.name)
        if task is None:
            return self._unknown(job)
        request = self._request(task, job)
        token = current_request.set(request)
        started = time.perf_counter()
        try:
            self._begin(task, job, request)
            try:
                retval = self._call(task, job)
            except BaseException as exc:
                return self._failed(task, job, request, exc, time.perf_counter() - started)
            return self._succeeded(task, job, request, retval, time.perf_counter() - started)
        finally:
            current_request.reset(token)

    async def arun(self, job: Job) -> Outcome:
        """Run ``job`` from asyncio code: ``async def`` tasks on the loop, others in a thread."""
        task = self.app.tasks.get(job.name)
        if task is None or not task.is_coroutine:
            return await asyncio.to_thread(self.run, job)
        request = self._request(task, job)
        token = current_request.set(request)
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self._begin, task, job, request)
            try:
                retval = await task.run(*job.args, **job.kwargs)
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError):
                    raise
                runtime = time.perf_counter() - started
                return await asyncio.to_thread(self._failed, task, job, request, exc, runtime)
            runtime = time.perf_counter() - started
            return await asyncio.to_thread(self._succeeded, task, job, request, retval, runtime)
        finally:
            current_request.reset(token)

    # -- steps ----------------------------------------------------------------------------
    def _request(self, task: Task[Any, Any], job: Job) -> Context:
        fields = dict(job.request)
        fields.update(
            id=job.id,
            task=task.name,
            args=job.args,
            kwargs=job.kwargs,
            is_eager=self.eager,
            called_directly=False,
            hostname=self.hostname,
            timelimit=(job.time_limit, job.soft_time_limit),
            children=[],
        )
        return Context(**fields)

    def _begin(self, task: Task[Any, Any], job: Job, request: Context) -> None:
        signals.task_prerun.send(
            sender=task, task_id=job.id, task=task, args=job.args, kwargs=job.kwargs
        )
        track = task.track_started
        if track is None:
            track = self.app.conf.task_track_started
        if track and not self.eager:
            task.backend.store_result(
                job.id,
                {"pid": _pid(), "hostname": self.hostname},
                states.STARTED,
                request=self._request_meta(task, request),
            )

    def _call(self, task: Task[Any, Any], job: Job) -> Any:
        try:
            if task.is_coroutine:
                return _run_coroutine(lambda: task.run(*job.args, **job.kwargs))
            if type(task).__call__ is not Task.__call__:
                return task(*job.args, **job.kwargs)
            return task.run(*job.args, **job.kwargs)
        except BaseException as exc:
            if _wants_autoretry(task, exc):
                return _with_autoretry(task, exc)
            raise

    def _stores(self, task: Task[Any, Any], request: Context) -> bool:
        if self.eager:
            return bool(self.app.conf.task_store_eager_result)
        if request.ignore_result:
            return False
        ignore = task.ignore_result
        return not (self.app.conf.task_ignore_result if ignore is None else ignore)

    def _request_meta(self, task: Task[Any, Any], request: Context) -> dict[str, Any]:
        return {
            "id": request.id,
            "task": task.name,
            "group": request.group,
            "parent_id": request.parent_id,
            "args": list(request.args),
            "kwargs": dict(request.kwargs),
            "hostname": request.hostname,
            "retries": request.retries,
            "delivery_info": request.delivery_info,
            "children": list(request.children),
            # Where the rpc backend sends the states (the client's reply queue).
            "reply_to": request.reply_to,
            "correlation_id": request.correlation_id,
        }

    def _succeeded(
        self, task: Task[Any, Any], job: Job, request: Context, retval: Any, runtime: float
    ) -> Outcome:
        try:
            # Callbacks and the chain's next step first, as Celery does, so the tasks they
            # send are stored as this one's children.
            self._send_callbacks(request, retval)
            self._send_chain(request, retval)
            if self._stores(task, request):
                task.backend.mark_as_done(job.id, retval, request=self._request_meta(task, request))
            if request.chord and not self.eager:
                on_chord_part_return(self.app, request, states.SUCCESS, retval)
            task.on_success(retval, job.id, job.args, job.kwargs)
            signals.task_success.send(sender=task, result=retval)
        except BaseException as exc:
            return self._failed(task, job, request, exc, runtime)
        self._finish(task, job, states.SUCCESS, retval, None)
        return Outcome(states.SUCCESS, recorded=True, result=retval, runtime=runtime)

    def _failed(
        self,
        task: Task[Any, Any],
        job: Job,
        request: Context,
        exc: BaseException,
        runtime: float,
    ) -> Outcome:
        if isinstance(exc, Retry):
            return self._retried(task, job, request, exc, runtime)
        if isinstance(exc, Ignore):
            self._finish(task, job, states.IGNORED, None, None)
            return Outcome(states.IGNORED, recorded=True, runtime=runtime)
        if isinstance(exc, Reject):
            info = exception_info(exc)
            self._finish(task, job, states.REJECTED, exc, info)
            return Outcome(
                states.REJECTED, recorded=True, error=info, requeue=exc.requeue, runtime=runtime
            )
        info = exception_info(exc)
        try:
            if self._stores(task, request) or task.store_errors_even_if_ignored:
                task.backend.mark_as_failure(
                    job.id, exc, info.traceback, request=self._request_meta(task, request)
                )
            if request.chain and not self.eager:
                self._fail_rest_of_chain(request, exc, info.traceback)
            if request.chord and not self.eager:
                on_chord_part_return(self.app, request, states.FAILURE, exc)
            task.on_failure(exc, job.id, job.args, job.kwargs, info)
            call_errbacks(self.app, request, exc, info.traceback, self.eager)
            signals.task_failure.send(
                sender=task,
                task_id=job.id,
                exception=exc,
                args=job.args,
                kwargs=job.kwargs,
                traceback=info.traceback,
                einfo=info,
            )
        except Exception:
            logger.exception("Recording the failure of %s[%s] failed", task.name, job.id)
        self._finish(task, job, states.FAILURE, exc, info)
        return Outcome(states.FAILURE, recorded=True, error=info, runtime=runtime)

    def _retried(
        self, task: Task[Any, Any], job: Job, request: Context, retry: Retry, runtime: float
    ) -> Outcome:
        cause = retry.exc if retry.exc is not None else retry
        info = exception_info(cause)
        if retry.is_eager:
            return Outcome(
                states.RETRY, recorded=True, error=info, retry={"eager_result": retry.sig}
            )
        try:
            if self._stores(task, request):
                task.backend.mark_as_retry(
                    job.id, cause, info.traceback, request=self._request_meta(task, request)
                )
        except Exception:
            logger.exception("Recording the retry of %s[%s] failed", task.name, job.id)
        if retry.unsent and isinstance(retry.sig, Signature):
            try:
                retry.sig.apply_async()
            except Exception as exc:  # not retried after all: the task fails with the cause
                logger.exception("Sending the retry of %s[%s] failed", task.name, job.id)
                return self._failed(task, job, request, exc, runtime)
            retry.unsent = False
        try:
            task.on_retry(cause, job.id, job.args, job.kwargs, info)
            signals.task_retry.send(sender=task, request=request, reason=cause, einfo=info)
        except Exception:
            logger.exception("Handling the retry of %s[%s] failed", task.name, job.id)
        self._finish(task, job, states.RETRY, cause, info)
        return Outcome(
            states.RETRY, recorded=True, error=info, runtime=runtime, retry={"when": retry.when}
        )

    def _finish(self, task: Task[Any, Any], job: Job, state: str, retval: Any, info: Any) -> None:
        try:
            task.after_return(state, retval, job.id, job.args, job.kwargs, info)
        except Exception:
            logger.exception("after_return of %s[%s] raised", task.name, job.id)
        signals.task_postrun.send(
            sender=task,
            task_id=job.id,
            task=task,
            args=job.args,
            kwargs=job.kwargs,
            retval=retval,
            state=state,
        )

    def _unknown(self, job: Job) -> Outcome:
        from celeriac.exceptions import NotRegistered

        exc = NotRegistered(f"Task {job.name!r} is not registered")
        return Outcome(states.FAILURE, error=exception_info(exc, ""))

    # -- links ----------------------------------------------------------------------------
    def _send_callbacks(self, request: Context, retval: Any) -> None:
        for callback in request.callbacks or ():
            sig = maybe_signature(callback, app=self.app)
            if self.eager:
                sig.apply((retval,))
            else:
                sig.apply_async((retval,), **link_options(request))

    def _send_chain(self, request: Context, retval: Any) -> None:
        """Send the next step of the chain with this result; it carries the remaining steps."""
        if not request.chain or self.eager:
            return
        remaining = list(request.chain)
        step = maybe_signature(remaining.pop(), app=self.app)
        step.apply_async((retval,), chain=remaining or None, **link_options(request))

    def _fail_rest_of_chain(self, request: Context, exc: BaseException, traceback: str) -> None:
        """The chain stops here: its later steps are stored with this failure.

        (Celery leaves them PENDING, so waiting on a chain's result would never end.)
        """
        ids = [
            task_id
            for step in request.chain or ()
            for task_id in task_ids(maybe_signature(step, app=self.app))
        ]
        if ids:
            self.app.backend.store_many(
                [(task_id, exc, states.FAILURE, traceback, None) for task_id in ids]
            )


def link_options(request: Context) -> dict[str, Any]:
    """Options of the tasks a task sends when it ends (callbacks, errbacks, next step)."""
    options = {"parent_id": request.id, "root_id": request.root_id or request.id}
    priority = (request.delivery_info or {}).get("priority")
    if priority is not None:
        options["priority"] = priority
    return options


def call_errbacks(
    app: Celery, request: Context, exc: BaseException, traceback: str, eager: bool = False
) -> None:
    """Run ``request``'s errbacks for ``exc``; an errback that raises is logged and skipped.

    Celery's convention: an errback task taking three arguments is called here with the
    failed request, the exception and the traceback; any other is sent with the failed
    task's id.
    """
    for errback in request.errbacks or ():
        sig = maybe_signature(errback, app=app)
        task = app.tasks.get(sig.task)
        try:
            if task is not None and _takes_request(task):
                sig(request, exc, traceback)
            elif eager:
                sig.apply((request.id,))
            else:
                sig.apply_async((request.id,), **link_options(request))
        except Exception:
            logger.exception("Errback %r of task %s raised", sig, request.id)


def record_untraced_end(
    app: Celery,
    task: Task[Any, Any],
    job: Job,
    state: str,
    exc: BaseException,
    traceback: str | None = None,
    hostname: str | None = None,
) -> None:
    """Record the end of a task that the tracer did not see end, as the tracer would have.

    The worker's own failure paths call it. FAILURE (the process running the task was
    killed, or a hard time limit stopped it): stored unless results are ignored, the rest of
    its chain failed, its chord told, its errbacks called. REVOKED (expired, revoked, or
    stopped; ``exc`` is the ``TaskRevokedError``): stored and its chord told, as Celery
    does. The request goes with the state, so the rpc backend can address the reply
    (``reply_to``, ``correlation_id``). Blocking I/O: call it off the event loop.
    """
    tracer = Tracer(app, hostname)
    request = tracer._request(task, job)
    failed = state == states.FAILURE
    try:
        if not failed or tracer._stores(task, request) or task.store_errors_even_if_ignored:
            meta = tracer._request_meta(task, request)
            task.backend.store_result(job.id, exc, state, traceback, meta)
        if failed and request.chain:
            tracer._fail_rest_of_chain(request, exc, traceback or "")
    except Exception:
        # The chord must hear of it all the same, or its body would wait for ever.
        logger.exception("Recording the end (%s) of %s[%s] failed", state, task.name, job.id)
    if request.chord:
        on_chord_part_return(app, request, state, exc)  # fails the chord if it cannot count
    if failed:
        call_errbacks(app, request, exc, traceback or "")


def _run_coroutine(make: Callable[[], Any]) -> Any:
    """Run an ``async def`` task to completion from synchronous code.

    On a thread whose event loop is running (the solo pool runs on the worker's loop),
    ``asyncio.run`` is not allowed, so the coroutine gets a loop on a helper thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    context = contextvars.copy_context()
    with ThreadPoolExecutor(1, thread_name_prefix="celeriac-async-task") as executor:
        return executor.submit(context.run, lambda: asyncio.run(make())).result()


def _takes_request(task: Task[Any, Any]) -> bool:
    import inspect

    target = task._fun or task.run
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return False
    if task._bind:
        params = params[1:]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.kind is p.VAR_POSITIONAL for p in params)


def _pid() -> int:
    import os

    return os.getpid()
