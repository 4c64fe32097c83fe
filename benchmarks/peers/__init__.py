"""App modules for ``benchmarks/tasks.py``: the same two tasks in celeriac, Celery and Huey.

Each module reads its settings from the environment (set by ``tasks.py`` before it imports
the module or starts a worker on it):

- ``BENCH_DB``: the SQLite file that is both broker and result store;
- ``BENCH_TALLY``: a directory where the no-op task counts the tasks that ran (see
  ``tally.py``);
- ``BENCH_COUNT``: how many no-op tasks the drain expects.

``noop()`` ignores its result and only counts itself; ``add(x, y)`` stores its result (for
the round trip).
"""
