"""What the ``amqp://`` transport logs, and what it keeps pika from logging.

pika logs every connection and channel it opens at INFO, and one failed connection attempt
as half a dozen ERROR lines (with tracebacks) from its connection workflow. The session says
each of those things itself in one line: the connection was lost, reconnecting fails (again
once a minute while it does), it reconnected. So ``quiet_pika`` sets ``pika`` to WARNING and
drops the connection-lifecycle records below CRITICAL, unless the user configured the
``pika`` logger (a level or a handler); setting a level on it later brings them back.
"""

from __future__ import annotations

import logging

from pika.adapters.utils import connection_workflow as workflow
from pika.exceptions import AMQPConnectionError

#: pika's loggers of the connection's life (connecting, socket errors, the connection
#: workflow), which the session reports itself in a line each.
PIKA_LIFECYCLE_LOGGERS = (
    "pika.adapters.base_connection",
    "pika.adapters.utils.connection_workflow",
    "pika.adapters.utils.io_services_utils",
)


class _QuietLifecycle(logging.Filter):
    """Drops pika's connection-lifecycle records while ``pika`` keeps the level we gave it."""

    def filter(self, record: logging.LogRecord) -> bool:
        pika_logger = logging.getLogger("pika")
        return pika_logger.level != logging.WARNING or record.levelno >= logging.CRITICAL


_QUIET_LIFECYCLE = _QuietLifecycle()


def quiet_pika() -> None:
    """Quiet pika unless the user configured its logger (a level or a handler on ``pika``).

    ``pika`` goes to WARNING, and its connection-lifecycle loggers say nothing below
    CRITICAL: the session logs losses, failed reconnects and recoveries itself. Setting a
    level on ``pika`` later (e.g. DEBUG) brings all of pika's lines back.
    """
    pika_logger = logging.getLogger("pika")
    # pika gives its logger a NullHandler of its own; any other handler is the user's.
    handlers = [h for h in pika_logger.handlers if not isinstance(h, logging.NullHandler)]
    if pika_logger.level != logging.NOTSET or handlers:
        return
    pika_logger.setLevel(logging.WARNING)
    for name in PIKA_LIFECYCLE_LOGGERS:
        child = logging.getLogger(name)
        if child.level == logging.NOTSET and _QUIET_LIFECYCLE not in child.filters:
            child.addFilter(_QUIET_LIFECYCLE)


def failure_reason(error: BaseException) -> str:
    """The root cause of a failed connection attempt, short: pika nests it deeply."""
    while True:
        if isinstance(error, AMQPConnectionError) and error.args:
            inner = error.args[0]
        elif isinstance(error, workflow.AMQPConnectionWorkflowFailed) and error.exceptions:
            inner = error.exceptions[-1]
        elif isinstance(error, workflow.AMQPConnectorPhaseErrorBase):
            inner = error.exception
        else:
            break
        if not isinstance(inner, BaseException):
            break
        error = inner
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else repr(error)
