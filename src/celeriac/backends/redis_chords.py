"""Chord counting on Redis, in Celery's key layout: Celery and celeriac workers can report to,
and complete, the same chord.

What lives where (``<g>`` is the chord's group key, ``celery-taskset-meta-<group_id>``,
after the ``global_keyprefix``):

| key          | type   | holds                                                            |
|--------------|--------|------------------------------------------------------------------|
| ``<g>.s``    | STRING | how many reports complete the chord (``set_chord_size``)         |
| ``<g>.t``    | STRING | reports added to a running chord (Celery's ``add_to_chord``)     |
| ``<g>.j``    | ZSET   | one member per report, Celery's encoded ``[1, task_id, state,    |
|              |        | result]``, scored by ``group_index`` (``+inf`` when it has none) |
| ``<g>.d``    | SET    | ``<task_id>:<score>`` of every report counted                    |
| ``<g>.c``    | STRING | ``done`` once the chord completed (a Celery worker completing it |
|              |        | keeps its dispatch claim here until it has sent the body)        |
| ``<g>.celeriac-last``  | STRING | the token of the call that completed the chord        |
| ``<g>.celeriac-parts`` | ZSET   | ``<g>.j`` as it was when the chord completed          |

The sorted set is Celery's ``result_chord_ordered`` layout (its default since 5.1); Celery
workers configured with ``result_chord_ordered=False`` keep a list under ``<g>.j`` instead
and cannot share chords with celeriac. Reports with the same score (several without a
``group_index``) come back in the order of their encoded bytes, not of their arrival.

One script (``CHORD_PART``) per report, so counting is atomic across workers:

- a chord whose ``.c`` exists is done (or being completed by a Celery worker): the report
  is neither kept nor counted;
- a report whose ``<task_id>:<score>`` is in ``.d`` was counted already (its message was
  delivered again): it is not counted twice;
- the report that makes the count reach the size (``.s``, else the size the body carries)
  plus ``.t`` gets every part, in header order, and in the same step marks the chord
  ``done`` and removes ``.j``, ``.t``, ``.s`` and ``.d``. Every other report gets nothing.
- a report that knows no size (no ``.s``, and a body without ``chord_size``, as a Celery
  client sends it) is counted and completes nothing: a Celery client stores ``.s`` just
  before it sends the last header task, so earlier tasks may report before it exists,
  and the last report to arrive always finds it. (celeriac clients store ``.s`` before
  sending any header task, and the body carries the size too.)

So exactly one report completes the chord. When Redis's reply to that report is lost
(a dropped connection) and redis-py runs the script again, the second run must not be
taken for a late report, or the body would never be sent: each call carries a token, and
the completing call's token and parts stay for ``RETRY_WINDOW_MS`` under
``.celeriac-last`` and ``.celeriac-parts``; the same call, run again, gets the same parts.

Every key is PEXPIREd with the result expiry on each report (the chord must complete
within it); the ``done`` mark lives as long (or for good, without an expiry).
"""

from __future__ import annotations

import math
from typing import Any

#: How long the completing call may run again (a redis-py retry) and still get the parts.
RETRY_WINDOW_MS = 300_000

#: Suffixes of the chord's keys after its group key, in the order the script takes them.
SUFFIXES = (".j", ".t", ".s", ".d", ".c", ".celeriac-last", ".celeriac-parts")

# KEYS: .j .t .s .d .c .celeriac-last .celeriac-parts
# ARGV: member of .d, value, score, size (0: only .s knows), ttl ms (0: none), token,
#       retry window ms.
# Returns nil, or the parts as a flat {value, score, value, score...} in header order.
CHORD_PART = """
local jkey, tkey, skey, dkey, ckey, lastkey, partskey =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local member, value, score = ARGV[1], ARGV[2], ARGV[3]
local size, ttl, token, window = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], ARGV[7]

if redis.call('EXISTS', ckey) == 1 then
  if redis.call('GET', lastkey) == token then
    return redis.call('ZRANGE', partskey, 0, -1, 'WITHSCORES')
  end
  return false
end
if redis.call('SADD', dkey, member) == 1 then
  redis.call('ZADD', jkey, score, value)
end
if ttl > 0 then
  for _, key in ipairs({jkey, tkey, skey, dkey}) do redis.call('PEXPIRE', key, ttl) end
end
local stored = redis.call('GET', skey)
if stored then size = tonumber(stored) end
if not size or size <= 0 then
  -- Not known yet: a Celery client stores .s just before it sends the last header task.
  return false
end
local ready = redis.call('ZCARD', jkey)
if ready < size + tonumber(redis.call('GET', tkey) or '0') then
  return false
end
local parts = redis.call('ZRANGE', jkey, 0, -1, 'WITHSCORES')
redis.call('RENAME', jkey, partskey)
redis.call('PEXPIRE', partskey, window)
redis.call('SET', lastkey, token, 'PX', window)
redis.call('DEL', tkey, skey, dkey)
if ttl > 0 then
  redis.call('SET', ckey, 'done', 'PX', ttl)
else
  redis.call('SET', ckey, 'done')
end
return parts
"""


def chord_keys(group_key: str) -> list[str]:
    """The keys of the chord whose group key is ``group_key``, in ``CHORD_PART``'s order."""
    return [group_key + suffix for suffix in SUFFIXES]


def score_of(group_index: int, last_index: int) -> str:
    """The sorted-set score of a report: its index, ``+inf`` (as Celery) when it has none."""
    return "+inf" if group_index >= last_index else str(group_index)


def index_of(score: Any, last_index: int) -> int:
    """The ``group_index`` a score stands for (``last_index`` for ``+inf``)."""
    value = float(score)
    return last_index if math.isinf(value) else int(value)


def pairs(reply: list[Any]) -> list[tuple[bytes, Any]]:
    """``(value, score)`` pairs of a flat ``ZRANGE ... WITHSCORES`` reply."""
    return list(zip(reply[0::2], reply[1::2], strict=True))
