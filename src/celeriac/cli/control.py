"""Monitoring and management commands: ``status``, ``inspect``, ``control``, ``purge``,
``list bindings`` and ``report``, as Celery's.

Each parses its options and calls ``app.control`` (``celeriac.control``) or a report
function; what is printed is for people (``-> node: OK`` and the reply, indented), or JSON
with ``--json`` for scripts. A command that gets no reply within the timeout says so and
exits with status 69 (``EX_UNAVAILABLE``), as Celery's does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from celeriac.control.commands import COMMANDS, Kind, commands_of
from celeriac.control.report import bindings, bugreport

if TYPE_CHECKING:
    from celeriac.app.base import Celery

#: Exit status when no worker replied (``os.EX_UNAVAILABLE``, Celery's).
EX_UNAVAILABLE = 69

F = Callable[..., Any]


def _app(ctx: click.Context) -> Celery:
    from celeriac.cli import _app as load  # the command group loads -A's app

    return load(ctx)


def _names(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[str] | None:
    if not value:
        return None
    return [name.strip() for name in value.split(",") if name.strip()]


def remote_options(command: F) -> F:
    """``-t/--timeout``, ``-d/--destination`` and ``-j/--json``."""
    command = click.option(
        "-j", "--json", "as_json", is_flag=True, help="Print the replies as JSON."
    )(command)
    command = click.option(
        "-d",
        "--destination",
        callback=_names,
        help="Comma-separated node names (default: every worker).",
    )(command)
    return click.option(
        "-t",
        "--timeout",
        type=float,
        default=1.0,
        show_default=True,
        help="Seconds to wait for replies.",
    )(command)


class NoReplies(click.ClickException):
    """No worker replied in time (exit status 69)."""

    exit_code = EX_UNAVAILABLE

    def __init__(self) -> None:
        super().__init__("No nodes replied within time constraint")


# -- printing replies ------------------------------------------------------------------------


def _item(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=repr)


def pretty(reply: Any) -> tuple[str, str]:
    """A reply as ``(status, text)``: ``OK`` or ``ERROR``, and the reply for people."""
    if isinstance(reply, dict) and set(reply) == {"ok"}:
        return "OK", _item(reply["ok"])
    if isinstance(reply, dict) and set(reply) == {"error"}:
        return "ERROR", _item(reply["error"])
    if isinstance(reply, list):
        return "OK", "\n".join(f"* {_item(item)}" for item in reply) or "- empty -"
    return "OK", json.dumps(reply, indent=4, sort_keys=True, default=repr)


def say_replies(replies: dict[str, Any], show_reply: bool = True) -> None:
    """Print ``-> node: STATUS`` and the indented reply, for each node, by name."""
    for node in sorted(replies):
        status, text = pretty(replies[node])
        click.echo(f"-> {node}: {status}")
        if show_reply:
            click.echo("\n".join(f"    {line}" for line in text.splitlines()))


def _finish(replies: dict[str, Any] | None, as_json: bool, show_reply: bool = True) -> None:
    if not replies:
        raise NoReplies()
    if as_json:
        click.echo(json.dumps(replies, sort_keys=True, default=repr))
        return
    say_replies(replies, show_reply)
    count = len(replies)
    click.echo(f"\n{count} node{'s' if count != 1 else ''} online.")


def _list_commands(kind: Kind) -> None:
    formatter = click.HelpFormatter()
    with formatter.section(f"{kind.capitalize()} commands"):
        formatter.write_dl(
            [
                (f"{name} {spec.signature}".strip(), spec.help)
                for name, spec in commands_of(kind).items()
            ]
        )
    click.echo(formatter.getvalue(), nl=False)


def _arguments(kind: Kind, command: str, words: tuple[str, ...]) -> dict[str, Any]:
    spec = COMMANDS.get(command)
    if spec is None or spec.kind != kind or not spec.visible:
        known = ", ".join(commands_of(kind))
        raise click.UsageError(
            f"Command {command!r} not recognized. Available {kind} commands: {known}"
        )
    try:
        return spec.parse(list(words))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


# -- the commands ----------------------------------------------------------------------------


@click.command()
@remote_options
@click.pass_context
def status(
    ctx: click.Context, timeout: float, destination: list[str] | None, as_json: bool
) -> None:
    """Show the workers that are online."""
    replies = _app(ctx).control.inspect(timeout=timeout, destination=destination).ping()
    _finish(replies, as_json, show_reply=False)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("command", required=False)
@click.argument("words", nargs=-1)
@remote_options
@click.option("--list", "list_commands", is_flag=True, help="List the inspect commands.")
@click.pass_context
def inspect(
    ctx: click.Context,
    command: str | None,
    words: tuple[str, ...],
    timeout: float,
    destination: list[str] | None,
    as_json: bool,
    list_commands: bool,
) -> None:
    """Ask the workers for COMMAND (ping, active, stats...; see --list)."""
    if list_commands or command is None:
        _list_commands("inspect")
        return
    arguments = _arguments("inspect", command, words)
    inspector = _app(ctx).control.inspect(timeout=timeout, destination=destination)
    _finish(inspector.request(command, **arguments), as_json)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("command", required=False)
@click.argument("words", nargs=-1)
@remote_options
@click.option("--list", "list_commands", is_flag=True, help="List the control commands.")
@click.pass_context
def control(
    ctx: click.Context,
    command: str | None,
    words: tuple[str, ...],
    timeout: float,
    destination: list[str] | None,
    as_json: bool,
    list_commands: bool,
) -> None:
    """Send the workers the control COMMAND (revoke, rate_limit, shutdown...; see --list)."""
    if list_commands or command is None:
        _list_commands("control")
        return
    arguments = _arguments("control", command, words)
    app = _app(ctx)
    options: dict[str, Any] = {"destination": destination, "reply": True, "timeout": timeout}
    if command in {"revoke", "terminate"}:
        if not arguments["task_id"]:
            raise click.UsageError(f"{command} needs at least one task id")
        # Through Control.revoke, which also records the revoke for workers started later.
        signal = arguments.get("signal", "SIGTERM")
        replies = app.control.revoke(
            arguments["task_id"], terminate=command == "terminate", signal=signal, **options
        )
    else:
        replies = app.control.broadcast(command, arguments, **options)
    _finish(_flatten(replies), as_json)


def _flatten(replies: list[dict[str, Any]] | None) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for reply in replies or ():
        found.update(reply)
    return found


@click.command()
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.option("-Q", "--queues", callback=_names, help="Comma-separated queues to purge.")
@click.option("-X", "--exclude-queues", callback=_names, help="Comma-separated queues to keep.")
@click.pass_context
def purge(
    ctx: click.Context,
    force: bool,
    queues: list[str] | None,
    exclude_queues: list[str] | None,
) -> None:
    """Delete every waiting task from the app's task queues (there is no undo)."""
    app = _app(ctx)
    names = [n for n in (queues or list(app.router.queues)) if n not in (exclude_queues or ())]
    if not names:
        click.echo("No queues to purge.")
        return
    which = f"queue{'s' if len(names) != 1 else ''}: {', '.join(names)}"
    if not force:
        click.confirm(
            f"WARNING: This will remove all tasks from {which}.\n"
            "         There is no undo for this operation!\n\n"
            "(to skip this prompt use the -f option)\n"
            "Are you sure you want to delete all tasks?",
            abort=True,
        )
    purged = app.control.purge(queues=names)
    plural = "s" if len(names) != 1 else ""
    if purged:
        noun = "message" if purged == 1 else "messages"
        click.echo(f"Purged {purged} {noun} from {len(names)} known task queue{plural}.")
    else:
        click.echo(f"No messages purged from {len(names)} queue{plural}.")


