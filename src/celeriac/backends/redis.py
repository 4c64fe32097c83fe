"""Result backend on Redis (``redis://``, ``rediss://``), in Celery's key and value format.

| feature                  | supported                                                 |
|--------------------------|-----------------------------------------------------------|
| shared between processes | yes, and with Celery clients and workers on the same db   |
| survives the process     | yes (as long as Redis keeps its data)                     |
| expiry                   | yes: Redis expires the keys itself (``cleanup`` is a no-op) |
| waking waiters           | pub/sub on the key's name, one listener thread per backend |
| batched writes           | ``store_many`` is one round trip (EVALSHA in a pipeline)   |
| atomic SUCCESS guard     | yes: a Lua script checks and writes in one step            |
| chords                   | one script per report, Celery's keys (``redis_chords.py``) |

What lives where (``<key>`` is ``celery-task-meta-<task_id>`` or
``celery-taskset-meta-<group_id>``, as Celery names them):

With the ``global_keyprefix`` option (as Celery's), every key and channel name starts with
that prefix (followed by ``_`` unless it ends in one of ``:_-.``).

- ``<key>`` (STRING): the current value, exactly as Celery writes it: the serialized meta,
  nothing added, set with the result expiry (``SET ... PX``), then PUBLISHed on the
  channel ``<key>`` (its value as the message) so waiting clients, Celery's too, wake up.
- ``celeriac-history:<key>`` (HASH, same expiry), only once a key's value has been
  replaced: field ``n`` counts the replaced values, fields ``1``..``n`` hold them (the
  oldest dropped beyond ``history_limit``), and ``status`` holds the current value's state
  when the script cannot read it from the value (serializers other than JSON and msgpack).
  ``on_message`` waiters read the replaced values from here, so they see every state in
  order.

A record's ``seq`` packs its position (value ``i`` of the key; the current one is
``n + 1``) with a CRC-32 of its bytes: ``i << 32 | crc32``. Celery writes in place, with no
history (a Celery worker storing STARTED then SUCCESS leaves ``n`` at 0), so the checksum
is what tells a waiter that the value at a position changed.

The store script (``_STORE``) refuses to replace a value whose status is SUCCESS: it reads
the status from the value itself (``cjson``/``cmsgpack``, both built into Redis) or from
the history's ``status`` field. A key that is missing (never written, or expired) starts
afresh, history and all.

Chords are counted under the group key, in Celery's layout, by ``redis_chords.CHORD_PART``
(see that module), so Celery and celeriac workers can complete the same chord.

A stored value carries no content type, as in Celery; readers tell JSON, pickle and
msgpack apart by their first bytes and assume this backend's serializer otherwise.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
import uuid
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import redis
from redis.backoff import ExponentialBackoff
from redis.commands.core import Script
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from celeriac import states
from celeriac.backends import redis_chords
from celeriac.backends.base import (
    LAST_INDEX,
    ChordPart,
    Deadline,
    OnMessage,
    Record,
    ResultBackend,
    Write,
)
from celeriac.backends.meta import GROUP_KEY_PREFIX, TASK_KEY_PREFIX
from celeriac.backends.redis_pubsub import Listener, ServerAddress, Ticket
from celeriac.messaging.serialization import loads, registry

HISTORY_PREFIX = "celeriac-history:"
#: Replaced values kept per key for ``on_message`` (older ones are dropped).
DEFAULT_HISTORY_LIMIT = 1000
#: Writes per script call in ``store_many`` (the calls still share one round trip).
BATCH = 256
#: Retries of a command when the connection to Redis fails.
DEFAULT_MAX_RETRIES = 10

# KEYS: key1, history1, key2, history2...; ARGV: history limit, then per write:
# value, status, ttl in ms (0: keep for ever), keep_status ("1": record the status).
# Returns one 1 (stored) or 0 (refused: SUCCESS was there) per write.
_STORE = """
local function status_of(value, history)
  local first = string.byte(value, 1)
  local ok, meta = false, nil
  if first == 123 then
    ok, meta = pcall(cjson.decode, value)
  elseif first and ((first >= 0x81 and first <= 0x8f) or first == 0xde or first == 0xdf) then
    ok, meta = pcall(cmsgpack.unpack, value)
  end
  if ok and type(meta) == 'table' and type(meta['status']) == 'string' then
    return meta['status']
  end
  return redis.call('HGET', history, 'status')
