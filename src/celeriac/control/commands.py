"""The remote-control commands a worker answers, as data: names, kinds, arguments, help.

Both sides read this table: ``celeriac inspect``/``celeriac control`` use it to check a
command name and to turn command-line words into typed arguments, and the worker
(``celeriac.worker.control``) implements exactly these names. The names, arguments and kinds
are Celery's (``celery.worker.control``), so Celery's ``celery inspect``/``celery control``
work against celeriac workers and the reverse.

``inspect`` commands only read the worker's state; ``control`` commands change it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["inspect", "control"]


def to_bool(text: str) -> bool:
    """``yes``/``true``/``on``/``1`` and ``no``/``false``/``off``/``0``, any case.

    Raises:
        ValueError: Any other word.
    """
    lowered = text.strip().lower()
    if lowered in {"1", "yes", "y", "true", "t", "on"}:
        return True
    if lowered in {"0", "no", "n", "false", "f", "off"}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One remote-control command.

    Attributes:
        name: The command name on the wire (``method``).
        kind: ``inspect`` (reads state) or ``control`` (changes it).
        help: One line for ``--list``.
        args: Positional command-line arguments, in order: name and converter.
        variadic: Name of the argument that takes every remaining word, as a list.
        visible: Listed by ``--list`` (``hello`` is for workers talking to each other).
    """

    name: str
    kind: Kind
    help: str
    args: tuple[tuple[str, Callable[[str], Any]], ...] = ()
    variadic: str | None = None
    visible: bool = True

    @property
    def signature(self) -> str:
        """The arguments as shown by ``--list``: ``<task_name> <rate_limit>``."""
        words = [f"<{name}>" for name, _ in self.args]
        if self.variadic:
            words.append(f"[{self.variadic} ...]")
        return " ".join(words)

    def parse(self, words: list[str]) -> dict[str, Any]:
        """Command-line words to the command's arguments.

        Raises:
            ValueError: Too many words, or a word the converter refuses.
        """
        arguments: dict[str, Any] = {}
        for (name, convert), word in zip(self.args, words, strict=False):
            try:
                arguments[name] = convert(word)
            except ValueError as exc:
                raise ValueError(f"{self.name}: bad {name} {word!r}: {exc}") from None
        rest = words[len(self.args) :]
        if self.variadic:
            arguments[self.variadic] = rest
        elif rest:
            raise ValueError(f"{self.name} takes at most {len(self.args)} argument(s): {rest}")
        return arguments


def _spec(
    name: str,
    kind: Kind,
    help: str,
    *args: tuple[str, Callable[[str], Any]],
    variadic: str | None = None,
    visible: bool = True,
) -> CommandSpec:
    return CommandSpec(name, kind, help, tuple(args), variadic, visible)


COMMANDS: dict[str, CommandSpec] = {
    spec.name: spec
    for spec in (
        # -- inspect ----------------------------------------------------------------------
        _spec("ping", "inspect", "Ping worker(s)."),
        _spec("stats", "inspect", "Worker statistics: pool, totals, broker, resource usage."),
        _spec("active", "inspect", "Tasks running now.", ("safe", to_bool)),
        _spec("reserved", "inspect", "Tasks received and waiting for a pool slot or rate limit."),
        _spec("scheduled", "inspect", "Tasks held for their ETA or countdown."),
        _spec(
            "registered",
            "inspect",
            "Registered tasks, with the given task attributes.",
            variadic="taskinfoitems",
        ),
        _spec("revoked", "inspect", "Ids of revoked tasks."),
        _spec("active_queues", "inspect", "Queues the worker consumes from."),
        _spec("conf", "inspect", "The worker's configuration.", ("with_defaults", to_bool)),
        _spec("query_task", "inspect", "Where tasks are in the worker, by id.", variadic="ids"),
        _spec("report", "inspect", "Software and settings of the worker, for bug reports."),
        _spec("clock", "inspect", "The worker's logical clock."),
        _spec(
            "hello",
            "inspect",
            "Exchange revoked task ids with a starting worker.",
            ("from_node", str),
            visible=False,
        ),
        # -- control ----------------------------------------------------------------------
        _spec("revoke", "control", "Revoke tasks by id.", variadic="task_id"),
        _spec(
            "terminate",
            "control",
            "Revoke tasks by id and stop them where they run.",
            ("signal", str),
            variadic="task_id",
        ),
        _spec(
            "rate_limit",
            "control",
            "Set a task type's rate limit (e.g. 10/s, 5/m; 0 removes it).",
            ("task_name", str),
            ("rate_limit", str),
        ),
        _spec(
            "time_limit",
            "control",
            "Set a task type's soft and hard time limits, in seconds.",
            ("task_name", str),
            ("soft", float),
            ("hard", float),
        ),
        _spec("shutdown", "control", "Shut worker(s) down (warm: running tasks finish)."),
        _spec("pool_grow", "control", "Grow the pool by N (default 1).", ("n", int)),
        _spec("pool_shrink", "control", "Shrink the pool by N (default 1).", ("n", int)),
        _spec(
            "add_consumer",
            "control",
            "Start consuming from a queue.",
            ("queue", str),
            ("exchange", str),
            ("exchange_type", str),
            ("routing_key", str),
        ),
        _spec("cancel_consumer", "control", "Stop consuming from a queue.", ("queue", str)),
        _spec("enable_events", "control", "Start sending task events."),
        _spec("disable_events", "control", "Stop sending task events."),
    )
}


def commands_of(kind: Kind) -> dict[str, CommandSpec]:
    """The visible commands of one kind, by name, sorted."""
    return {
        name: spec for name, spec in sorted(COMMANDS.items()) if spec.kind == kind and spec.visible
    }
