"""Events: the monitoring stream of a cluster, in Celery's format.

Workers send ``worker-online``, a ``worker-heartbeat`` every two seconds and
``worker-offline``; with ``-E`` (``worker_send_task_events``) they also send a task's
``task-received``, ``task-started``, ``task-succeeded``/``task-failed``/``task-retried``,
``task-revoked`` and ``task-rejected``; clients send ``task-sent`` with
``task_send_sent_event``. Everything goes to the ``celeryev`` topic exchange, so Celery's
monitors (Flower, ``celery events``) read celeriac's events and ours read Celery's.

- ``EventDispatcher`` sends (``app.events.Dispatcher()``);
- ``EventReceiver`` listens on a queue of its own (``app.events.Receiver(conn)``);
- ``State`` turns events into workers, tasks, counts and rates (``app.events.State()``).
"""

from celeriac.events.app import Events
from celeriac.events.clock import LamportClock
from celeriac.events.dispatcher import EventDispatcher
from celeriac.events.event import Event, InvalidEvent, event_exchange, group_from
from celeriac.events.receiver import EventReceiver
from celeriac.events.state import State, TaskState, WorkerState

__all__ = [
    "Event",
    "EventDispatcher",
    "EventReceiver",
    "Events",
    "InvalidEvent",
    "LamportClock",
    "State",
    "TaskState",
    "WorkerState",
    "event_exchange",
    "group_from",
]
