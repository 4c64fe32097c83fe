"""The ``celeriac`` command: a thin layer over library functions (``-A proj worker``...).

Each command parses its options into a typed object and calls the library; no behaviour
lives here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

import click

from celeriac.app.base import Celery
from celeriac.cli import control as control_commands
from celeriac.cli import events as events_commands
from celeriac.cli.loading import find_app


def setup_logging(app: Celery, loglevel: str) -> None:
    """Log to stderr in the worker's format (``worker_log_format``)."""
    level = logging.getLevelName(loglevel.upper())
    if not isinstance(level, int):
        raise click.BadParameter(f"unknown log level {loglevel!r}", param_hint="--loglevel")
    logging.basicConfig(level=level, format=app.conf.worker_log_format, stream=sys.stderr)


@dataclass(frozen=True)
class AppChoice:
    """What the root options say about the app: ``-A``, and ``-b``/``--result-backend``."""

    path: str | None
    broker: str | None
    backend: str | None


@click.group()
@click.option("-A", "--app", "app_path", metavar="APP", help="The app: module or module:attr.")
@click.option("-b", "--broker", help="Broker URL (instead of the app's broker_url).")
@click.option("--result-backend", help="Result backend URL (instead of the app's).")
@click.pass_context
def main(
    ctx: click.Context, app_path: str | None, broker: str | None, result_backend: str | None
) -> None:
    """celeriac: a distributed task queue with Celery's API."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    ctx.obj = AppChoice(app_path, broker, result_backend)


def _app(ctx: click.Context) -> Celery:
    """The app of ``-A`` with ``-b``/``--result-backend`` applied; with ``-b`` alone, a
    default app on that broker (enough for status, inspect, control and events)."""
    choice: AppChoice = ctx.obj
    if not choice.path:
        if not choice.broker:
            raise click.UsageError(
                "give the app with -A/--app (e.g. celeriac -A proj worker), "
                "or a broker with -b/--broker"
            )
        return Celery("celeriac", broker=choice.broker, backend=choice.backend)
    try:
        app = find_app(choice.path)
    except (ImportError, AttributeError, LookupError) as exc:
        raise click.UsageError(f"cannot load app {choice.path!r}: {exc}") from exc
    if choice.broker:
        app.conf.broker_url = choice.broker
    if choice.backend:
        app.conf.result_backend = choice.backend
    return app


@main.command()
@click.option("-l", "--loglevel", default="WARNING", show_default=True)
@click.option("-c", "--concurrency", type=int, help="Tasks run at once (default: CPUs).")
@click.option("-P", "--pool", type=click.Choice(["prefork", "threads", "asyncio", "solo"]))
@click.option("-Q", "--queues", help="Comma-separated queues to consume.")
@click.option("-n", "--hostname", help="Node name (%h host, %n short host).")
@click.option("--prefetch-multiplier", type=int)
@click.option("--max-tasks-per-child", type=int)
@click.option("--max-memory-per-child", type=int, help="KiB of resident memory.")
@click.option("--time-limit", type=float, help="Hard time limit in seconds.")
@click.option("--soft-time-limit", type=float, help="Soft time limit in seconds.")
@click.option("--purge", is_flag=True, help="Delete waiting messages before starting.")
@click.option("-E", "--task-events", is_flag=True, help="Send task events (for monitors).")
@click.option("--heartbeat-interval", type=float, help="Seconds between heartbeats (2).")
@click.pass_context
def worker(ctx: click.Context, /, loglevel: str, queues: str | None, **options: Any) -> None:
    """Start a worker."""
    from celeriac.worker.worker import Worker, WorkerOptions

    app = _app(ctx)
    setup_logging(app, loglevel)
    names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    code = Worker(app, WorkerOptions(queues=names, **options)).run()
    sys.exit(code)


def _json_option(value: str | None, what: str, kind: type) -> Any:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"{what} must be JSON: {exc}") from exc
    if not isinstance(parsed, kind):
        raise click.BadParameter(f"{what} must be a JSON {kind.__name__}")
    return parsed


@main.command()
@click.argument("name")
@click.option("-a", "--args", "args_json", help="Positional arguments as a JSON list.")
@click.option("-k", "--kwargs", "kwargs_json", help="Keyword arguments as a JSON object.")
@click.option("--countdown", type=float)
@click.option("--eta", help="ISO-8601 time to run at.")
@click.option("--expires", help="Seconds, or an ISO-8601 time.")
@click.option("--queue")
@click.option("--priority", type=int)
@click.pass_context
def call(
    ctx: click.Context,
    /,
    name: str,
    args_json: str | None,
    kwargs_json: str | None,
    **options: Any,
) -> None:
    """Send task NAME and print its id."""
    app = _app(ctx)
    args = _json_option(args_json, "--args", list)
    kwargs = _json_option(kwargs_json, "--kwargs", dict)
    expires = options.get("expires")
    if expires is not None:
        with contextlib.suppress(ValueError):  # not a number: an ISO-8601 time
            options["expires"] = float(expires)
    result = app.send_task(name, args, kwargs, **{k: v for k, v in options.items() if v})
    click.echo(result.id)


@main.command()
@click.argument("task_id")
@click.option("--traceback", is_flag=True, help="Show the traceback of a failure.")
@click.pass_context
def result(ctx: click.Context, task_id: str, traceback: bool) -> None:
    """Show the state and result of task TASK_ID."""
    app = _app(ctx)
    res = app.AsyncResult(task_id)
    state = res.state
    if traceback and res.traceback:
        click.echo(res.traceback)
    else:
        click.echo(f"{state}: {res.result!r}")


control_commands.register(main)
events_commands.register(main)
