"""The Redis broker's storage layout and its Lua scripts, in one place.

Every key starts with ``P`` = the ``global_keyprefix`` transport option followed by
``celeriac:``, so several applications can share one database. What lives where:

==========================  =======  ======================================================
key                         type     contents
==========================  =======  ======================================================
``P topology``              string   counter bumped by every change of the three below, so
                                     publishers cache them and notice another process's
                                     change (a publish names the version it routed with)
``P exchanges``             hash     exchange name -> type (direct, fanout, topic, headers)
``P queues``                hash     queue name -> JSON of its ``QueuePolicy``
``P bindings``              hash     JSON ``[exchange, queue, routing_key, arguments]`` -> 1
``P seq``                   string   message sequence counter
``P messages``              hash     message id -> payload (``meta JSON`` ``\\n`` ``body``)
``P deliveries``            hash     message id -> deliveries that ended unsettled (the
                                     message came back: requeued, or its session died);
                                     absent: none, so the next delivery is not redelivered
``P ready:<queue>``         zset     ids of ready messages, score = id (see below)
``P deferred:<queue>``      zset     ids hidden by ``defer``, score = due time (epoch s)
``P expiring``              zset     ``<id>|<queue>`` of messages with a TTL, score = expiry
``P sessions``              zset     live session ids, score = heartbeat + connection grace
``P leases``                hash     session id -> ``"<grace> <lease>"`` (seconds)
``P held:<session>``        hash     message id -> queue, for messages leased to a session
``P owned:<session>``       set      exclusive / auto-delete queues a session declared
``P owners``                hash     queue -> the session that owns it (the latest to
                                     declare it: a restarted worker takes its queues over)
==========================  =======  ======================================================

Channels: ``P wake:<queue>`` is published to when a queue goes from empty to non-empty
(waiting sessions subscribe to the queues they consume); each session subscribes to
``P alive:<session>`` for as long as its process lives.

A message id is ``(255 - priority) * 2**45 + sequence``: one number that sorts higher
priorities first and, within a priority, oldest first. It is the member and the score in
``ready:<queue>``, so a message requeued or redelivered returns to its original place, and
every id is below 2**53 (exact in Lua's doubles). Each queue holds its own copy of a message
(a fanout stores one per queue), so an id names one copy and is its delivery tag.

Leases: a fetch moves ids from ``ready:<queue>`` to ``held:<session>`` in the same script,
and an ack deletes them; no window loses a message. A session renews its heartbeat from a
background thread. It is dead, and any other session moves its held messages back to their
queues (where their ``deliveries`` count marks them redelivered), when its heartbeat is older
than its lease, or when its ``alive`` subscription is gone (the process died, closing its
connections) and its heartbeat is older than its grace. After a Redis restart no session is
judged before it had its grace (resp. lease) to come back: leases survive restarts.

Expiry and ``delivery_limit`` are decided by the client (it holds the policies); dying
messages are moved to the deciding session's ``held`` hash first, then dead-lettered or
dropped by ``STORE`` (which removes them and stores their dead-letter copies atomically), so
a crash in between redelivers rather than loses them.

Scripts address keys built from ``ARGV[1]`` (the prefix) rather than ``KEYS``: the broker
is one Redis server (or a primary with replicas), not a Redis Cluster.
"""

from __future__ import annotations

from typing import Final

#: The namespace every key lives in, after the user's ``global_keyprefix``.
NAMESPACE: Final = "celeriac:"
#: Message ids: priority band width (2**45 sequence numbers per priority).
PRIORITY_BAND: Final = 2**45
MAX_PRIORITY: Final = 255

