"""The SQLite ceiling: bare ``sqlite3`` doing the broker work celeriac does per task.

Same statements as celeriac's SQLite engine (one transaction per one-by-one publish, one per
batch in bulk; a claim of a batch with ``UPDATE ... RETURNING``, then deleting the messages
and writing one result row each in one transaction), no framework, bodies of a real
message's size. The ratio celeriac/ceiling says what the framework costs. The drain runs
as a script of its own, timed from its start, as the worker is.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCHEMA = (
    """CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL,
        body BLOB NOT NULL, priority INTEGER NOT NULL, due REAL NOT NULL, state TEXT NOT NULL,
        deliveries INTEGER NOT NULL DEFAULT 0, lease TEXT, lease_until REAL)""",
    "CREATE INDEX ready ON messages (queue, priority DESC, id) WHERE state = 'ready'",
    "CREATE TABLE keys (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires REAL) WITHOUT ROWID",
)
INSERT = "INSERT INTO messages (queue, body, priority, due, state) VALUES (?, ?, 0, ?, 'ready')"
CLAIM = """UPDATE messages SET state = 'leased', lease = lower(hex(randomblob(16))),
    lease_until = ?, deliveries = deliveries + 1
    WHERE id IN (SELECT id FROM messages WHERE queue = 'q' AND state = 'ready'
                 ORDER BY priority DESC, id LIMIT ?)
    RETURNING id, body, lease"""
ACK = "DELETE FROM messages WHERE id = ? AND lease = ?"
PUT = "INSERT OR REPLACE INTO keys (key, value, expires) VALUES (?, ?, ?)"


def connect(path: Path) -> sqlite3.Connection:
    """A connection set up as celeriac sets up its own."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=10)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA temp_store = MEMORY")
    return conn


def fresh(path: Path) -> None:
    """An empty database with the schema."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    conn = connect(path)
    for statement in SCHEMA:
        conn.execute(statement)
    conn.close()


def enqueue_one(path: Path, body: bytes, n: int) -> float:
    """One transaction per message."""
    fresh(path)
    conn = connect(path)
    started = time.perf_counter()
    for _ in range(n):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(INSERT, ("q", body, time.time()))
        conn.execute("COMMIT")
    return n / (time.perf_counter() - started)


def enqueue_bulk(path: Path, body: bytes, n: int, batch: int = 1000) -> float:
    """One transaction per batch."""
    fresh(path)
    conn = connect(path)
    started = time.perf_counter()
    for first in range(0, n, batch):
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(INSERT, [("q", body, now)] * min(batch, n - first))
        conn.execute("COMMIT")
    return n / (time.perf_counter() - started)


def _consume(path: Path, limit: int, result: bytes) -> None:
    conn = connect(path)
    while True:
        conn.execute("BEGIN IMMEDIATE")
        rows = conn.execute(CLAIM, (time.time() + 30, limit)).fetchall()
        conn.execute("COMMIT")
        if not rows:
            return
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        for message_id, _body, lease in rows:
            if conn.execute(ACK, (message_id, lease)).rowcount:
                conn.execute(PUT, (f"meta-{message_id}", result, now + 86400))
        conn.execute("COMMIT")


def drain(path: Path, body: bytes, n: int, processes: int, limit: int = 8) -> float:
    """Consumer processes claiming ``limit`` at a time until the backlog is gone: the time
    from the script's start (``python -m bench.ceiling_sqlite``) to its end, as the worker
    is timed from its own start."""
    enqueue_bulk(path, body, n)
    command = [sys.executable, "-m", "bench.ceiling_sqlite", str(path), str(processes), str(limit)]
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    return n / (time.perf_counter() - started)


def _drain_here(path: Path, processes: int, limit: int) -> None:
    result = b"x" * 200
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_consume, args=(path, limit, result)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
        if worker.exitcode != 0:
            raise SystemExit(f"a ceiling consumer failed (exit code {worker.exitcode})")


if __name__ == "__main__":
    _drain_here(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
