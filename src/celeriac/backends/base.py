"""The result backend contract: Celery's result format and waiting, written once.

Backends store opaque serialized values under Celery's keys and fill in a small storage
surface (the abstract methods at the end of :class:`ResultBackend`: ``_get``, ``_history``,
``_store_many``, ``_delete``, ``_wait``, ``_await``, ``cleanup``). Everything about tasks,
the meta format, exceptions, waiting and ``on_message``, lives here, so every backend
behaves the same and a new one is a page of storage code.

Each key keeps its values as numbered :class:`Record` s (``seq`` 1, 2, ...): the current one
and those it replaced. A waiter remembers the last ``seq`` it handled, so it sees every
state once, in order, even when several were stored between two of its reads.

Chords add one optional storage method, ``_chord_part`` (counting a chord header's reports
atomically); it is not abstract, so a backend without it still stores results.

Keys and values follow PROTOCOL.md ("Result meta"), so Celery clients read what celeriac
workers write, and the reverse.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, ClassVar, NamedTuple, Protocol

from celeriac import exceptions, states
from celeriac.backends.meta import (
    GROUP_KEY_PREFIX,
    GROUP_STATUS,
    TASK_KEY_PREFIX,
    build_meta,
    group_members,
    group_meta,
    pending_meta,
)
from celeriac.exceptions import DecodeError
from celeriac.messaging.serialization import (
    DEFAULT_ACCEPT,
    accept_content_types,
    dumps,
    loads,
    registry,
)
from celeriac.utils import exceptions as stored_exceptions
from celeriac.utils.url import mask_password

#: Seconds between two automatic deletions of expired results by one backend object.
DEFAULT_CLEANUP_INTERVAL = 60.0


class Record(NamedTuple):
    """One stored value of a key: its position in the key's history and its bytes."""

    seq: int
    content_type: str
    value: bytes


class Write(NamedTuple):
    """One value to store; ``status`` is the task state (SUCCESS is never overwritten)."""

    key: str
    status: str
    content_type: str
    value: bytes
    expires_at: float | None


class ChordPart(NamedTuple):
    """One header task's report to its chord, as stored (see ``ResultBackend._chord_part``).

    ``value`` is Celery's encoded ``[1, task_id, state, result]`` (what Celery's Redis
    backend pushes onto ``<group key>.j``), so the bytes can be shared with Celery workers.
    """

    task_id: str
    group_index: int
    content_type: str
    value: bytes


class ChordOutcome(NamedTuple):
    """How one header task of a completed chord ended: its state and value (or exception)."""

    task_id: str
    state: str
    result: Any


#: The position of a header task that carries no ``group_index`` (sorted after the others).
LAST_INDEX = 2**31 - 1


class OnMessage(Protocol):
    """Called with each new state's meta while waiting for a result."""

    def __call__(self, meta: dict[str, Any], /) -> object: ...


#: ``store_many`` items: ``(task_id, result, state, traceback, request)``.
StoreItem = tuple[str, Any, str, str | None, Mapping[str, Any] | None]


