"""The app a worker subprocess runs: ``-A interop_worker`` for ``celery`` or ``celeriac``.

``INTEROP_FRAMEWORK`` (celery or celeriac), ``INTEROP_BROKER``, ``INTEROP_BACKEND`` and
``INTEROP_QUEUE`` choose the app; the tasks are ``interop_tasks``'s.
"""

from __future__ import annotations

import os
from typing import Any

from interop_tasks import register, settings

FRAMEWORK = os.environ["INTEROP_FRAMEWORK"]
app: Any
if FRAMEWORK == "celery":
    from celery import Celery as CeleryApp

    app = CeleryApp("interop", broker=os.environ["INTEROP_BROKER"])
else:
    from celeriac import Celery as CeleriacApp

    app = CeleriacApp("interop", broker=os.environ["INTEROP_BROKER"])
app.conf.update(
    result_backend=os.environ["INTEROP_BACKEND"], **settings(os.environ["INTEROP_QUEUE"])
)
tasks = register(app, FRAMEWORK)
