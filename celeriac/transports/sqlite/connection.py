"""The SQLite file and this process's connection to it: opening, transactions, fork safety.

The file runs in WAL mode with ``synchronous=NORMAL``: readers never block the one writer, and
a commit survives the crash of any process (a power cut may lose the last few). A write is
either one statement (``_write_one``: the lock is taken and let go inside one call into
SQLite, so a thread holding the GIL cannot keep it) or, where a write must read first, one
``BEGIN IMMEDIATE`` transaction (``_writing``); either way writers queue on SQLite's busy
timeout instead of failing half-way. SQLite is single-host, so the host clock
(``time.time()``) is the broker's clock for due times and leases.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import urllib.parse
import weakref
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from celeriac.errors import TransportError
from celeriac.transports import sqlite_limits as limits
from celeriac.transports.base import Transport
from celeriac.transports.sqlite.schema import SCHEMA, TEMP_SCHEMA

# Inherited connections are kept, never closed: closing a handle that crossed a fork() can
# disturb the parent's locks and WAL files (see https://www.sqlite.org/howtocorrupt.html).
_inherited: list[sqlite3.Connection] = []
_fork_lock = threading.Lock()
#: This process's transports, each held still across a fork (see ``_hold_for_fork``).
_open_transports: weakref.WeakSet[SQLiteBase] = weakref.WeakSet()


def _hold_for_fork() -> None:
    """Before fork(): wait until no thread of this process is inside a SQLite statement.

    SQLite keeps a per-process record of the file locks its connections hold. A child forked
    while another thread is in the middle of a write inherits that record without the lock,
    and its own connection then waits for a lock no one will release (a worker's replacement
    pool process did, for the whole busy timeout). Holding every transport's lock across the
    fork means the child starts with no statement in flight.
    """
    pid = os.getpid()
    for transport in sorted(_open_transports, key=id):
        if transport._pid == pid:
            transport._lock.acquire()
            transport._held_for_fork = True


def _release_after_fork() -> None:
    """After fork(), in the parent and in the child: let go of what ``_hold_for_fork`` took."""
    for transport in list(_open_transports):
        if transport._held_for_fork:
            transport._held_for_fork = False
            transport._lock.release()


os.register_at_fork(
    before=_hold_for_fork,
    after_in_parent=_release_after_fork,
    after_in_child=_release_after_fork,
)


#: Rows one statement writes: far below SQLite's limit of 32,766 parameters.
ROWS_PER_STATEMENT = 2_000
#: Stored in the file's ``user_version`` once its tables exist: a connection then opens
#: without taking the write lock. A checksum of the statements, so that a file made by a
#: release with other tables gets the missing ones (every statement is IF NOT EXISTS).
_SCHEMA_MARK = zlib.crc32("\n".join((*SCHEMA, *limits.SCHEMA)).encode()) & 0x7FFFFFFF


def _create_schema(conn: sqlite3.Connection) -> None:
    """Create the tables and mark the file, in one transaction.

    It holds the write lock while Python runs between its statements, which another thread
    of this process holding the GIL (a task, an import) can stretch to seconds, long
    enough for other workers' leases to lapse; hence only where the mark is missing.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in (*SCHEMA, *limits.SCHEMA):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {_SCHEMA_MARK}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _path_from_url(url: str) -> str:
    """The absolute file path named by a ``sqlite:///...`` URL."""
    scheme, _, rest = url.partition("://")
    rest = urllib.parse.unquote(rest.split("?", 1)[0])
    if scheme.lower() != "sqlite" or not rest.startswith("/") or rest == "/":
        raise TransportError(
            f"not a SQLite broker URL: {url!r} (expected sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db; for an in-process broker use memory://)"
        )
    return os.path.abspath(rest[1:])