_PRELUDE = r"""
local P = ARGV[1]
local MESSAGES, DELIVERIES, QUEUES = P .. 'messages', P .. 'deliveries', P .. 'queues'
local EXPIRING, SESSIONS, LEASES = P .. 'expiring', P .. 'sessions', P .. 'leases'
local BINDINGS, EXCHANGES, TOPOLOGY = P .. 'bindings', P .. 'exchanges', P .. 'topology'
local woken = {}

local function ready_key(queue) return P .. 'ready:' .. queue end
local function deferred_key(queue) return P .. 'deferred:' .. queue end
local function held_key(session) return P .. 'held:' .. session end

-- A counted list in ARGV: ARGV[i] = n, then n items. Returns the items and the next index.
local function list_at(i)
  local n, items = tonumber(ARGV[i]), {}
  for k = 1, n do items[k] = ARGV[i + k] end
  return items, i + n + 1
end

local function each_chunk(items, fn)
  for s = 1, #items, 1000 do fn(math.min(s + 999, #items), s) end
end

-- Delete messages for good.
local function forget(ids)
  each_chunk(ids, function(e, s)
    redis.call('HDEL', MESSAGES, unpack(ids, s, e))
    redis.call('HDEL', DELIVERIES, unpack(ids, s, e))
  end)
end

-- Make a message ready; remember to wake waiters if its queue was empty.
local function push(queue, id)
  local key = ready_key(queue)
  if woken[queue] == nil then woken[queue] = redis.call('EXISTS', key) == 0 end
  redis.call('ZADD', key, id, id)
end

-- A leased message goes back (not acked): one more delivery that did not settle it.
local function requeue(queue, id)
  if redis.call('HEXISTS', QUEUES, queue) == 1 then
    redis.call('HINCRBY', DELIVERIES, id, 1)
    push(queue, id)
  else
    forget({id})
  end
end

local function wake_waiters()
  for queue, was_empty in pairs(woken) do
    if was_empty then redis.call('PUBLISH', P .. 'wake:' .. queue, '') end
  end
end

local function server_time()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function register(session, grace, lease)
  redis.call('ZADD', SESSIONS, server_time() + tonumber(grace), session)
  redis.call('HSET', LEASES, session, grace .. ' ' .. lease)
end

-- Ack: delete the listed ids this session holds; returns the ids it no longer held.
local function settle(held, ids, expiring)
  local ours, lost = {}, {}
  each_chunk(ids, function(e, s)
    local queues = redis.call('HMGET', held, unpack(ids, s, e))
    for k = s, e do
      if queues[k - s + 1] then ours[#ours + 1] = ids[k] else lost[#lost + 1] = ids[k] end
    end
  end)
  each_chunk(ours, function(e, s) redis.call('HDEL', held, unpack(ours, s, e)) end)
  forget(ours)
  each_chunk(expiring, function(e, s) redis.call('ZREM', EXPIRING, unpack(expiring, s, e)) end)
  return lost
end

local function delete_bindings(position, name)
  for _, field in ipairs(redis.call('HKEYS', BINDINGS)) do
    if cjson.decode(field)[position] == name then redis.call('HDEL', BINDINGS, field) end
  end
end

-- Delete every message of a queue listed in a zset (and the zset); returns how many.
local function empty_zset(key, queue)
  local count = 0
  while true do
    local ids = redis.call('ZRANGE', key, 0, 999)
    if #ids == 0 then return count end
    forget(ids)
    for _, id in ipairs(ids) do redis.call('ZREM', EXPIRING, id .. '|' .. queue) end
    redis.call('ZREMRANGEBYRANK', key, 0, #ids - 1)
    count = count + #ids
  end
end

local function delete_queue(queue)
  redis.call('HDEL', QUEUES, queue)
  redis.call('HDEL', P .. 'owners', queue)
  empty_zset(ready_key(queue), queue)
  empty_zset(deferred_key(queue), queue)
  delete_bindings(2, queue)
  redis.call('INCR', TOPOLOGY)
end

-- Return a session's held messages to their queues and delete its private queues.
local function end_session(session)
  local held = held_key(session)
  local entries = redis.call('HGETALL', held)
  for e = 1, #entries, 2 do requeue(entries[e + 1], entries[e]) end
  redis.call('DEL', held)
  local owned = P .. 'owned:' .. session
  for _, queue in ipairs(redis.call('SMEMBERS', owned)) do
    if redis.call('HGET', P .. 'owners', queue) == session then delete_queue(queue) end
  end
  redis.call('DEL', owned)
  redis.call('ZREM', SESSIONS, session)
  redis.call('HDEL', LEASES, session)
end

-- End every dead session but ``self`` (see the module docstring for "dead").
local function reap(self)
  local now = server_time()
  local info = redis.call('INFO', 'server')
  local started = now - tonumber(string.match(info, 'uptime_in_seconds:(%d+)'))
  local suspects = redis.call('ZRANGEBYSCORE', SESSIONS, '-inf', now, 'LIMIT', 0, 100)
  for _, session in ipairs(suspects) do
    if session ~= self then
      local spec = redis.call('HGET', LEASES, session) or ''
      local grace, lease = string.match(spec, '^(%S+) (%S+)$')
      grace, lease = tonumber(grace) or 0, tonumber(lease) or 0
      local beat = tonumber(redis.call('ZSCORE', SESSIONS, session)) - grace
      local last = math.max(beat, started)
      local gone = redis.call('PUBSUB', 'NUMSUB', P .. 'alive:' .. session)[2] == 0
      if last + lease <= now or (gone and last + grace <= now) then end_session(session) end
    end
  end
end

-- Move ready messages whose TTL passed into ``held`` (for the client to dead-letter).
local function sweep(now, held, dying)
  local due = redis.call('ZRANGEBYSCORE', EXPIRING, '-inf', now, 'LIMIT', 0, 100)
  for _, member in ipairs(due) do
    redis.call('ZREM', EXPIRING, member)
    local id, queue = string.match(member, '^(%d+)|(.*)$')
    if id and redis.call('ZREM', ready_key(queue), id) == 1 then
      redis.call('HSET', held, id, queue)
      dying[#dying + 1] = queue
      dying[#dying + 1] = id
      dying[#dying + 1] = redis.call('HGET', MESSAGES, id) or ''
    end
  end
end
"""

