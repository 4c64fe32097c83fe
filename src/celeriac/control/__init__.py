"""Remote control of workers ("pidbox"), wire-compatible with Celery's.

The client is ``app.control`` (a ``Control``) and ``app.control.inspect()`` (an
``Inspect``)::

    app.control.ping(timeout=0.5)                  # [{"celeriac@host": {"ok": "pong"}}]
    app.control.inspect().active()                 # {"celeriac@host": [task info, ...]}
    app.control.revoke(task_id, terminate=True)
    app.control.rate_limit("proj.tasks.add", "10/s", destination=["celeriac@host"])

``mailbox`` holds the wire format, ``broadcast`` one request and its replies, ``commands``
the table of commands, ``revoked`` the revoked-task set and its durable record, ``report``
what ``inspect conf``/``report`` show. The worker's side is ``celeriac.worker.pidbox``
(the mailbox), ``celeriac.worker.control`` and ``celeriac.worker.inspect`` (the commands).
"""

from celeriac.control.client import Control
from celeriac.control.commands import COMMANDS, CommandSpec
from celeriac.control.inspect import Inspect
from celeriac.control.mailbox import ControlRequest, Mailbox, flatten_replies

__all__ = [
    "COMMANDS",
    "CommandSpec",
    "Control",
    "ControlRequest",
    "Inspect",
    "Mailbox",
    "flatten_replies",
]
