"""Task states, with Celery's names and groupings.

A task moves PENDING -> (RECEIVED) -> (STARTED) -> SUCCESS | FAILURE | REVOKED, possibly
through RETRY. Tasks may also report custom states (``update_state(state="PROGRESS")``);
those count as not ready.
"""

from __future__ import annotations

PENDING = "PENDING"
RECEIVED = "RECEIVED"
STARTED = "STARTED"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
REVOKED = "REVOKED"
REJECTED = "REJECTED"
RETRY = "RETRY"
IGNORED = "IGNORED"

#: States after which the task will not change again.
READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
#: Known states in which the task is not finished.
UNREADY_STATES = frozenset({PENDING, RECEIVED, STARTED, REJECTED, RETRY})
#: States whose result is an exception.
EXCEPTION_STATES = frozenset({RETRY, FAILURE, REVOKED})
#: States whose exception ``AsyncResult.get()`` re-raises.
PROPAGATE_STATES = frozenset({FAILURE, REVOKED})
ALL_STATES = frozenset(
    {PENDING, RECEIVED, STARTED, SUCCESS, FAILURE, REVOKED, REJECTED, RETRY, IGNORED}
)

# Celery's precedence: later in the list is further along; custom states rank with
# the unready ones.
_PRECEDENCE = [SUCCESS, FAILURE, None, REVOKED, STARTED, RECEIVED, REJECTED, RETRY, PENDING]
_CUSTOM = _PRECEDENCE.index(None)


def precedence(state: str) -> int:
    """Lower is more final: SUCCESS 0 ... PENDING 8; custom states rank between."""
    try:
        return _PRECEDENCE.index(state)
    except ValueError:
        return _CUSTOM
