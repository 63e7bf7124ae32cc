"""The limits of the SQLite engine: rate turns, concurrency slots, waiting messages, unique
keys (the contract is in ``base.py``).

Each function runs inside the caller's ``BEGIN IMMEDIATE`` transaction, so each is one atomic
step for every process sharing the file. A trigger frees a message's unique key and its
place in a waiting line when the message row is deleted, whatever deletes it (ack, dead
letter, purge), so no other statement needs to know about them.
"""

from __future__ import annotations

import sqlite3

from celeriac.transports.base import TURN_GRACE

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS rates (
        key      TEXT PRIMARY KEY,
        free_at  REAL NOT NULL,                         -- when the next turn is free
        interval REAL NOT NULL                          -- the interval the key was last used with
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS rate_turns (
        key   TEXT NOT NULL,
        claim TEXT NOT NULL,                            -- the message the turn is reserved for
        at    REAL NOT NULL,
        PRIMARY KEY (key, claim)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS rate_turns_at ON rate_turns (key, at)",
    """CREATE TABLE IF NOT EXISTS slots (
        key     TEXT NOT NULL,
        holder  TEXT NOT NULL,                          -- the lease token of the running task
        expires REAL NOT NULL,
        PRIMARY KEY (key, holder)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS waiting (
        key        TEXT NOT NULL,                       -- the slot key the message waits for
        message_id INTEGER NOT NULL,
        since      REAL NOT NULL,                       -- first wait: the longest waiting go first
        PRIMARY KEY (key, message_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS waiting_order ON waiting (key, since, message_id)",
    "CREATE INDEX IF NOT EXISTS waiting_message ON waiting (message_id)",
    """CREATE TABLE IF NOT EXISTS uniques (
        key        TEXT PRIMARY KEY,
        message_id INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS uniques_message ON uniques (message_id)",
    """CREATE TRIGGER IF NOT EXISTS messages_gone AFTER DELETE ON messages BEGIN
        DELETE FROM uniques WHERE message_id = old.id;
        DELETE FROM waiting WHERE message_id = old.id;
    END""",
)

#: Waiting entries looked at per released slot, to find one still waiting.
WAKE_SCAN = 100


def unique_holder(conn: sqlite3.Connection, key: str) -> str | None:
    """The id of the live message holding ``key``, if any (the trigger frees dead ones)."""
    row = conn.execute("SELECT message_id FROM uniques WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def hold_unique(conn: sqlite3.Connection, key: str, message_id: str) -> None:
    """Record that ``message_id`` holds ``key``."""
    conn.execute("INSERT INTO uniques (key, message_id) VALUES (?, ?)", (key, int(message_id)))


def wait(conn: sqlite3.Connection, key: str, message_id: int, now: float) -> None:
    """Put a message in the line for a slot of ``key``, keeping its place if it was in it."""
    conn.execute(
        "INSERT OR IGNORE INTO waiting (key, message_id, since) VALUES (?, ?, ?)",
        (key, message_id, now),
    )


def throttle(
    conn: sqlite3.Connection, key: str, interval: float, claim: str, now: float
) -> float | None:
    """None to go now; else the time of the turn now reserved for ``claim``."""
    turn = conn.execute(
        "SELECT at FROM rate_turns WHERE key = ? AND claim = ?", (key, claim)
    ).fetchone()
    if turn is not None:
        if turn[0] > now:
            return float(turn[0])
        conn.execute("DELETE FROM rate_turns WHERE key = ? AND claim = ?", (key, claim))
        return None
    row = conn.execute("SELECT free_at, interval FROM rates WHERE key = ?", (key,)).fetchone()
    free_at = now if row is None else float(row[0])
    if row is not None and row[1] != interval:  # the limit changed: start over, no early turn
        conn.execute("DELETE FROM rate_turns WHERE key = ?", (key,))
        free_at = min(free_at, now + interval)
    conn.execute("DELETE FROM rate_turns WHERE key = ? AND at < ?", (key, now - TURN_GRACE))
    mine = None
    if free_at <= now:
        free_at = now
    else:
        mine = free_at
        conn.execute(
            "INSERT INTO rate_turns (key, claim, at) VALUES (?, ?, ?)", (key, claim, free_at)
        )
    conn.execute(
        "INSERT OR REPLACE INTO rates (key, free_at, interval) VALUES (?, ?, ?)",
        (key, free_at + interval, interval),
    )
    return mine


def acquire_slot(
    conn: sqlite3.Connection, key: str, holder: str, limit: int, ttl: float, now: float
) -> float | None:
    """None when ``holder`` holds a slot of ``key``; else when the soonest slot runs out."""
    conn.execute("DELETE FROM slots WHERE key = ? AND expires <= ?", (key, now))
    mine = conn.execute(
        "SELECT 1 FROM slots WHERE key = ? AND holder = ?", (key, holder)
    ).fetchone()
    count, soonest = conn.execute(
        "SELECT count(*), min(expires) FROM slots WHERE key = ?", (key,)
    ).fetchone()
    if mine is None and count >= limit:
        return float(soonest)
    conn.execute(
        "INSERT OR REPLACE INTO slots (key, holder, expires) VALUES (?, ?, ?)",
        (key, holder, now + ttl),
    )
    return None


def renew_slot(conn: sqlite3.Connection, key: str, holder: str, ttl: float, now: float) -> bool:
    """Renew one slot; False if it ran out (or was freed) meanwhile."""
    cursor = conn.execute(
        "UPDATE slots SET expires = ? WHERE key = ? AND holder = ? AND expires > ?",
        (now + ttl, key, holder, now),
    )
    return cursor.rowcount == 1


def release_slot(conn: sqlite3.Connection, key: str, holder: str) -> None:
    """Free one slot and make the longest-waiting message that still waits deliverable.

    Entries of messages that no longer wait (running, or woken and not yet taken) are dropped
    on the way; the message woken keeps its place, in case it has to wait again.
    """
    conn.execute("DELETE FROM slots WHERE key = ? AND holder = ?", (key, holder))
    waiting = conn.execute(
        "SELECT message_id FROM waiting WHERE key = ? ORDER BY since, message_id LIMIT ?",
        (key, WAKE_SCAN),
    ).fetchall()
    for (message_id,) in waiting:
        woken = conn.execute(
            "UPDATE messages SET state = 'ready' WHERE id = ? AND state = 'delayed'",
            (message_id,),
        ).rowcount
        if woken:
            return  # it keeps its place in the line until it runs (or is gone)
        conn.execute("DELETE FROM waiting WHERE key = ? AND message_id = ?", (key, message_id))
