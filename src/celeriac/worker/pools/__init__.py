"""Execution pools: how a worker runs its jobs, chosen by name (``--pool``).

========  ==========================================  ===============  ===============
name      runs jobs                                   soft time limit  hard time limit
========  ==========================================  ===============  ===============
solo      inline on the loop thread, one at a time    yes (SIGALRM)    no
threads   in a ThreadPoolExecutor                     no               no
asyncio   as tasks on the loop (``async_runner``)     yes (cancel)     yes (cancel)
prefork   in forked child processes                   yes (SIGALRM)    yes (SIGKILL)
========  ==========================================  ===============  ===============

Each pool is a small object behind the ``Pool`` contract in ``base.py``; the worker picks
one from ``POOLS`` and never subclasses it.
"""

from __future__ import annotations

import difflib

from celeriac.exceptions import ImproperlyConfigured
from celeriac.worker.pools.asyncio_pool import AsyncioPool
from celeriac.worker.pools.base import AsyncRunner, Pool, Runner
from celeriac.worker.pools.prefork import PreforkPool
from celeriac.worker.pools.solo import SoloPool
from celeriac.worker.pools.threads import ThreadPool

POOLS: dict[str, type[Pool]] = {
    "solo": SoloPool,
    "threads": ThreadPool,
    "asyncio": AsyncioPool,
    "prefork": PreforkPool,
}


def pool_class(name: str) -> type[Pool]:
    """The pool class registered as ``name``.

    Raises:
        ImproperlyConfigured: No pool has that name (the message suggests the closest).
    """
    try:
        return POOLS[name]
    except KeyError:
        pass
    close = difflib.get_close_matches(name, POOLS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ImproperlyConfigured(
        f"Unknown pool {name!r}.{hint} Known pools: {', '.join(sorted(POOLS))}."
    )


__all__ = [
    "POOLS",
    "AsyncRunner",
    "AsyncioPool",
    "Pool",
    "PreforkPool",
    "Runner",
    "SoloPool",
    "ThreadPool",
    "pool_class",
]
