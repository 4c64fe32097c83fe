"""The app's configuration, with Celery's lowercase setting names and defaults.

``Settings`` is a typed dataclass (so ``app.conf.task_serializer`` is known to type
checkers) that also behaves as a mapping (``app.conf["task_serializer"]``,
``app.conf.update(...)``), as Celery's ``app.conf`` does. Setting an unknown name warns with
the closest known name, because a misspelt setting otherwise fails silently.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
import types
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from celeriac.exceptions import ImproperlyConfigured


class UnknownSettingWarning(UserWarning):
    """A configuration key is not a setting celeriac knows (probably a typo)."""


def _publish_retry_policy() -> dict[str, Any]:
    return {"max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 1}


@dataclass
class Settings:
    """Every setting, with Celery's names and defaults (see Celery's configuration docs)."""

    # -- broker ---------------------------------------------------------------------------
    broker_url: str | None = None
    broker_transport_options: dict[str, Any] = field(default_factory=dict)
    broker_connection_retry: bool = True
    broker_connection_retry_on_startup: bool | None = None
    broker_connection_max_retries: int | None = 100
    broker_connection_timeout: float = 4.0
    broker_pool_limit: int | None = 10
    broker_heartbeat: float | None = 120.0
    # -- results --------------------------------------------------------------------------
    result_backend: str | None = None
    result_serializer: str = "json"
    result_accept_content: list[str] | None = None
    result_expires: float | None = 86400.0
    result_extended: bool = False
    result_compression: str | None = None
    result_backend_transport_options: dict[str, Any] = field(default_factory=dict)
    # -- tasks ----------------------------------------------------------------------------
    task_serializer: str = "json"
    accept_content: list[str] = field(default_factory=lambda: ["json"])
    task_compression: str | None = None
    task_protocol: int = 2
    task_routes: Any = None
    task_queues: Any = None
    task_default_queue: str = "celery"
    task_default_exchange: str | None = None
    task_default_exchange_type: str = "direct"
    task_default_routing_key: str | None = None
    task_default_delivery_mode: int | str = "persistent"
    task_default_priority: int | None = None
    task_queue_max_priority: int | None = None
    task_create_missing_queues: bool = True
    task_acks_late: bool = False
    task_acks_on_failure_or_timeout: bool = True
    task_reject_on_worker_lost: bool | None = None
    task_time_limit: float | None = None
    task_soft_time_limit: float | None = None
    task_track_started: bool = False
    task_ignore_result: bool = False
    task_store_errors_even_if_ignored: bool = False
    task_always_eager: bool = False
    task_eager_propagates: bool = False
    task_store_eager_result: bool = False
    task_annotations: Any = None
    task_publish_retry: bool = True
    task_publish_retry_policy: dict[str, Any] = field(default_factory=_publish_retry_policy)
    task_send_sent_event: bool = False
    task_default_rate_limit: str | None = None
    task_remote_tracebacks: bool = False
    #: celeriac: where the worker sends messages it cannot process (bad input).
    task_dead_letter_queue: str = "celeriac.dead_letter"
    # -- worker ---------------------------------------------------------------------------
    worker_concurrency: int | None = None
    worker_prefetch_multiplier: int = 4
    worker_max_tasks_per_child: int | None = None
    worker_max_memory_per_child: int | None = None
    worker_pool: str = "prefork"
    worker_disable_rate_limits: bool = False
    worker_send_task_events: bool = False
    worker_hijack_root_logger: bool = True
    worker_log_format: str = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"
    worker_task_log_format: str = (
        "[%(asctime)s: %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s]: %(message)s"
    )
    worker_lost_wait: float = 10.0
    worker_enable_remote_control: bool = True
    #: celeriac: most ETA/countdown messages a worker holds in memory; beyond it they wait
    #: in the broker.
    worker_eta_hold_limit: int = 10_000
    #: celeriac: ETA tasks due later than this (seconds) are not held by the worker but
    #: deferred in the broker until shortly before they are due (RabbitMQ closes a channel
    #: holding an unacked message past its consumer timeout, 30 minutes by default).
    worker_eta_hold_max_delay: float = 600.0
    # -- time -----------------------------------------------------------------------------
    timezone: str | None = None
    enable_utc: bool = True
    # -- modules, events, control, beat ---------------------------------------------------
    imports: list[str] | tuple[str, ...] = ()
    include: list[str] | tuple[str, ...] = ()
    event_serializer: str = "json"
    event_exchange: str = "celeryev"
    event_queue_ttl: float | None = 5.0
    event_queue_expires: float | None = 60.0
    event_queue_prefix: str = "celeryev"
    control_exchange: str = "celery"
    beat_schedule: dict[str, Any] = field(default_factory=dict)
    beat_max_loop_interval: float = 0

    # -- mapping behaviour ----------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        if key not in _NAMES:
            raise KeyError(key)
        return getattr(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)

    def __setattr__(self, key: str, value: Any) -> None:
        if key not in _NAMES and not key.startswith("_"):
            warn_unknown(key)
        object.__setattr__(self, key, value)

    def __contains__(self, key: object) -> bool:
        return key in _NAMES

    def __iter__(self) -> Iterator[str]:
        return iter(_NAMES)

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` when it is not a setting."""
        return getattr(self, key) if key in _NAMES else default

    def update(self, other: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        """Set several settings (unknown names warn with the closest known one)."""
        for source in (other or {}, kwargs):
            for key, value in source.items():
                setattr(self, key, value)

    def changes(self) -> dict[str, Any]:
        """The settings that differ from their defaults."""
        default = Settings()
        return {k: getattr(self, k) for k in _NAMES if getattr(self, k) != getattr(default, k)}


_NAMES: frozenset[str] = frozenset(f.name for f in dataclasses.fields(Settings))


def warn_unknown(key: str) -> None:
    """Warn that ``key`` is not a setting, naming the closest one."""
    close = difflib.get_close_matches(key, _NAMES, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    warnings.warn(f"Unknown setting {key!r}{hint}", UnknownSettingWarning, stacklevel=3)


def load_object(path: str) -> Any:
    """Import ``"package.module"`` or ``"package.module:attribute"`` (or ``module.attr``)."""
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if attribute or "." not in module_name:
            raise
        parent, _, attribute = module_name.rpartition(".")
        try:
            module = importlib.import_module(parent)
        except ImportError:
            raise exc from None
    return getattr(module, attribute) if attribute else module


# Imports and helpers in a configuration module are not settings.
_NOT_SETTINGS = (types.ModuleType, types.FunctionType, type)


def settings_from_object(obj: Any, namespace: str | None = None) -> dict[str, Any]:
    """The settings an object (module, class, mapping or import path) defines.

    With a ``namespace`` (``"CELERY"``), only ``CELERY_``-prefixed uppercase names are read,
    with the prefix dropped and the rest lower-cased (Django style).
    """
    if isinstance(obj, str):
        obj = load_object(obj)
    items = obj.items() if isinstance(obj, Mapping) else ((k, getattr(obj, k)) for k in dir(obj))
    found: dict[str, Any] = {}
    prefix = f"{namespace}_" if namespace else None
    for key, value in items:
        if key.startswith("_") or isinstance(value, _NOT_SETTINGS):
            continue
        if prefix is not None:
            if key.startswith(prefix):
                found[key[len(prefix) :].lower()] = value
        elif key.islower():
            found[key] = value
    return found


def settings_from_envvar(variable: str) -> dict[str, Any]:
    """The settings of the module named by the environment variable ``variable``.

    Raises:
        ImproperlyConfigured: The variable is not set.
    """
    path = os.environ.get(variable)
    if not path:
        raise ImproperlyConfigured(
            f"The environment variable {variable!r} is not set; it should name the "
            "configuration module (e.g. proj.celeryconfig)"
        )
    return settings_from_object(path)
