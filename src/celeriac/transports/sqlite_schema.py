"""The embedded broker's storage layout: every table and index, in one place.

What lives where:

- ``exchanges``: declared exchanges (name, type, flags).
- ``queues``: declared queues; ``policy`` is the JSON of their TTL/limits/dead-letter
  settings; ``owner`` is the session that declared an exclusive or auto-delete queue
  (the queue goes with it); ``last_used`` serves the queue ``expires`` setting.
- ``bindings``: exchange -> queue rules (routing key, headers arguments as JSON).
- ``messages``: one row per message per queue. ``owner`` is NULL while the message is ready
  and holds the consuming session's id while it is leased; the row is deleted only when
  acked. ``meta`` is the JSON ``[headers, properties]``; ``body`` the raw bytes. A message
  returned by ``defer`` has the owner ``~deferred`` and becomes ready again (owner NULL)
  at ``not_before``; ``messages_deferred`` finds the due ones.
- ``sessions``: live client sessions and their heartbeats. A session whose heartbeat is
  stale, or whose process on this host is gone, is dead: its leased messages return to
  their queues marked redelivered, and its exclusive queues are deleted.
- ``topology``: one counter bumped by every declaration change, so publishers can cache
  bindings and policies and notice when another process changed them.
- ``results``: the result backend's key-value store, Celery's keys
  (``celery-task-meta-<id>``, ``celery-taskset-meta-<id>``) to the serialized meta, with its
  ``status`` alongside (so a stored SUCCESS is never overwritten) and an expiry time.
- ``result_history``: every value a key had before its current one, by ``seq``, so a client
  waiting with ``on_message`` sees each state even when several arrive between two of its
  reads (a result stored once costs a single INSERT: its history stays empty).
- ``chord_parts``: the reports of a chord's header tasks not yet complete, one row per
  header task (``UNIQUE (group_id, task_id)``, so a redelivered task is counted once);
  ``value`` is Celery's encoded ``[1, task_id, state, result]``, ``idx`` the task's
  ``group_index``. The report that completes a chord takes every row and deletes them.
- ``chords``: one row per chord being counted: ``received`` distinct reports so far (a
  counter, so counting does not grow with the header's size) and ``done`` once the body
  was sent (or the chord failed); the row stays until it expires, so a header task
  redelivered after that is not counted again.

The partial index ``messages_ready`` keeps fetch cost independent of queue depth: the next
messages of a queue are found by walking the index, priority first, then arrival order.
``messages_expiring`` lets any session find expired messages of every queue cheaply, so
queues nobody consumes (delay queues dead-lettering on TTL) still expire on time.
"""

from __future__ import annotations

#: Bumped when the layout changes incompatibly (stored in ``PRAGMA user_version``).
SCHEMA_VERSION = 3

TABLES = (
    "exchanges",
    "queues",
    "bindings",
    "messages",
    "sessions",
    "topology",
    "results",
    "result_history",
    "chord_parts",
    "chords",
)
#: Indexes, which ``sqlite_master`` lists beside the tables.
INDEXES = (
    "bindings_queue",
    "messages_ready",
    "messages_owner",
    "messages_expiring",
    "messages_deferred",
    "results_expires",
    "chord_parts_expiring",
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS exchanges (
    name        TEXT PRIMARY KEY,
    type        TEXT NOT NULL,
    durable     INTEGER NOT NULL,
    auto_delete INTEGER NOT NULL,
    arguments   TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS queues (
    name      TEXT PRIMARY KEY,
    policy    TEXT NOT NULL DEFAULT '{}',
    owner     TEXT,
    last_used REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS bindings (
    exchange    TEXT NOT NULL,
    queue       TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    arguments   TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (exchange, queue, routing_key, arguments)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS bindings_queue ON bindings(queue);
CREATE TABLE IF NOT EXISTS messages (
    id             INTEGER PRIMARY KEY,
    queue          TEXT NOT NULL,
    priority       INTEGER NOT NULL DEFAULT 0,
    exchange       TEXT NOT NULL,
    routing_key    TEXT NOT NULL,
    meta           TEXT NOT NULL,
    body           BLOB NOT NULL,
    expires_at     REAL,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    redelivered    INTEGER NOT NULL DEFAULT 0,
    owner          TEXT,
    not_before     REAL
);
CREATE INDEX IF NOT EXISTS messages_ready
    ON messages(queue, priority DESC, id) WHERE owner IS NULL;
CREATE INDEX IF NOT EXISTS messages_owner
    ON messages(owner) WHERE owner IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_deferred
    ON messages(not_before) WHERE owner = '~deferred';
CREATE INDEX IF NOT EXISTS messages_expiring
    ON messages(expires_at) WHERE expires_at IS NOT NULL AND owner IS NULL;
CREATE TABLE IF NOT EXISTS sessions (
    id        TEXT PRIMARY KEY,
    pid       INTEGER NOT NULL,
    hostname  TEXT NOT NULL,
    heartbeat REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS topology (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT OR IGNORE INTO topology (id, version) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS results (
    key          TEXT PRIMARY KEY,
    status       TEXT NOT NULL,
    content_type TEXT NOT NULL,
    value        BLOB NOT NULL,
    expires_at   REAL,
    seq          INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS results_expires ON results(expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS result_history (
    key          TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    value        BLOB NOT NULL,
    PRIMARY KEY (key, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chord_parts (
    group_id     TEXT NOT NULL,
    task_id      TEXT NOT NULL,
    idx          INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    value        BLOB NOT NULL,
    expires_at   REAL,
    UNIQUE (group_id, task_id)
);
CREATE INDEX IF NOT EXISTS chord_parts_expiring
    ON chord_parts(expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS chords (
    group_id   TEXT PRIMARY KEY,
    received   INTEGER NOT NULL,
    done       INTEGER NOT NULL DEFAULT 0,
    expires_at REAL
) WITHOUT ROWID;
-- Layout 2 (short-lived) kept finished chords in chords_done, replaced by chords.
DROP TABLE IF EXISTS chords_done;
"""
