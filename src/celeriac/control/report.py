"""What a worker or the ``celeriac report`` command says about an installation.

``settings_table`` is the configuration as plain JSON values with secrets masked (``inspect
conf``); ``bugreport`` is the text to paste into a bug report (``celeriac report``,
``inspect report``). Neither ever shows a password: URLs are masked and settings whose
names look secret (as Celery judges them: API, TOKEN, KEY, SECRET, PASS, SIGNATURE,
DATABASE) are replaced by stars.
"""

from __future__ import annotations

import json
import platform
import re
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import celeriac
from celeriac.utils.url import mask_password, scheme_of

if TYPE_CHECKING:
    from celeriac.app.base import Celery

#: Setting names whose values are never shown (Celery's ``HIDDEN_SETTINGS``).
SECRET_NAME = re.compile(r"API|TOKEN|KEY|SECRET|PASS|PROFANITIES_LIST|SIGNATURE|DATABASE", re.I)
MASK = "********"
_URL_SETTINGS = ("broker_url", "result_backend")


def _plain(value: Any) -> Any:
    """``value`` as JSON types; what JSON cannot hold becomes its repr."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return repr(value)


def _masked(name: str, value: Any) -> Any:
    if name in _URL_SETTINGS and isinstance(value, str):
        return mask_password(value)
    if SECRET_NAME.search(name) and value:
        return MASK
    if isinstance(value, Mapping):
        return {k: _masked(str(k), v) for k, v in value.items()}
    return value


def settings_table(app: Celery, with_defaults: bool = False) -> dict[str, Any]:
    """The app's settings (only those changed from the defaults unless ``with_defaults``),
    as JSON values, secrets masked."""
    conf = app.conf
    names = sorted(conf) if with_defaults else sorted(conf.changes())
    return {name: _plain(_masked(name, conf[name])) for name in names}


def bugreport(app: Celery) -> str:
    """Software, platform and settings, as Celery's ``celery report`` shows them."""
    lines = [
        f"software -> celeriac:{celeriac.__version__} py:{platform.python_version()}",
        f"platform -> system:{platform.system()} arch:{platform.machine()} "
        f"kernel version:{platform.release()} imp:{platform.python_implementation()}",
        f"settings -> transport:{scheme_of(app.broker_url)} "
        f"results:{mask_password(app.result_backend_url)}",
        "",
    ]
    for name, value in settings_table(app).items():
        lines.append(f"{name}: {json.dumps(value, sort_keys=True)}")
    lines.append(f"python: {sys.version.splitlines()[0]}")
    return "\n".join(lines) + "\n"


@runtime_checkable
class ListsBindings(Protocol):
    """A transport that can list the broker's bindings (an optional capability)."""

    def list_bindings(self) -> list[tuple[str, str, str]]:
        """``(queue, exchange, routing_key)`` for every binding on the broker."""
        ...


def bindings(app: Celery) -> tuple[list[tuple[str, str, str]], bool]:
    """The bindings ``(queue, exchange, routing_key)``, and whether the broker listed them.

    A transport that cannot list its broker's bindings gives the bindings of the app's
    task queues instead (what its workers declare), with False.
    """
    with app.connection() as conn:
        transport = conn.transport
        if isinstance(transport, ListsBindings):
            return sorted(transport.list_bindings()), True
    rows: list[tuple[str, str, str]] = []
    for queue in app.router.queues.values():
        declared = queue.all_bindings()
        if not declared:
            rows.append((queue.name, "", queue.name))  # the default exchange
        rows.extend((queue.name, b.exchange.name, b.routing_key) for b in declared)
    return sorted(rows), False