# Each script below: its ARGV after ARGV[1] (the prefix), and its reply.

#: Take up to ``limit`` ready messages into this session's lease, after settling acks,
#: ending dead sessions (when ``reap`` is 1), moving expired messages into the lease for
#: the client to dead-letter (``sweep``) and making due deferred messages ready.
#: ARGV: session, grace, lease, now, limit, reap, sweep, acks list, expiring list, queues
#: list. Reply: {{queue, id, earlier unsettled deliveries, payload}..., {queue, id, payload}...
#: dying, lost ack ids, next due time or ''}.
FETCH: Final = (
    _PRELUDE
    + r"""
local session, now, limit = ARGV[2], tonumber(ARGV[5]), tonumber(ARGV[6])
local held = held_key(session)
register(session, ARGV[3], ARGV[4])
local acks, i = list_at(9)
local expiring, queues
expiring, i = list_at(i)
queues = list_at(i)
local lost = settle(held, acks, expiring)
if ARGV[7] == '1' then reap(session) end
local dying = {}
if ARGV[8] == '1' then sweep(now, held, dying) end
local out, taken, next_due = {}, 0, nil
local function consider(head)
  local due = tonumber(head[2])
  if due and (next_due == nil or due < next_due) then next_due = due end
end
for _, queue in ipairs(queues) do
  local dkey = deferred_key(queue)
  local due = redis.call('ZRANGEBYSCORE', dkey, '-inf', now, 'LIMIT', 0, 1000)
  if #due > 0 then
    redis.call('ZREM', dkey, unpack(due))
    for _, id in ipairs(due) do push(queue, id) end
  end
  consider(redis.call('ZRANGE', dkey, 0, 0, 'WITHSCORES'))
  local popped = {}
  if taken < limit then popped = redis.call('ZPOPMIN', ready_key(queue), limit - taken) end
  if #popped > 0 then
    local ids = {}
    for p = 1, #popped, 2 do ids[#ids + 1] = popped[p] end
    local payloads = redis.call('HMGET', MESSAGES, unpack(ids))
    local counts = redis.call('HMGET', DELIVERIES, unpack(ids))
    local leases = {}
    for k, id in ipairs(ids) do
      if payloads[k] then
        leases[#leases + 1] = id
        leases[#leases + 1] = queue
        out[#out + 1] = queue
        out[#out + 1] = id
        out[#out + 1] = tonumber(counts[k]) or 0
        out[#out + 1] = payloads[k]
        taken = taken + 1
      else
        redis.call('HDEL', DELIVERIES, id)
      end
    end
    if #leases > 0 then redis.call('HSET', held, unpack(leases)) end
  end
end
consider(redis.call('ZRANGE', EXPIRING, 0, 0, 'WITHSCORES'))
wake_waiters()
return {out, dying, lost, next_due and string.format('%.6f', next_due) or ''}
"""
)