@click.group(name="list")
def list_group() -> None:
    """List things on the broker."""


@list_group.command(name="bindings")
@click.option("-j", "--json", "as_json", is_flag=True, help="Print the bindings as JSON.")
@click.pass_context
def list_bindings(ctx: click.Context, as_json: bool) -> None:
    """List the bindings: queue, exchange, routing key."""
    rows, from_broker = bindings(_app(ctx))
    if as_json:
        keys = ("queue", "exchange", "routing_key")
        click.echo(json.dumps([dict(zip(keys, row, strict=True)) for row in rows]))
        return
    if not from_broker:
        click.echo("(the transport cannot list the broker's bindings: these are the app's)")
    shown = [(queue, exchange or "(default)", key) for queue, exchange, key in rows]
    table = [("Queue", "Exchange", "Routing Key"), *shown]
    width = max(len(row[0]) for row in table)
    ex_width = max(len(row[1]) for row in table)
    for i, (queue, exchange, key) in enumerate(table):
        click.echo(f"{queue:<{width}}  {exchange:<{ex_width}}  {key}".rstrip())
        if i == 0:
            click.echo(f"{'-' * width}  {'-' * ex_width}  {'-' * len(key)}")


@click.command()
@click.pass_context
def report(ctx: click.Context) -> None:
    """Show software versions and settings, for bug reports (secrets masked)."""
    click.echo(bugreport(_app(ctx)))


COMMAND_LIST = (status, inspect, control, purge, list_group, report)


def register(group: click.Group) -> None:
    """Add these commands to the ``celeriac`` command group."""
    for command in COMMAND_LIST:
        group.add_command(command)