end

local limit = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS, 2 do
  local key, history = KEYS[i], KEYS[i + 1]
  local a = (i - 1) * 2 + 2
  local value, status, ttl, keep = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 3]
  local current = redis.call('GET', key)
  local stored = 1
  if not current then
    redis.call('DEL', history)
  elseif status_of(current, history) == 'SUCCESS' then
    stored = 0
  else
    local n = redis.call('HINCRBY', history, 'n', 1)
    redis.call('HSET', history, n, current)
    if n > limit then redis.call('HDEL', history, n - limit) end
  end
  if stored == 1 then
    if ttl > 0 then
      redis.call('SET', key, value, 'PX', ttl)
    else
      redis.call('SET', key, value)
    end
    if keep == '1' then
      redis.call('HSET', history, 'status', status)
    elseif current then
      redis.call('HDEL', history, 'status')
    end
    if redis.call('EXISTS', history) == 1 then
      if ttl > 0 then redis.call('PEXPIRE', history, ttl) else redis.call('PERSIST', history) end
    end
    redis.call('PUBLISH', key, value)
  end
  out[#out + 1] = stored
end
return out
"""

# KEYS: key, history; ARGV: after (-1: the current value only).
# Returns {} when the key is missing, else {n, [replaced values after+1..n,] current}
# where a dropped old value reads as false.
_READ = """
local value = redis.call('GET', KEYS[1])
if not value then return {} end
local n = tonumber(redis.call('HGET', KEYS[2], 'n') or '0')
local out = {n}
local after = tonumber(ARGV[1])
if after >= 0 then
  for seq = after + 1, n do out[#out + 1] = redis.call('HGET', KEYS[2], seq) end
end
out[#out + 1] = value
return out
"""

# KEYS: key1, history1, key2, history2...
# Returns {n1, value1, n2, value2...}: n counts a key's replaced values, a missing key
# reads as {0, false}. (A plain MGET would not tell the position of each current value.)
_READ_MANY = """
local out = {}
for i = 1, #KEYS, 2 do
  local value = redis.call('GET', KEYS[i])
  local n = 0
  if value then n = tonumber(redis.call('HGET', KEYS[i + 1], 'n') or '0') end
  out[#out + 1] = n
  out[#out + 1] = value
end
return out
"""

#: Serializers whose values the store script reads the status from.
_SCRIPT_READABLE = frozenset({"application/json", "application/x-msgpack"})
_JSON = "application/json"
_PICKLE = "application/x-python-serialize"
_MSGPACK = "application/x-msgpack"


def content_type_of(value: bytes, default: str) -> str:
    """The content type of a stored value, told by its first bytes (Celery stores none).

    JSON metas start with ``{``, pickles with ``0x80`` and the protocol number (2-5),
    msgpack maps with ``0x81``-``0x8f``, ``0xde`` or ``0xdf``; anything else is
    ``default`` (the reading backend's serializer).
    """
    first = value[:1]
    if first in (b"{", b"["):
        return _JSON
    if first == b"\x80" and value[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return _PICKLE
    if first and (0x81 <= first[0] <= 0x8F or first[0] in (0xDE, 0xDF)):
        return _MSGPACK
    return default


_CRC_MASK = 0xFFFFFFFF


def _seq(position: int, value: bytes) -> int:
    return position << 32 | zlib.crc32(value)


def history_key(key: str) -> str:
    """The key of ``key``'s replaced values."""
    return HISTORY_PREFIX + key


class RedisBackend(ResultBackend):
    """Results in Redis, readable and writable by Celery on the same database.

    Options (``result_backend_transport_options``): ``global_keyprefix`` (as Celery's),
    ``max_connections``, ``socket_timeout``, ``socket_connect_timeout``, ``max_retries``
    (of a command whose connection failed, with a growing pause; 10 by default),
    ``history_limit`` (replaced values kept per key for ``on_message``; 1000), and the
    base's ``cleanup_interval``.
    """

    schemes: ClassVar[tuple[str, ...]] = ("redis", "rediss")

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        opts = self.options
        retries = int(opts.get("max_retries", DEFAULT_MAX_RETRIES))
        retry = Retry(
            ExponentialBackoff(cap=1.0, base=0.05),
            retries,
            supported_errors=(RedisConnectionError, RedisTimeoutError, OSError),
        )
        client_options = {
            name: opts[name]
            for name in ("max_connections", "socket_timeout", "socket_connect_timeout")
            if name in opts
        }
        self.client: redis.Redis = redis.Redis.from_url(url, retry=retry, **client_options)
        prefix = str(opts.get("global_keyprefix") or "")
        if prefix and prefix[-1] not in ":_-.":
            prefix += "_"
        self.keyprefix = prefix
        self._history_limit = max(1, int(opts.get("history_limit", DEFAULT_HISTORY_LIMIT)))
        self._store_script = self.client.register_script(_STORE)
        self._read_script = self.client.register_script(_READ)
        self._read_many_script = self.client.register_script(_READ_MANY)
        self._chord_script = self.client.register_script(redis_chords.CHORD_PART)
        self._content_type = registry.content_type_of(self.serializer)
        self._keep_status = "0" if self._content_type in _SCRIPT_READABLE else "1"
        pool = self.client.connection_pool
        self._address = ServerAddress.from_pool_kwargs(
            pool.connection_kwargs, tls=url.lower().startswith("rediss:")
        )
        self._listener_lock = threading.Lock()
        self._listener: Listener | None = None
        self._listener_pid = os.getpid()

    # -- keys -------------------------------------------------------------------------------
    # The base's key methods are static; the prefix makes these depend on the instance.
    def task_key(self, task_id: str) -> str:  # type: ignore[override]
        """Celery's key of a task's result (after the ``global_keyprefix``, if any)."""
        return f"{self.keyprefix}{TASK_KEY_PREFIX}{task_id}"

    def group_key(self, group_id: str) -> str:  # type: ignore[override]
        """Celery's key of a saved group (after the ``global_keyprefix``, if any)."""
        return f"{self.keyprefix}{GROUP_KEY_PREFIX}{group_id}"

    # -- helpers ----------------------------------------------------------------------------
    @property
    def listener(self) -> Listener:
        """The pub/sub listener of this process (made on first use; anew after a fork)."""
        with self._listener_lock:
            if self._listener is None or self._listener_pid != os.getpid():
                # A parent's listener thread does not exist in a forked child.
                self._listener = Listener(self._address, final=self._is_final)
                self._listener_pid = os.getpid()
            return self._listener

    def _is_final(self, value: bytes) -> bool:
        """True when a stored value is a final state (SUCCESS, FAILURE, REVOKED)."""
        return self._published_meta(value) is not None

    def _published_meta(self, value: bytes | None) -> dict[str, Any] | None:
        """The meta of a value published on a task's key, if it is a final state."""
        if value is None:
            return None
        meta = self._task_meta(self._record(0, value))  # (position unknown: not needed)
        return meta if meta["status"] in states.READY_STATES else None

    def _record(self, position: int, value: bytes) -> Record:
        return Record(_seq(position, value), content_type_of(value, self._content_type), value)

    def _read(self, key: str, after_seq: int) -> list[Any]:
        reply: list[Any] = self._read_script(keys=[key, history_key(key)], args=[after_seq])
        return reply

    def _run(self, script: Script, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run ``script`` once per ``(keys, args)`` call, in one round trip."""
        if len(calls) == 1:
            keys, args = calls[0]
            return [script(keys=keys, args=args)]
        # Raw EVALSHAs: a pipeline that runs Script objects asks SCRIPT EXISTS first, which
        # would cost a second round trip every time.
        for attempt in (1, 2):
            with self.client.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                try:
                    return list(pipe.execute())
                except NoScriptError:
                    if attempt == 2:
                        raise
                    script.sha = self.client.script_load(script.script)
        raise AssertionError("unreachable")

    def _ttl_ms(self, write: Write, now: float) -> int:
        if write.expires_at is None:
            return 0
        return max(1, math.ceil((write.expires_at - now) * 1000))

    def _changed(self, watch: Mapping[str, int]) -> bool:
        replies = self._run(self._read_script, [([k, history_key(k)], [-1]) for k in watch])
        return any(
            reply and _seq(int(reply[0]) + 1, reply[-1]) != seen
            for reply, seen in zip(replies, watch.values(), strict=True)
        )

    # -- the storage surface ----------------------------------------------------------------
    def _get(self, key: str) -> Record | None:
        reply = self._read(key, -1)
        if not reply:
            return None
        return self._record(int(reply[0]) + 1, reply[-1])

    def _get_many(self, keys: Sequence[str]) -> dict[str, Record]:
        calls: list[tuple[list[str], list[Any]]] = []
        for start in range(0, len(keys), BATCH):
            part = keys[start : start + BATCH]
            calls.append(([name for key in part for name in (key, history_key(key))], []))
        replies = [item for reply in self._run(self._read_many_script, calls) for item in reply]
        return {
            key: self._record(int(n) + 1, value)
            for key, n, value in zip(keys, replies[0::2], replies[1::2], strict=True)
            if value is not None
        }

    def _history(self, key: str, after_seq: int) -> list[Record]:
        seen_position, seen_crc = after_seq >> 32, after_seq & _CRC_MASK
        # From the position already seen: its value may have been replaced in place.
        first = max(seen_position, 1)
        reply = self._read(key, first - 1)
        if not reply:
            return []
        n = int(reply[0])
        values = [*zip(range(first, n + 1), reply[1:-1], strict=True), (n + 1, reply[-1])]
        return [
            self._record(position, value)
            for position, value in values
            if value is not None and (position > seen_position or zlib.crc32(value) != seen_crc)
        ]

    def _store_many(self, writes: Sequence[Write]) -> list[bool]:
        now = time.time()
        calls: list[tuple[list[str], list[Any]]] = []
        for start in range(0, len(writes), BATCH):
            keys: list[str] = []
            args: list[Any] = [self._history_limit]
            for write in writes[start : start + BATCH]:
                keys += (write.key, history_key(write.key))
                args += (write.value, write.status, self._ttl_ms(write, now), self._keep_status)
            calls.append((keys, args))
        replies = self._run(self._store_script, calls)
        return [bool(flag) for reply in replies for flag in reply]

    def _delete(self, key: str) -> None:
        self.client.delete(key, history_key(key))

    # -- chords (layout and script in ``redis_chords``) -------------------------------------
    def set_chord_size(self, group_id: str, size: int) -> None:
        """Store the chord's size where Celery workers read it (``<group key>.s``).

        A frozen chord sent again reuses its group id for a new run: its ``done`` mark
        goes (as Celery does).
        """
        group_key = self.group_key(group_id)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(group_key + ".c")
            if self.expires:
                pipe.set(group_key + ".s", size, px=math.ceil(self.expires * 1000))
            else:
                pipe.set(group_key + ".s", size)
            pipe.execute()

    def _chord_part(
        self, group_id: str, part: ChordPart, size: int | None, expires_at: float | None
    ) -> list[ChordPart] | None:
        score = redis_chords.score_of(part.group_index, LAST_INDEX)
        ttl = 0 if expires_at is None else max(1, math.ceil((expires_at - time.time()) * 1000))
        args: list[bytes | str | int] = [
            f"{part.task_id}:{score}",
            part.value,
            score,
            size or 0,
            ttl,
            uuid.uuid4().hex,  # tells a retry of this call (lost reply) from a late report
            redis_chords.RETRY_WINDOW_MS,
        ]
        keys = redis_chords.chord_keys(self.group_key(group_id))
        reply: list[Any] | None = self._chord_script(keys=keys, args=args)
        if reply is None:
            return None
        return [
            self._stored_part(value, redis_chords.index_of(score, LAST_INDEX))
            for value, score in redis_chords.pairs(reply)
        ]

    def _stored_part(self, value: bytes, index: int) -> ChordPart:
        content_type = content_type_of(value, self._content_type)
        decoded = loads(value, content_type, None, accept=self.accept)
        task_id = str(decoded[1]) if isinstance(decoded, list | tuple) and len(decoded) > 1 else ""
        return ChordPart(task_id, index, content_type, value)

    # -- waiting on one task ----------------------------------------------------------------
    def on_task_call(self, task_id: str) -> None:
        """Subscribe to the task's key now (it was just sent): by the time the client
        waits, the subscription is usually in place and the final state arrives with its
        wake-up."""
        self.listener.expect(self.task_key(task_id))

    def wait_for(
        self,
        task_id: str,
        timeout: float | None = None,
        interval: float = 0.5,
        on_message: OnMessage | None = None,
    ) -> dict[str, Any]:
        """Wait for the task's final state: subscribed first, then one read, then the
        published values themselves (a final one ends the wait without another read)."""
        if on_message is not None:
            return super().wait_for(task_id, timeout, interval, on_message)
        key = self.task_key(task_id)
        deadline = Deadline(timeout, interval)
        ticket = self.listener.watch([key])
        try:
            while (meta := self._look(ticket, key)) is None:
                ticket.wait(deadline.next_nap())
            return meta
        finally:
            self.listener.unwatch(ticket)

    async def await_for(
        self,
        task_id: str,
        timeout: float | None = None,
        interval: float = 0.5,
        on_message: OnMessage | None = None,
    ) -> dict[str, Any]:
        """:meth:`wait_for` for asyncio code: waits without blocking the event loop."""
        if on_message is not None:
            return await super().await_for(task_id, timeout, interval, on_message)
        key = self.task_key(task_id)
        deadline = Deadline(timeout, interval)
        ticket = self.listener.watch([key], asyncio.get_running_loop())
        try:
            while (meta := self._look(ticket, key)) is None:
                await ticket.await_fired(deadline.next_nap())
            return meta
        finally:
            self.listener.unwatch(ticket)

    def _look(self, ticket: Ticket, key: str) -> dict[str, Any] | None:
        """One look for a waiter: the final state published to ``ticket`` since the last
        look, else (once subscribed) the stored one; None while the task is not ready."""
        ticket.clear()
        meta = self._published_meta(ticket.take(key))
        if meta is None and ticket.subscribed:
            # Subscribed: anything stored after this read is published to us.
            meta = self._ready_meta(key)
        return meta

    def _ready_meta(self, key: str) -> dict[str, Any] | None:
        record = self._get(key)
        if record is None:
            return None
        meta = self._task_meta(record)
        return meta if meta["status"] in states.READY_STATES else None

    def _wait(self, watch: Mapping[str, int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        listener = self.listener
        ticket = listener.watch(watch)
        try:
            if not ticket.subscribed:
                # Reading before Redis confirmed the subscription could miss a publish.
                if not ticket.wait(timeout) or not ticket.subscribed:
                    return
                ticket.clear()
            if not self._changed(watch):
                ticket.wait(deadline - time.monotonic())
        finally:
            listener.unwatch(ticket)

    async def _await(self, watch: Mapping[str, int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        listener = self.listener
        ticket = listener.watch(watch, asyncio.get_running_loop())
        try:
            if not ticket.subscribed:
                if not await ticket.await_fired(timeout) or not ticket.subscribed:
                    return
                ticket.clear()
            if not self._changed(watch):
                await ticket.await_fired(deadline - time.monotonic())
        finally:
            listener.unwatch(ticket)

    def cleanup(self, now: float | None = None) -> int:
        """Nothing to do: Redis deletes expired keys itself."""
        return 0

    def close(self) -> None:
        with self._listener_lock:
            listener, self._listener = self._listener, None
        if listener is not None and self._listener_pid == os.getpid():
            listener.close()
        self.client.close()
        self.client.connection_pool.disconnect()