#: Store message copies, after deleting the messages they replace (dead-lettering), and
#: enforce queue length limits (victims go to this session's lease when ``keep`` is 1, for
#: the client to dead-letter; else they are dropped).
#: ARGV: session, grace, lease, topology version, kills list (ids held by this session;
#: ids no longer held are skipped with their copies), expiring list (members to drop),
#: copies count then per copy: origin (1-based index into kills, 0 for a new message),
#: queue, priority, payload, expiry time or ''; limits count then per queue: queue, max
#: length, keep. Reply: -1 when the topology version is stale (nothing changed), else
#: {queue, id, payload}... for the victims kept.
STORE: Final = (
    _PRELUDE
    + r"""
if (redis.call('GET', TOPOLOGY) or '0') ~= ARGV[5] then return -1 end
local session = ARGV[2]
local held = held_key(session)
local kills, i = list_at(6)
local expiring
expiring, i = list_at(i)
local alive = {}
for k, id in ipairs(kills) do
  local queue = redis.call('HGET', held, id)
  if queue then
    redis.call('HDEL', held, id)
    alive[k] = true
  end
end
local dead = {}
for k, id in ipairs(kills) do if alive[k] then dead[#dead + 1] = id end end
forget(dead)
each_chunk(expiring, function(e, s) redis.call('ZREM', EXPIRING, unpack(expiring, s, e)) end)
local copies = tonumber(ARGV[i])
i = i + 1
local base = 0
if copies > 0 then base = redis.call('INCRBY', P .. 'seq', copies) - copies end
local stored, ready, order = {}, {}, {}
for c = 1, copies do
  local origin, queue, priority = tonumber(ARGV[i]), ARGV[i + 1], tonumber(ARGV[i + 2])
  local payload, expires = ARGV[i + 3], ARGV[i + 4]
  i = i + 5
  if origin == 0 or alive[origin] then
    local id = string.format('%.0f', (255 - priority) * 35184372088832 + base + c)
    stored[#stored + 1] = id
    stored[#stored + 1] = payload
    if ready[queue] == nil then
      ready[queue] = {}
      order[#order + 1] = queue
    end
    local members = ready[queue]
    members[#members + 1] = id
    members[#members + 1] = id
    if expires ~= '' then redis.call('ZADD', EXPIRING, expires, id .. '|' .. queue) end
  end
end
each_chunk(stored, function(e, s) redis.call('HSET', MESSAGES, unpack(stored, s, e)) end)
for _, queue in ipairs(order) do
  local key, members = ready_key(queue), ready[queue]
  if woken[queue] == nil then woken[queue] = redis.call('EXISTS', key) == 0 end
  each_chunk(members, function(e, s) redis.call('ZADD', key, unpack(members, s, e)) end)
end
local limits = tonumber(ARGV[i])
i = i + 1
local victims, dropped = {}, {}
for l = 1, limits do
  local queue, limit, keep = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2] == '1'
  i = i + 3
  local over = redis.call('ZCARD', ready_key(queue)) - limit
  if over > 0 then
    local popped = redis.call('ZPOPMIN', ready_key(queue), over)
    for p = 1, #popped, 2 do
      local id = popped[p]
      if keep then
        redis.call('HSET', held, id, queue)
        victims[#victims + 1] = queue
        victims[#victims + 1] = id
        victims[#victims + 1] = redis.call('HGET', MESSAGES, id) or ''
      else
        dropped[#dropped + 1] = id
      end
    end
  end
end
forget(dropped)
if #victims > 0 then register(session, ARGV[3], ARGV[4]) end
wake_waiters()
return victims
"""
)

#: Ack. ARGV: session, ids list, expiring list. Reply: the ids no longer held.
ACK: Final = (
    _PRELUDE
    + r"""
local ids, i = list_at(3)
return settle(held_key(ARGV[2]), ids, (list_at(i)))
"""
)

#: Return held messages to their queues at once. ARGV: session, ids...
REQUEUE: Final = (
    _PRELUDE
    + r"""
local held = held_key(ARGV[2])
for k = 3, #ARGV do
  local queue = redis.call('HGET', held, ARGV[k])
  if queue then
    redis.call('HDEL', held, ARGV[k])
    requeue(queue, ARGV[k])
  end
end
wake_waiters()
"""
)

#: Hide held messages until a time (not counted as a delivery). ARGV: session, then
#: pairs of id, due time. Waiters are told, so they learn the new due time.
DEFER: Final = (
    _PRELUDE
    + r"""
local held, notify = held_key(ARGV[2]), {}
for k = 3, #ARGV, 2 do
  local id, due = ARGV[k], ARGV[k + 1]
  local queue = redis.call('HGET', held, id)
  if queue then
    redis.call('HDEL', held, id)
    if redis.call('HEXISTS', QUEUES, queue) == 1 then
      redis.call('ZADD', deferred_key(queue), due, id)
      notify[queue] = true
    else
      forget({id})
    end
  end
end
for queue in pairs(notify) do redis.call('PUBLISH', P .. 'wake:' .. queue, '') end
"""
)