class ResultBackend(ABC):
    """Where task states and results are kept, in Celery's format.

    Args:
        url: The backend URL (``memory://``, ``sqlite:///results.db``...).
        serializer: Serializer name for stored values (Celery's ``result_serializer``).
        accept: Serializer names or MIME types to read (``result_accept_content``);
            None reads JSON only.
        expires: Seconds (or a timedelta) a stored result is kept; None or 0 keeps it.
        extended: Also store the task's name, args, kwargs, worker, retries and queue
            (Celery's ``result_extended``).
        options: Backend-specific options (Celery's ``result_backend_transport_options``);
            ``cleanup_interval`` (seconds, 0 disables) sets how often stores also delete
            expired results.
    """

    #: URL schemes this backend serves.
    schemes: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        url: str,
        *,
        serializer: str = "json",
        accept: Iterable[str] | None = None,
        expires: float | timedelta | None = 86400,
        extended: bool = False,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.url = url
        registry.get(serializer)  # Unknown or uninstalled serializers fail here, not later.
        self.serializer = serializer
        self.accept = accept_content_types(accept) if accept is not None else DEFAULT_ACCEPT
        if isinstance(expires, timedelta):
            expires = expires.total_seconds()
        self.expires = expires or None
        self.extended = extended
        self.options: Mapping[str, Any] = dict(options or {})
        self.cleanup_interval = float(
            self.options.get("cleanup_interval", DEFAULT_CLEANUP_INTERVAL)
        )
        self._next_cleanup = time.monotonic() + self.cleanup_interval

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {mask_password(self.url)}>"

    def __enter__(self) -> ResultBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:  # noqa: B027 -- optional hook; most backends hold nothing.
        """Release connections and wake-up sockets; the object is not used afterwards."""

    # -- keys -------------------------------------------------------------------------------
    @staticmethod
    def task_key(task_id: str) -> str:
        """Celery's key of a task's result."""
        return TASK_KEY_PREFIX + task_id

    @staticmethod
    def group_key(group_id: str) -> str:
        """Celery's key of a saved group."""
        return GROUP_KEY_PREFIX + group_id

    # -- writing ----------------------------------------------------------------------------
    def store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: str | None = None,
        request: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record a task's state and result; a stored SUCCESS is kept over any later state.

        Args:
            task_id: The task's id.
            result: Its return value, an exception (exception states), or a custom state's
                meta dict.
            state: The state (:mod:`celeriac.states` or a custom one).
            traceback: The formatted traceback of a failure.
            request: The task's request (``id``, ``group``, ``parent_id``, ``task``,
                ``args``, ``kwargs``, ``hostname``, ``retries``, ``delivery_info``,
                ``children``...), if any.

        Returns:
            The meta that was built (and stored, unless SUCCESS was already there).

        Raises:
            EncodeError: The result cannot be serialized with this backend's serializer.
        """
        write, meta = self._prepare((task_id, result, state, traceback, request))
        self._store_many([write])
        self._maybe_cleanup()
        return meta

    def store_many(self, items: Iterable[StoreItem]) -> list[dict[str, Any]]:
        """``store_result`` for several tasks in one write (one transaction or lock).

        Args:
            items: ``(task_id, result, state, traceback, request)`` tuples, stored in order.

        Returns:
            The metas, in the order of ``items``.
        """
        prepared = [self._prepare(item) for item in items]
        if prepared:
            self._store_many([write for write, _ in prepared])
            self._maybe_cleanup()
        return [meta for _, meta in prepared]

    def mark_as_started(
        self,
        task_id: str,
        meta: Mapping[str, Any] | None = None,
        request: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record STARTED, with ``meta`` (the worker's pid and hostname) as the result."""
        return self.store_result(task_id, dict(meta or {}), states.STARTED, request=request)

    def mark_as_done(
        self, task_id: str, result: Any, request: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Record SUCCESS with the task's return value."""
        return self.store_result(task_id, result, states.SUCCESS, request=request)

    def mark_as_failure(
        self,
        task_id: str,
        exc: BaseException,
        traceback: str | None = None,
        request: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record FAILURE with the exception the task raised."""
        return self.store_result(task_id, exc, states.FAILURE, traceback, request)

    def mark_as_retry(
        self,
        task_id: str,
        exc: BaseException,
        traceback: str | None = None,
        request: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record RETRY with the exception that caused the retry."""
        return self.store_result(task_id, exc, states.RETRY, traceback, request)

    def mark_as_revoked(
        self, task_id: str, reason: str = "", request: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Record REVOKED, with a ``TaskRevokedError(reason)`` as the result."""
        exc = exceptions.TaskRevokedError(reason)
        return self.store_result(task_id, exc, states.REVOKED, request=request)

    def forget(self, task_id: str) -> None:
        """Delete a task's result and history: it reads as PENDING again."""
        self._delete(self.task_key(task_id))

    def save_group(self, group_id: str, result_ids: Sequence[str]) -> dict[str, Any]:
        """Save a group's member ids, as Celery's ``GroupResult.save`` does.

        Returns:
            The stored meta: ``{"result": [[group_id, None], [[[id, None], None], ...]]}``,
            Celery's ``GroupResult.as_tuple()``.
        """
        meta = group_meta(group_id, result_ids)
        content_type, _, body = dumps(meta, self.serializer)
        self._store_many(
            [Write(self.group_key(group_id), GROUP_STATUS, content_type, body, self._expiry())]
        )
        return meta

    def restore_group(self, group_id: str) -> list[str] | None:
        """The member ids of a saved group, or None when it was not saved (or expired)."""
        record = self._get(self.group_key(group_id))
        if record is None:
            return None
        try:
            return group_members(self._decode(record))
        except ValueError as exc:
            raise DecodeError(f"Group {group_id!r} is stored in an unknown format") from exc

    def delete_group(self, group_id: str) -> None:
        """Delete a saved group."""
        self._delete(self.group_key(group_id))

    # -- append-only logs (the revoked-task record, ``celeriac.control.revoked``) -----------
    def append_log(self, key: str, entry: Any, expires: float) -> None:
        """Append ``entry`` to the log at ``key``; the log lives ``expires`` seconds more.

        Built on the history every key keeps, so appends from many processes never lose
        each other.
        """
        content_type, _, body = dumps(entry, self.serializer)
        write = Write(self._log_key(key), "LOG", content_type, body, time.time() + expires)
        self._store_many([write])

    def read_log(self, key: str) -> list[Any]:
        """The entries of the log at ``key``, oldest first (none when missing or expired)."""
        return [self._decode(record) for record in self._history(self._log_key(key), 0)]

    def _log_key(self, key: str) -> str:
        # A backend that puts its keys under a prefix (Redis's global_keyprefix) says so in
        # task_key: logs go under the same prefix, apart from other apps sharing the server.
        return self.task_key("").removesuffix(TASK_KEY_PREFIX) + key

    # -- chords -----------------------------------------------------------------------------
    # A chord's body runs once, when the last of its header tasks has finished. Every header
    # task reports its outcome here from whichever worker ran it; the storage counts the
    # reports atomically and hands all of them to the one report that completes the set, so
    # the body is sent exactly once and no task polls for completion.

    def set_chord_size(self, group_id: str, size: int) -> None:  # noqa: B027 -- optional hook.
        """Record how many reports ``group_id``'s chord waits for (before the header is sent).

        celeriac's workers read the size from the ``chord_size`` of the body they carry, so
        backends used only by celeriac need nothing here. A backend shared with Celery 5
        workers stores it where they read it (Redis: the ``<group key>.s`` key).
        """

    def ensure_chords_allowed(self) -> None:
        """Fail early (when a chord is sent) on a backend that cannot count chord parts.

        Raises:
            NotImplementedError: This backend does not support chords.
        """
        if type(self)._chord_part is ResultBackend._chord_part:
            self._chord_part("", ChordPart("", 0, "", b""), 0, None)

    def add_chord_part(
        self,
        group_id: str,
        task_id: str,
        index: int | None,
        state: str,
        result: Any,
        size: int | None,
    ) -> list[ChordOutcome] | None:
        """Count one header task's outcome towards its chord.

        Args:
            group_id: The chord header's group id (the task's ``group`` header).
            task_id: The header task's id: a second report of the same task is not counted.
            index: Its position in the header (``group_index``); the body gets the
                results in this order.
            state: SUCCESS, FAILURE or REVOKED.
            result: The return value, or the exception.
            size: How many reports complete the chord (the body's ``chord_size``); None
                when only ``set_chord_size`` knows it.

        Returns:
            Every outcome, in header order, to the one call that completed the chord;
            None to every other call.
        """
        if state in states.EXCEPTION_STATES and isinstance(result, BaseException):
            result = self.prepare_exception(result)
        content_type, _, body = dumps([1, task_id, state, result], self.serializer)
        part = ChordPart(task_id, LAST_INDEX if index is None else index, content_type, body)
        parts = self._chord_part(group_id, part, size, self._expiry())
        if parts is None:
            return None
        return [self._chord_outcome(stored) for stored in parts]

    def _chord_outcome(self, part: ChordPart) -> ChordOutcome:
        _, task_id, state, result = loads(part.value, part.content_type, None, accept=self.accept)
        if state in states.EXCEPTION_STATES and stored_exceptions.is_stored_exception(result):
            result = self.exception_to_python(result)
        return ChordOutcome(str(task_id), str(state), result)

    def _chord_part(
        self, group_id: str, part: ChordPart, size: int | None, expires_at: float | None
    ) -> list[ChordPart] | None:
        """Add ``part`` to ``group_id``'s chord, atomically (across processes).

        Storage surface for chords: not abstract, so a backend without chord support still
        stores results; chords on it fail with this method's error.

        Returns:
            All parts of the chord, ordered by ``group_index`` then arrival, to the ONE call whose
            part makes ``size`` distinct tasks; None to every other call. Exactly once:

            - a part whose ``task_id`` was already counted (a redelivered header task) is
              ignored and returns None;
            - the call that completes the chord marks it done (the mark lives until
              ``expires_at``, None: for good) and may drop the parts; a later part of a done
              chord returns None and is not kept.

        The Redis backend does it with Celery's keys, so Celery workers can join the same
        chord (``backends/redis_chords.py``).

        Raises:
            NotImplementedError: This backend cannot count chord parts.
        """
        raise NotImplementedError(
            f"The {type(self).__name__} result backend ({mask_password(self.url)}) does not "
            "support chords (the memory, SQLite and Redis result backends do)."
        )

    # -- reading ----------------------------------------------------------------------------
    def get_task_meta(self, task_id: str) -> dict[str, Any]:
        """A task's meta; PENDING when nothing is stored. Exception results are rebuilt.

        Raises:
            ContentDisallowed: The result's content type is not in ``accept``.
            DecodeError: The stored value cannot be decoded.
        """
        record = self._get(self.task_key(task_id))
        if record is None:
            return pending_meta(task_id)
        return self._task_meta(record)

    def get_task_metas(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The metas of several tasks, read together (what waiting on a group does first).

        Tasks with nothing stored are left out. One round trip where the storage allows
        (``_get_many``).
        """
        keys = [self.task_key(task_id) for task_id in task_ids]
        records = self._get_many(keys)
        return {
            task_id: self._task_meta(records[key])
            for task_id, key in zip(task_ids, keys, strict=True)
            if key in records
        }

    def prepare_exception(self, exc: BaseException) -> dict[str, Any]:
        """Celery's stored form of ``exc``; arguments the serializer refuses become reprs."""
        return stored_exceptions.prepare_exception(exc, lambda value: dumps(value, self.serializer))

    def exception_to_python(self, stored: object) -> BaseException | None:
        """Rebuild a stored exception; never imports or calls what the data names."""
        return stored_exceptions.exception_to_python(stored)

    def on_task_call(self, task_id: str) -> None:  # noqa: B027 -- optional hook.
        """Called when a task was sent by a client whose backend is open and that wants
        its result: a backend that wakes waiters may start listening for it now."""

    # -- waiting ----------------------------------------------------------------------------
    def wait_for(
        self,
        task_id: str,
        timeout: float | None = None,
        interval: float = 0.5,
        on_message: OnMessage | None = None,
    ) -> dict[str, Any]:
        """Block until the task is ready (SUCCESS, FAILURE, REVOKED); return its meta.

        Args:
            task_id: The task's id.
            timeout: Seconds to wait at most; None waits for ever.
            interval: The longest sleep between two looks; writes wake waiters sooner.
            on_message: Called with the meta of every new state, in order, once each,
                the ready one last.

        Raises:
            TimeoutError: (:class:`celeriac.exceptions.TimeoutError`) not ready in time.
        """
        follower = _Follower(self, task_id, on_message)
        deadline = Deadline(timeout, interval)
        while (meta := follower.step()) is None:
            self._wait({follower.key: follower.seen}, deadline.next_nap())
        return meta

    async def await_for(
        self,
        task_id: str,
        timeout: float | None = None,
        interval: float = 0.5,
        on_message: OnMessage | None = None,
    ) -> dict[str, Any]:
        """:meth:`wait_for` for asyncio code: waits without blocking the event loop."""
        follower = _Follower(self, task_id, on_message)
        deadline = Deadline(timeout, interval)
        while (meta := follower.step()) is None:
            await self._await({follower.key: follower.seen}, deadline.next_nap())
        return meta

    # -- shared internals -------------------------------------------------------------------
    def _prepare(self, item: StoreItem) -> tuple[Write, dict[str, Any]]:
        task_id, result, state, traceback, request = item
        if state in states.EXCEPTION_STATES and isinstance(result, BaseException):
            result = self.prepare_exception(result)
        meta = build_meta(task_id, result, state, traceback, request, extended=self.extended)
        content_type, _, body = dumps(meta, self.serializer)
        return Write(self.task_key(task_id), state, content_type, body, self._expiry()), meta

    def _expiry(self) -> float | None:
        # Wall-clock time: other processes compare it with their own clocks.
        return None if self.expires is None else time.time() + self.expires

    def _maybe_cleanup(self) -> None:
        now = time.monotonic()
        if self.expires and self.cleanup_interval > 0 and now >= self._next_cleanup:
            self._next_cleanup = now + self.cleanup_interval
            self.cleanup()

    def _decode(self, record: Record) -> Any:
        return loads(record.value, record.content_type, None, accept=self.accept)

    def _task_meta(self, record: Record) -> dict[str, Any]:
        meta = self._decode(record)
        if not isinstance(meta, dict) or "status" not in meta:
            raise DecodeError(f"A stored result is not a result meta: {type(meta).__name__}")
        result = meta.get("result")
        if meta["status"] in states.EXCEPTION_STATES and (
            isinstance(result, BaseException) or stored_exceptions.is_stored_exception(result)
        ):
            meta["result"] = self.exception_to_python(result)
        return meta

    # -- the storage surface ----------------------------------------------------------------
    @abstractmethod
    def _get(self, key: str) -> Record | None:
        """The current record of ``key``; None when missing or expired."""

    def _get_many(self, keys: Sequence[str]) -> dict[str, Record]:
        """The current records of ``keys`` that exist; override to read them in one go."""
        found: dict[str, Record] = {}
        for key in keys:
            record = self._get(key)
            if record is not None:
                found[key] = record
        return found

    @abstractmethod
    def _history(self, key: str, after_seq: int) -> list[Record]:
        """The records of ``key`` with ``seq > after_seq``, oldest first, current last."""

    @abstractmethod
    def _store_many(self, writes: Sequence[Write]) -> list[bool]:
        """Apply ``writes`` in order, together, and wake waiters (in other processes too).

        A write never replaces a stored SUCCESS (it is refused: False); a replaced record
        stays in the history and the new one gets the next ``seq`` (a new key starts at 1;
        an expired key counts as new).
        """

    @abstractmethod
    def _delete(self, key: str) -> None:
        """Remove ``key`` and its history."""

    @abstractmethod
    def _wait(self, watch: Mapping[str, int], timeout: float) -> None:
        """Return when a key's ``seq`` may exceed ``watch[key]``, or after ``timeout``."""

    @abstractmethod
    async def _await(self, watch: Mapping[str, int], timeout: float) -> None:
        """:meth:`_wait` without blocking the event loop."""

    @abstractmethod
    def cleanup(self, now: float | None = None) -> int:
        """Delete results expired at ``now`` (default: the current time); return how many."""


class _Follower:
    """One waiter's position in a task's states: what it has seen, and one more look."""

    def __init__(self, backend: ResultBackend, task_id: str, on_message: OnMessage | None) -> None:
        self.backend = backend
        self.key = backend.task_key(task_id)
        self.on_message = on_message
        self.seen = 0

    def step(self) -> dict[str, Any] | None:
        """Look once; return the ready meta, or None (``seen`` then says what to watch)."""
        if self.on_message is None:
            record = self.backend._get(self.key)
            if record is None or record.seq == self.seen:
                return None
            self.seen = record.seq
            meta = self.backend._task_meta(record)
            return meta if meta["status"] in states.READY_STATES else None
        for record in self.backend._history(self.key, self.seen):
            meta = self.backend._task_meta(record)
            self.seen = record.seq
            self.on_message(meta)
            if meta["status"] in states.READY_STATES:
                return meta
        return None


class Deadline:
    """How long the next wait may last, and the timeout error once none is left."""

    def __init__(self, timeout: float | None, interval: float) -> None:
        self.timeout = timeout
        self.interval = max(interval, 0.001)
        self.at = None if timeout is None else time.monotonic() + timeout

    def next_nap(self) -> float:
        if self.at is None:
            return self.interval
        remaining = self.at - time.monotonic()
        if remaining <= 0:
            raise exceptions.TimeoutError(f"The result was not ready within {self.timeout}s")
        return min(self.interval, remaining)
