"""``celeriac events``: the cluster live in the terminal, or ``--dump`` of the raw events.

The work is done by ``celeriac.events.monitor`` (``watch`` and ``dump``); this module only
parses options.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import click

from celeriac.events import monitor


@dataclass(frozen=True)
class EventsOptions:
    """What ``celeriac events`` was asked for."""

    dump: bool = False
    frequency: float = 1.0
    timeout: float | None = None
    count: int | None = None
    tasks: int = 15


@click.command()
@click.option("-d", "--dump", is_flag=True, help="Print raw events, one JSON object per line.")
@click.option(
    "-F",
    "--frequency",
    "--freq",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds between screen refreshes.",
)
@click.option("--timeout", type=click.FloatRange(min=0), help="Stop after this many seconds.")
@click.option(
    "-n", "--count", type=click.IntRange(min=1), help="With --dump: stop after this many events."
)
@click.option(
    "--tasks", type=click.IntRange(min=0), default=15, show_default=True, help="Recent tasks shown."
)
@click.pass_context
def events(
    ctx: click.Context,
    dump: bool,
    frequency: float,
    timeout: float | None,
    count: int | None,
    tasks: int,
) -> None:
    """Watch the cluster: workers, task rates and recent tasks (start workers with -E)."""
    from celeriac.cli import _app  # the command group loads -A's app

    options = EventsOptions(dump, frequency, timeout, count, tasks)
    app = _app(ctx)
    out = sys.stdout
    try:
        if options.dump:
            monitor.dump(app, out, options.count, options.timeout)
        else:
            clear = out.isatty()
            monitor.watch(app, out, options.frequency, options.timeout, options.tasks, clear)
    except KeyboardInterrupt:
        pass


def register(main: click.Group) -> None:
    """Add ``events`` to the ``celeriac`` command."""
    main.add_command(events)