class SQLiteBase(Transport):
    """The options, the file and this process's connection: what every part stands on."""

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        super().__init__(url, options)
        self.path = _path_from_url(url)
        self.reclaim_interval = float(self.options.get("reclaim_interval", 0.5))
        self.busy_timeout = float(self.options.get("busy_timeout", 10.0))
        self.sweep_interval = float(self.options.get("sweep_interval", 5.0))
        self.topic_keep = int(self.options.get("topic_keep", 2_000))
        self.topic_max_age = float(self.options.get("topic_max_age", 300.0))
        # How often a waiting fetch or wait() looks for other processes' commits: the
        # latency floor of an idle worker, at a cost of one cheap PRAGMA per look.
        self.poll_interval = float(self.options.get("poll_interval", 0.002))
        self._lock = threading.Lock()
        self._held_for_fork = False
        self._pid = os.getpid()
        self._conn: sqlite3.Connection | None = None
        _open_transports.add(self)
        self._reclaimed = 0.0  # when this object last took back expired leases
        self._swept = 0.0  # when this object last dropped expired keys and old topic rows
        self._commits = 0  # our own commits, which PRAGMA data_version does not count

    def _guard(self) -> threading.Lock:
        """This process's lock; after a fork, forget the parent's lock and connection."""
        pid = os.getpid()
        if self._pid != pid:
            with _fork_lock:
                if self._pid != pid:
                    if self._conn is not None:
                        _inherited.append(self._conn)
                    # The parent's lock may have been held by one of its threads at the fork.
                    self._lock, self._conn, self._pid = threading.Lock(), None, pid
        return self._lock

    def _connection(self) -> sqlite3.Connection:
        """The open connection; the caller holds the lock."""
        if self._conn is None:
            self._conn = self._open()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        """Connect, switch to WAL and create the schema if this is a new file."""
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise TransportError(f"cannot open SQLite broker {self.path}: {exc}") from exc
        try:
            mode = self._use_wal(conn)
            if mode != "wal":  # e.g. a file system without shared memory
                raise sqlite3.OperationalError(f"cannot use WAL mode (journal mode is {mode})")
            conn.execute("PRAGMA synchronous = NORMAL")
            # The claim's small temporary tables would otherwise open a temp file per fetch.
            conn.execute("PRAGMA temp_store = MEMORY")
            if conn.execute("PRAGMA user_version").fetchone()[0] != _SCHEMA_MARK:
                _create_schema(conn)
            for statement in TEMP_SCHEMA:
                conn.execute(statement)
        except sqlite3.Error as exc:
            conn.close()
            raise TransportError(f"cannot prepare SQLite broker {self.path}: {exc}") from exc
        return conn

    def _use_wal(self, conn: sqlite3.Connection) -> str:
        """Switch a connection's file to WAL; returns the journal mode it ends in.

        Several processes opening a new file at once race to switch it, and SQLite answers
        the loser "database is locked" at once, without waiting: try again until the busy
        timeout.
        """
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0])
                if mode == "wal":
                    return mode
                return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The connection, for statements that only read."""
        with self._guard():
            try:
                yield self._connection()
            except sqlite3.Error as exc:
                raise TransportError(f"SQLite broker {self.path}: {exc}") from exc

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """The connection inside one ``BEGIN IMMEDIATE`` transaction, committed on success."""
        with self._guard():
            try:
                conn = self._connection()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                    self._commits += 1
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise TransportError(f"SQLite broker {self.path}: {exc}") from exc

    def _write_one(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        """Run one statement as a transaction of its own; the cursor.

        SQLite takes the write lock, writes and commits inside the one call that runs the
        statement, and this thread lets go of the GIL for that call. A transaction of
        several statements holds the lock while Python runs between them: if another
        thread of this process then keeps the GIL (a task in C code, for seconds), no other
        process can write, the lease helper's renewals included. The paths a worker runs
        while its tasks run (fetch, complete, acknowledge, publish, store) therefore write
        one statement at a time; a statement must not return rows (``RETURNING`` keeps the
        transaction open until Python has read them all).
        """
        with self._guard():
            try:
                cursor = self._connection().execute(sql, params)
            except sqlite3.Error as exc:
                raise TransportError(f"SQLite broker {self.path}: {exc}") from exc
            self._commits += 1
            return cursor

    def _through(self, table: str, rows: Sequence[tuple[Any, ...]]) -> set[Any]:
        """Insert ``rows`` into this connection's ``table`` (see ``TEMP_SCHEMA``), whose
        trigger applies each row it can and deletes it; the first values of the rows left
        behind (the items it refused). One statement per ``ROWS_PER_STATEMENT`` rows, each a
        transaction of its own (see ``_write_one``), and one hold of this process's lock for
        all of it, so that another thread's refused rows never mix with these.
        """
        if not rows:
            return set()
        marks = "(" + ", ".join("?" * len(rows[0])) + ")"
        with self._guard():
            try:
                conn = self._connection()
            except sqlite3.Error as exc:
                raise TransportError(f"SQLite broker {self.path}: {exc}") from exc
            try:
                for first in range(0, len(rows), ROWS_PER_STATEMENT):
                    chunk = rows[first : first + ROWS_PER_STATEMENT]
                    conn.execute(f"INSERT INTO {table} VALUES {', '.join([marks] * len(chunk))}",
                                 [value for row in chunk for value in row])  # fmt: skip
                    self._commits += 1
                left = {row[0] for row in conn.execute(f"SELECT * FROM {table}")}
                if left:
                    conn.execute(f"DELETE FROM {table}")
                return left
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):  # what an earlier chunk left behind
                    conn.execute(f"DELETE FROM {table}")
                raise TransportError(f"SQLite broker {self.path}: {exc}") from exc

    def _sweep(self, now: float) -> None:
        """Now and then, drop expired keys and topic rows past their count or age."""
        if now - self._swept < self.sweep_interval:
            return
        self._swept = now
        self._write_one("DELETE FROM keys WHERE expires <= ?", (now,))
        self._write_one(
            "DELETE FROM topics WHERE id <= (SELECT max(id) FROM topics) - ?", (self.topic_keep,)
        )
        # Rows are in creation order, so everything before the first young row is old.
        self._write_one(
            "DELETE FROM topics WHERE id < coalesce("
            " (SELECT id FROM topics WHERE created >= ? ORDER BY id LIMIT 1),"
            " (SELECT max(id) + 1 FROM topics))",
            (now - self.topic_max_age,),
        )

    def close(self) -> None:
        """Close this process's connection; it reopens on next use."""
        with self._guard():
            if self._conn is not None:
                self._conn.close()
                self._conn = None
