"""The tables of the SQLite engine, and the statements and parameters its parts share.

The tables of the limits (rate turns, concurrency slots, waiting messages, unique keys) are
in ``sqlite_limits.py``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from celeriac.transports.base import Delivery

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS messages (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: ids name messages
        queue       TEXT NOT NULL,
        body        BLOB NOT NULL,
        priority    INTEGER NOT NULL,
        due         REAL NOT NULL,
        state       TEXT NOT NULL,                      -- ready, delayed or leased
        deliveries  INTEGER NOT NULL DEFAULT 0,
        lease       TEXT,                               -- the holder's token while leased
        lease_until REAL,
        history     TEXT                                -- JSON list of failed deliveries
    )""",
    """CREATE INDEX IF NOT EXISTS messages_ready
        ON messages (queue, priority DESC, id) WHERE state = 'ready'""",
    "CREATE INDEX IF NOT EXISTS messages_delayed ON messages (due) WHERE state = 'delayed'",
    """CREATE INDEX IF NOT EXISTS messages_leased
        ON messages (lease_until) WHERE state = 'leased'""",
    """CREATE TABLE IF NOT EXISTS dead_letters (
        id          INTEGER PRIMARY KEY,                -- the message id
        queue       TEXT NOT NULL,
        body        BLOB NOT NULL,
        priority    INTEGER NOT NULL,
        reason      TEXT NOT NULL,
        deliveries  INTEGER NOT NULL,
        dead_at     REAL NOT NULL,
        history     TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS dead_letters_at ON dead_letters (dead_at)",
    """CREATE TABLE IF NOT EXISTS keys (
        key     TEXT PRIMARY KEY,
        value   BLOB NOT NULL,
        expires REAL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS keys_expires ON keys (expires) WHERE expires IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS topics (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,      -- never reused: listeners resume by id
        topic   TEXT NOT NULL,
        body    BLOB NOT NULL,
        created REAL NOT NULL
    )""",
)

# Each connection's own tables, through which one INSERT ends or renews many deliveries: the
# trigger of each row acknowledges (and stores a result), renews or buries the message if its
# lease still holds, and deletes the row; a row left behind names an item refused for a lost
# lease. One statement is one transaction that takes and lets go of the write lock inside
# one call into SQLite, with no Python code run in between (see ``SQLiteBase._write_one``).
TEMP_SCHEMA = (
    """CREATE TEMP TABLE IF NOT EXISTS completions (
        item INTEGER, message INTEGER, lease TEXT, key TEXT, value BLOB, expires REAL
    )""",
    """CREATE TEMP TRIGGER IF NOT EXISTS completions_apply AFTER INSERT ON completions
    WHEN EXISTS (SELECT 1 FROM messages WHERE id = NEW.message AND lease = NEW.lease)
    BEGIN
        DELETE FROM messages WHERE id = NEW.message;
        INSERT INTO keys (key, value, expires)
            SELECT NEW.key, NEW.value, NEW.expires WHERE NEW.key IS NOT NULL
            ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires;
        DELETE FROM completions WHERE rowid = NEW.rowid;
    END""",
    """CREATE TEMP TABLE IF NOT EXISTS renewals (
        item INTEGER, message INTEGER, lease TEXT, until REAL
    )""",
    """CREATE TEMP TRIGGER IF NOT EXISTS renewals_apply AFTER INSERT ON renewals
    WHEN EXISTS (SELECT 1 FROM messages WHERE id = NEW.message AND lease = NEW.lease)
    BEGIN
        -- never earlier: a renewal that waited for the lock may carry an older expiry
        UPDATE messages SET lease_until = max(lease_until, NEW.until) WHERE id = NEW.message;
        DELETE FROM renewals WHERE rowid = NEW.rowid;
    END""",
    """CREATE TEMP TABLE IF NOT EXISTS burials (
        message INTEGER, lease TEXT, reason TEXT, dead_at REAL, event TEXT
    )""",
    """CREATE TEMP TRIGGER IF NOT EXISTS burials_apply AFTER INSERT ON burials
    WHEN EXISTS (SELECT 1 FROM messages WHERE id = NEW.message AND lease = NEW.lease)
    BEGIN
        INSERT INTO dead_letters
            (id, queue, body, priority, reason, deliveries, dead_at, history)
            SELECT id, queue, body, priority, NEW.reason, deliveries, NEW.dead_at,
                json_insert(coalesce(history, '[]'), '$[#]', json(NEW.event))
            FROM messages WHERE id = NEW.message;
        DELETE FROM messages WHERE id = NEW.message;
        DELETE FROM burials WHERE rowid = NEW.rowid;
    END""",
)

HISTORY_ADD = "json_insert(coalesce(history, '[]'), '$[#]', json(:event))"
PUT = (
    "INSERT INTO keys (key, value, expires) VALUES (?, ?, ?) ON CONFLICT (key)"
    " DO UPDATE SET value = excluded.value, expires = excluded.expires"
)
ACK = "DELETE FROM messages WHERE id = :id AND lease = :lease"


def held_row(delivery: Delivery) -> dict[str, Any] | None:
    """The parameters that name a delivery's row under its lease, or None if it has none."""
    try:
        return {"id": int(delivery.message_id), "lease": delivery.lease}
    except ValueError:
        return None


def event_json(event: str, reason: str, deliveries: int, detail_json: str | None = None) -> str:
    """One entry of a message's history, as JSON text for SQLite's json functions."""
    entry: dict[str, Any] = {
        "at": time.time(),
        "event": event,
        "reason": reason,
        "deliveries": deliveries,
    }
    if detail_json is not None:
        entry["detail"] = json.loads(detail_json)
    return json.dumps(entry)