#: Return held messages the client does not know of (a fetch whose reply was lost).
#: ARGV: session, known ids... Reply: how many went back.
RECOVER: Final = (
    _PRELUDE
    + r"""
local held, known, count = held_key(ARGV[2]), {}, 0
for k = 3, #ARGV do known[ARGV[k]] = true end
for _, id in ipairs(redis.call('HKEYS', held)) do
  if not known[id] then
    requeue(redis.call('HGET', held, id), id)
    redis.call('HDEL', held, id)
    count = count + 1
  end
end
wake_waiters()
return count
"""
)

#: Renew a heartbeat. ARGV: session, grace, lease. Reply: 0 when the session had been
#: taken for dead (its leases are gone), else 1.
BEAT: Final = (
    _PRELUDE
    + r"""
local known = redis.call('ZSCORE', SESSIONS, ARGV[2])
register(ARGV[2], ARGV[3], ARGV[4])
if known then return 1 end
return 0
"""
)

#: End a session: held messages back to their queues, private queues deleted.
#: ARGV: session.
CLOSE: Final = (
    _PRELUDE
    + r"""
end_session(ARGV[2])
wake_waiters()
"""
)

#: ARGV: name, type. Reply: 1 when created.
DECLARE_EXCHANGE: Final = (
    _PRELUDE
    + r"""
local created = redis.call('HSETNX', EXCHANGES, ARGV[2], ARGV[3])
if created == 1 then redis.call('INCR', TOPOLOGY) end
return created
"""
)

#: ARGV: name. Deletes its bindings too.
DELETE_EXCHANGE: Final = (
    _PRELUDE
    + r"""
redis.call('HDEL', EXCHANGES, ARGV[2])
delete_bindings(1, ARGV[2])
redis.call('INCR', TOPOLOGY)
"""
)

#: Create a queue if missing and add bindings. ARGV: owner session or '', grace, lease,
#: name, policy JSON, then pairs of exchange, binding field. Reply: the name of a missing
#: exchange (nothing is changed), or ''.
DECLARE_QUEUE: Final = (
    _PRELUDE
    + r"""
for k = 7, #ARGV, 2 do
  if redis.call('HEXISTS', EXCHANGES, ARGV[k]) == 0 then return ARGV[k] end
end
local changed = redis.call('HSETNX', QUEUES, ARGV[5], ARGV[6])
for k = 7, #ARGV, 2 do changed = changed + redis.call('HSETNX', BINDINGS, ARGV[k + 1], 1) end
if ARGV[2] ~= '' then
  register(ARGV[2], ARGV[3], ARGV[4])
  redis.call('SADD', P .. 'owned:' .. ARGV[2], ARGV[5])
  redis.call('HSET', P .. 'owners', ARGV[5], ARGV[2])
end
if changed > 0 then redis.call('INCR', TOPOLOGY) end
return ''
"""
)

#: ARGV: exchange, binding field. Reply: the exchange's name when missing, else ''.
BIND: Final = (
    _PRELUDE
    + r"""
if redis.call('HEXISTS', EXCHANGES, ARGV[2]) == 0 then return ARGV[2] end
if redis.call('HSETNX', BINDINGS, ARGV[3], 1) == 1 then redis.call('INCR', TOPOLOGY) end
return ''
"""
)

#: ARGV: binding field.
UNBIND: Final = (
    _PRELUDE
    + r"""
if redis.call('HDEL', BINDINGS, ARGV[2]) == 1 then redis.call('INCR', TOPOLOGY) end
"""
)

#: ARGV: name. Deletes its messages (ready and deferred) and bindings.
DELETE_QUEUE: Final = (
    _PRELUDE
    + r"""
delete_queue(ARGV[2])
"""
)

#: ARGV: name. Reply: how many ready and deferred messages were deleted.
PURGE: Final = (
    _PRELUDE
    + r"""
return empty_zset(ready_key(ARGV[2]), ARGV[2]) + empty_zset(deferred_key(ARGV[2]), ARGV[2])
"""
)

#: ARGV: name. Reply: ready plus deferred messages.
LENGTH: Final = (
    _PRELUDE
    + r"""
return redis.call('ZCARD', ready_key(ARGV[2])) + redis.call('ZCARD', deferred_key(ARGV[2]))
"""
)

#: Reply: {version, exchanges (flat name, type), queues (flat name, policy), binding fields}.
TOPOLOGY: Final = (
    _PRELUDE
    + r"""
return {
  redis.call('GET', TOPOLOGY) or '0',
  redis.call('HGETALL', EXCHANGES),
  redis.call('HGETALL', QUEUES),
  redis.call('HKEYS', BINDINGS),
}
"""
)
