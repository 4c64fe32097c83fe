"""Finding the app named by ``-A``: ``proj``, ``proj.tasks`` or ``proj.tasks:app``."""

from __future__ import annotations

import importlib
from types import ModuleType

from celeriac.app.base import Celery

#: Attributes tried, in order, when ``-A`` names only a module (as Celery does).
_CANDIDATES = ("app", "celery")


def _in_module(module: ModuleType) -> Celery | None:
    for name in _CANDIDATES:
        value = getattr(module, name, None)
        if isinstance(value, Celery):
            return value
    apps = [v for v in vars(module).values() if isinstance(v, Celery)]
    return apps[0] if len(apps) == 1 else None


def find_app(path: str) -> Celery:
    """The app at ``path``.

    Raises:
        ImportError: The module cannot be imported.
        LookupError: The module holds no app (or several and none is called app/celery).
    """
    module_name, _, attribute = path.partition(":")
    module = importlib.import_module(module_name)
    if attribute:
        value = getattr(module, attribute)
        if not isinstance(value, Celery):
            raise LookupError(f"{path} is a {type(value).__name__}, not a Celery app")
        return value
    found = _in_module(module)
    if found is not None:
        return found
    for sub in ("celery", "app", "tasks"):
        try:
            submodule = importlib.import_module(f"{module_name}.{sub}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{module_name}.{sub}":
                raise  # the module exists but something it imports does not
            continue
        found = _in_module(submodule)
        if found is not None:
            return found
    raise LookupError(f"no Celery app found in {module_name} (name it 'app' or use module:attr)")
