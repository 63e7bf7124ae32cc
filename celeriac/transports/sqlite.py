"""The embedded broker: one SQLite file shared by the producers and workers of one host.

``sqlite:///relative/path.db`` (relative to the working directory when the transport is made)
or ``sqlite:////absolute/path.db``. The file and its tables are created on first use.

The file runs in WAL mode with ``synchronous=NORMAL``: readers never block the one writer, and
a commit survives the crash of any process (a power cut may lose the last few). Every write is
one ``BEGIN IMMEDIATE`` transaction, so writers queue on SQLite's busy timeout instead of
failing half-way. SQLite is single-host, so the host clock (``time.time()``) is the broker's
clock for due times and leases.

A message row is in one of three states, each with its own partial index so that every hot
query touches only the rows it needs, even with 100k messages queued:

- ``ready``: deliverable now; claimed by one ``UPDATE ... RETURNING`` in priority, id order;
- ``delayed``: due later; promoted to ready by the next fetch after its due time;
- ``leased``: held by a consumer until ``lease_until``; taken back by a later fetch when the
  lease runs out (at most once per ``reclaim_interval`` per transport object).

Rate turns, concurrency slots, waiting messages and unique keys have tables of their own
(``sqlite_limits.py``).

Options (``options`` dict): ``max_deliveries`` (see the contract), ``reclaim_interval``
(seconds between sweeps of expired leases, default 0.5), ``busy_timeout`` (seconds a writer
waits for the lock, default 10), ``sweep_interval`` (seconds between sweeps of expired keys
and old topic rows, default 5), ``topic_keep`` (topic rows kept, default 2,000) and
``topic_max_age`` (seconds a topic row is kept, default 300) and ``poll_interval`` (how
often a waiting fetch or ``wait`` looks for other processes' commits, default 0.002 s).
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import threading
import time
import urllib.parse
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from celeriac.errors import TransportError
from celeriac.transports import sqlite_limits as limits
from celeriac.transports.base import (
    DEFAULT_LEASE,
    DeadLetter,
    Delivery,
    Detail,
    KeyWrite,
    Subscription,
    Transport,
    check_bytes,
    check_detail,
    check_due,
    check_fetch,
    check_key,
    check_lease,
    check_message,
    check_name,
    check_slot,
    check_throttle,
    check_topic,
    check_topics,
)

__all__ = ["SQLiteTransport"]

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

_HISTORY_ADD = "json_insert(coalesce(history, '[]'), '$[#]', json(:event))"
_EXPIRED_EVENT = (
    "json_insert(coalesce(history, '[]'), '$[#]',"
    " json_object('at', :now, 'event', 'lease_expired', 'deliveries', deliveries))"
)
_BURY_HELD = f"""
    INSERT INTO dead_letters (id, queue, body, priority, reason, deliveries, dead_at, history)
    SELECT id, queue, body, priority, :reason, deliveries, :now, {_HISTORY_ADD}
    FROM messages WHERE id = :id AND lease = :lease"""
_BURY_EXPIRED = f"""
    INSERT INTO dead_letters (id, queue, body, priority, reason, deliveries, dead_at, history)
    SELECT id, queue, body, priority, 'lease_expired', deliveries, :now, {_EXPIRED_EVENT}
    FROM messages WHERE state = 'leased' AND lease_until <= :now AND deliveries >= :max"""
_PUT = (
    "INSERT INTO keys (key, value, expires) VALUES (?, ?, ?) ON CONFLICT (key)"
    " DO UPDATE SET value = excluded.value, expires = excluded.expires"
)
_ACK = "DELETE FROM messages WHERE id = :id AND lease = :lease"
_EXTEND = "UPDATE messages SET lease_until = :until WHERE id = :id AND lease = :lease"
_READY_ONE_QUEUE = """SELECT * FROM (
    SELECT id, priority FROM messages WHERE state = 'ready' AND queue = ?
    ORDER BY priority DESC, id LIMIT ?)"""

# Inherited connections are kept, never closed: closing a handle that crossed a fork() can
# disturb the parent's locks and WAL files (see https://www.sqlite.org/howtocorrupt.html).
_inherited: list[sqlite3.Connection] = []
_fork_lock = threading.Lock()
#: This process's transports, each held still across a fork (see ``_hold_for_fork``).
_open_transports: weakref.WeakSet[SQLiteTransport] = weakref.WeakSet()


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


@functools.lru_cache(maxsize=32)
def _claim_sql(queue_count: int) -> str:
    """The statement that leases the most urgent ready messages of ``queue_count`` queues.

    Each queue is read through its own index range and the results merged, because
    ``queue IN (...) ORDER BY`` would sort every ready message of those queues.
    """
    per_queue = " UNION ALL ".join([_READY_ONE_QUEUE] * queue_count)
    return f"""
        UPDATE messages
        SET state = 'leased', lease = lower(hex(randomblob(16))), lease_until = ?,
            deliveries = deliveries + 1
        WHERE id IN (SELECT id FROM ({per_queue}) ORDER BY priority DESC, id LIMIT ?)
        RETURNING id, queue, body, priority, deliveries, lease"""


@functools.lru_cache(maxsize=32)
def _peek_sql(queue_count: int) -> str:
    """The query that tells whether any of ``queue_count`` queues has a ready message."""
    marks = ", ".join("?" * queue_count)
    return f"SELECT EXISTS (SELECT 1 FROM messages WHERE state = 'ready' AND queue IN ({marks}))"


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


def _held(delivery: Delivery) -> dict[str, Any] | None:
    """The parameters that name a delivery's row under its lease, or None if it has none."""
    try:
        return {"id": int(delivery.message_id), "lease": delivery.lease}
    except ValueError:
        return None


class SQLiteTransport(Transport):
    """Queues, keys and topics in one SQLite file, for the processes of one host."""

    schemes = ("sqlite",)

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

    # -- connection -----------------------------------------------------------------------------

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
            conn.execute("BEGIN IMMEDIATE")
            for statement in (*SCHEMA, *limits.SCHEMA):
                conn.execute(statement)
            conn.execute("COMMIT")
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

    def close(self) -> None:
        """Close this process's connection; it reopens on next use."""
        with self._guard():
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- queues ---------------------------------------------------------------------------------

    def publish(
        self, queue: str, body: bytes, *, due: float | None = None, priority: int = 0
    ) -> str:
        """Put ``body`` on ``queue``; return the message id."""
        return self.publish_many([(queue, body, due, priority)])[0]

    def publish_many(self, items: Iterable[tuple[str, bytes, float | None, int]]) -> list[str]:
        """Publish ``(queue, body, due, priority)`` items in one transaction."""
        batch = list(items)
        for queue, body, due, priority in batch:
            check_message(queue, body, due, priority)
        if not batch:
            return []
        now = time.time()
        ids: list[str] = []
        with self._writing() as conn:
            for queue, body, due, priority in batch:
                when = now if due is None else due
                cursor = conn.execute(
                    "INSERT INTO messages (queue, body, priority, due, state)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (queue, body, priority, when, "ready" if when <= now else "delayed"),
                )
                ids.append(str(cursor.lastrowid))
        return ids

    def fetch(
        self,
        queues: Sequence[str],
        limit: int = 1,
        timeout: float = 0.0,
        lease: float = DEFAULT_LEASE,
    ) -> list[Delivery]:
        """Lease up to ``limit`` deliverable messages; wait up to ``timeout`` for the first."""
        names = check_fetch(queues, limit, timeout, lease)
        deadline = time.monotonic() + timeout
        while True:
            deliveries, wake_at, version = self._claim(names, limit, lease)
            left = deadline - time.monotonic()
            if deliveries or left <= 0:
                return deliveries
            if wake_at is not None:
                left = min(left, max(wake_at - time.time(), 0.0))
            self._wait_for_work(names, version, left)

    def _claim(
        self, queues: list[str], limit: int, lease: float
    ) -> tuple[list[Delivery], float | None, tuple[int, int]]:
        """One fetch attempt: deliveries, when to try again, and the database version seen."""
        with self._writing() as conn:
            now = time.time()
            if now - self._reclaimed >= self.reclaim_interval:
                self._reclaim(conn, now)
                self._reclaimed = now
            conn.execute(
                "UPDATE messages SET state = 'ready' WHERE state = 'delayed' AND due <= ?", (now,)
            )
            params: list[Any] = [now + lease]
            for queue in queues:
                params += [queue, limit]
            rows = conn.execute(_claim_sql(len(queues)), [*params, limit]).fetchall()
            wake_at = None if rows else self._next_timer(conn)
            # Read inside the write lock: no commit can slip between the claim and this.
            version = (conn.execute("PRAGMA data_version").fetchone()[0], self._commits + 1)
        rows.sort(key=lambda row: (-row[3], row[0]))
        deliveries = [
            Delivery(queue=q, body=b, message_id=str(i), lease=lz, deliveries=n, priority=p)
            for i, q, b, p, n, lz in rows
        ]
        return deliveries, wake_at, version

    def _reclaim(self, conn: sqlite3.Connection, now: float) -> None:
        """Take back expired leases: dead-letter those out of deliveries, free the rest."""
        params = {"now": now, "max": self.max_deliveries}
        conn.execute(_BURY_EXPIRED, params)
        conn.execute(
            "DELETE FROM messages WHERE state = 'leased' AND lease_until <= :now"
            " AND deliveries >= :max",
            params,
        )
        conn.execute(
            f"UPDATE messages SET state = 'ready', lease = NULL, lease_until = NULL,"
            f" history = {_EXPIRED_EVENT} WHERE state = 'leased' AND lease_until <= :now",
            params,
        )

    def _next_timer(self, conn: sqlite3.Connection) -> float | None:
        """When a delayed message falls due or an expired lease can next be taken back."""
        due, expiry = conn.execute(
            "SELECT (SELECT min(due) FROM messages WHERE state = 'delayed'),"
            " (SELECT min(lease_until) FROM messages WHERE state = 'leased')"
        ).fetchone()
        if expiry is not None:
            expiry = max(expiry, self._reclaimed + self.reclaim_interval)
        times = [t for t in (due, expiry) if t is not None]
        return min(times) if times else None

    def _wait_for_work(self, queues: list[str], version: tuple[int, int], seconds: float) -> None:
        """Sleep up to ``seconds``, or until a commit makes work ready or moves a timer closer.

        Polls ``PRAGMA data_version``, which changes when any other connection commits, and
        only then reads; idle fetchers so leave the write lock to the processes that work.
        """
        end = time.monotonic() + seconds
        pause = 0.0002
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(pause, left))
            pause = min(pause * 2, self.poll_interval)
            with self._reading() as conn:
                seen = (conn.execute("PRAGMA data_version").fetchone()[0], self._commits)
                if seen == version:
                    continue
                version = seen
                if conn.execute(_peek_sql(len(queues)), queues).fetchone()[0]:
                    return
                wake_at = self._next_timer(conn)
            if wake_at is not None:
                end = min(end, time.monotonic() + max(wake_at - time.time(), 0.0))

    def ack(self, delivery: Delivery) -> bool:
        """Delete a delivered message; ``False`` if the lease was lost."""
        return self.ack_many([delivery])[0]

    def ack_many(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Acknowledge several deliveries in one transaction."""
        if not deliveries:
            return []
        done: list[bool] = []
        with self._writing() as conn:
            for delivery in deliveries:
                held = _held(delivery)
                done.append(held is not None and conn.execute(_ACK, held).rowcount == 1)
        return done

    def complete(self, items: Sequence[tuple[Delivery, KeyWrite | None]]) -> list[bool]:
        """Acknowledge and store results in one transaction; a lost lease stores nothing."""
        if not items:
            return []
        done: list[bool] = []
        with self._writing() as conn:
            now = time.time()
            for delivery, write in items:
                held = _held(delivery)
                ok = held is not None and conn.execute(_ACK, held).rowcount == 1
                if ok and write is not None:
                    key, value, ttl = write
                    check_key(key, value, ttl)
                    conn.execute(_PUT, (key, value, None if ttl is None else now + ttl))
                done.append(ok)
            self._sweep(conn, now)
        return done

    def release(
        self, delivery: Delivery, reason: str | None = None, detail: Detail | None = None
    ) -> bool:
        """Give a delivery back; with ``reason`` it counts as a failed delivery."""
        detail_json = check_detail(detail)
        held = _held(delivery)
        if held is None:
            return False
        if reason is not None and delivery.deliveries >= self.max_deliveries:
            return self._bury(held, reason, "released", delivery.deliveries, detail_json)
        if reason is None:
            sql = (
                "UPDATE messages SET state = 'ready', lease = NULL, lease_until = NULL,"
                " deliveries = deliveries - 1 WHERE id = :id AND lease = :lease"
            )
        else:
            held["event"] = _event_json("released", reason, delivery.deliveries, detail_json)
            sql = (
                "UPDATE messages SET state = 'ready', lease = NULL, lease_until = NULL,"
                f" history = {_HISTORY_ADD} WHERE id = :id AND lease = :lease"
            )
        with self._writing() as conn:
            return conn.execute(sql, held).rowcount == 1

    def retry(self, delivery: Delivery, due: float | None, body: bytes | None = None) -> bool:
        """Put a delivered message back at ``due``, with a new body if given."""
        if body is not None:
            check_bytes("body", body)
        check_due(due)
        held = _held(delivery)
        if held is None:
            return False
        now = time.time()
        when = now if due is None else due
        held.update(due=when, body=body, state="ready" if when <= now else "delayed")
        with self._writing() as conn:
            return (
                conn.execute(
                    "UPDATE messages SET state = :state, due = :due,"
                    " body = coalesce(:body, body), deliveries = 0, lease = NULL,"
                    " lease_until = NULL WHERE id = :id AND lease = :lease",
                    held,
                ).rowcount
                == 1
            )

    def extend(self, deliveries: Sequence[Delivery], lease: float) -> list[Delivery]:
        """Renew leases for ``lease`` seconds from now; return those still held."""
        check_lease(lease)
        kept: list[Delivery] = []
        with self._writing() as conn:
            until = time.time() + lease
            for delivery in deliveries:
                held = _held(delivery)
                if held is not None and conn.execute(_EXTEND, {**held, "until": until}).rowcount:
                    kept.append(delivery)
        return kept

    def dead_letter(self, delivery: Delivery, reason: str, detail: Detail | None = None) -> bool:
        """Move a delivered message to the dead-letter queue."""
        detail_json = check_detail(detail)
        held = _held(delivery)
        if held is None:
            return False
        return self._bury(held, reason, "dead_lettered", delivery.deliveries, detail_json)

    def _bury(
        self,
        held: dict[str, Any],
        reason: str,
        event: str,
        deliveries: int,
        detail_json: str | None = None,
    ) -> bool:
        """Move a leased message to the dead-letter queue if the lease still holds."""
        params = {
            **held,
            "reason": reason,
            "now": time.time(),
            "event": _event_json(event, reason, deliveries, detail_json),
        }
        with self._writing() as conn:
            if conn.execute(_BURY_HELD, params).rowcount != 1:
                return False
            conn.execute(_ACK, params)
            return True

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The most recent dead letters, newest first."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT id, queue, body, reason, deliveries, dead_at, history"
                " FROM dead_letters ORDER BY dead_at DESC, id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            DeadLetter(
                message_id=str(i),
                queue=q,
                body=b,
                reason=r,
                deliveries=n,
                dead_at=at,
                history=json.loads(h),
            )
            for i, q, b, r, n, at, h in rows
        ]

    def redrive(self, message_id: str) -> bool:
        """Put a dead letter back on its queue with a fresh delivery count."""
        try:
            params: dict[str, Any] = {"id": int(message_id)}
        except ValueError:
            return False
        params["now"] = time.time()
        params["event"] = json.dumps({"at": params["now"], "event": "redriven"})
        with self._writing() as conn:
            moved = conn.execute(
                "INSERT INTO messages (id, queue, body, priority, due, state, history)"
                f" SELECT id, queue, body, priority, :now, 'ready', {_HISTORY_ADD}"
                " FROM dead_letters WHERE id = :id",
                params,
            ).rowcount
            conn.execute("DELETE FROM dead_letters WHERE id = :id", params)
        return moved == 1

    def dead_letter_count(self) -> int:
        """How many messages the dead-letter queue holds."""
        with self._reading() as conn:
            count: int = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        return count

    def purge_dead_letters(self) -> int:
        """Delete every dead letter; return how many."""
        with self._writing() as conn:
            return conn.execute("DELETE FROM dead_letters").rowcount

    def size(self, queue: str) -> int:
        """Messages on ``queue`` that are not acknowledged (ready, delayed or leased)."""
        # One count per state, so that each is read through its partial index.
        with self._reading() as conn:
            count: int = conn.execute(
                "SELECT (SELECT count(*) FROM messages WHERE state = 'ready' AND queue = :q)"
                " + (SELECT count(*) FROM messages WHERE state = 'delayed' AND queue = :q)"
                " + (SELECT count(*) FROM messages WHERE state = 'leased' AND queue = :q)",
                {"q": queue},
            ).fetchone()[0]
        return count

    def purge(self, queue: str) -> int:
        """Delete the messages of ``queue`` that are not leased; return how many."""
        with self._writing() as conn:
            ready = conn.execute(
                "DELETE FROM messages WHERE state = 'ready' AND queue = ?", (queue,)
            ).rowcount
            delayed = conn.execute(
                "DELETE FROM messages WHERE state = 'delayed' AND queue = ?", (queue,)
            ).rowcount
        return ready + delayed

    # -- keys -----------------------------------------------------------------------------------

    def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``, expiring after ``ttl`` seconds if given."""
        check_key(key, value, ttl)
        with self._writing() as conn:
            now = time.time()
            conn.execute(_PUT, (key, value, None if ttl is None else now + ttl))
            self._sweep(conn, now)

    def get(self, key: str) -> bytes | None:
        """The value under ``key``, or ``None``."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT value FROM keys WHERE key = ? AND (expires IS NULL OR expires > ?)",
                (key, time.time()),
            ).fetchone()
        return None if row is None else bytes(row[0])

    def wait(self, key: str, timeout: float | None = None) -> bytes | None:
        """Block until ``key`` exists; reads it only after another connection committed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.0002
        version: tuple[int, int] | None = None
        while True:
            with self._reading() as conn:
                seen = (conn.execute("PRAGMA data_version").fetchone()[0], self._commits)
            if seen != version:
                version = seen
                value = self.get(key)
                if value is not None:
                    return value
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            time.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 2, self.poll_interval)

    def delete(self, key: str) -> None:
        """Remove ``key`` if present."""
        with self._writing() as conn:
            conn.execute("DELETE FROM keys WHERE key = ?", (key,))

    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Add ``amount`` to the integer under ``key`` (0 if absent); return the new value."""
        check_key(key, b"", ttl)
        with self._writing() as conn:
            now = time.time()
            row = conn.execute(
                "SELECT value, expires FROM keys"
                " WHERE key = ? AND (expires IS NULL OR expires > ?)",
                (key, now),
            ).fetchone()
            try:
                value = (0 if row is None else int(row[0])) + amount
            except ValueError:
                raise ValueError(f"key {key!r} does not hold an integer") from None
            # Like Redis INCR: without a ttl an existing expiry is kept.
            expires = row[1] if row is not None else None
            if ttl is not None:
                expires = now + ttl
            conn.execute(
                "INSERT OR REPLACE INTO keys (key, value, expires) VALUES (?, ?, ?)",
                (key, str(value).encode(), expires),
            )
            self._sweep(conn, now)
        return value

    # -- topics ---------------------------------------------------------------------------------

    def broadcast(self, topic: str, body: bytes) -> None:
        """Append ``body`` to ``topic`` for every current listener."""
        check_topic(topic, body)
        with self._writing() as conn:
            now = time.time()
            conn.execute(
                "INSERT INTO topics (topic, body, created) VALUES (?, ?, ?)", (topic, body, now)
            )
            self._sweep(conn, now)

    def listen(self, topics: Sequence[str]) -> Subscription:
        """Subscribe to ``topics`` from now on."""
        return _SQLiteSubscription(self, check_topics(topics))

    def _last_topic_row(self) -> int:
        """The id of the newest topic row; every row up to it is committed."""
        with self._reading() as conn:
            last: int | None = conn.execute("SELECT max(id) FROM topics").fetchone()[0]
        return last or 0

    def _sweep(self, conn: sqlite3.Connection, now: float) -> None:
        """Now and then, drop expired keys and topic rows past their count or age."""
        if now - self._swept < self.sweep_interval:
            return
        self._swept = now
        conn.execute("DELETE FROM keys WHERE expires <= ?", (now,))
        conn.execute(
            "DELETE FROM topics WHERE id <= (SELECT max(id) FROM topics) - ?", (self.topic_keep,)
        )
        # Rows are in creation order, so everything before the first young row is old.
        conn.execute(
            "DELETE FROM topics WHERE id < coalesce("
            " (SELECT id FROM topics WHERE created >= ? ORDER BY id LIMIT 1),"
            " (SELECT max(id) + 1 FROM topics))",
            (now - self.topic_max_age,),
        )


    # -- limits ---------------------------------------------------------------------------------

    def publish_unique(
        self, queue: str, body: bytes, key: str, *, due: float | None = None, priority: int = 0
    ) -> tuple[str, bool]:
        """Publish unless a live message holds ``key``: ``(message id, published)``."""
        check_message(queue, body, due, priority)
        check_name("key", key)
        with self._writing() as conn:
            holder = limits.unique_holder(conn, key)
            if holder is not None:
                return holder, False
            now = time.time()
            when = now if due is None else due
            cursor = conn.execute(
                "INSERT INTO messages (queue, body, priority, due, state) VALUES (?, ?, ?, ?, ?)",
                (queue, body, priority, when, "ready" if when <= now else "delayed"),
            )
            message_id = str(cursor.lastrowid)
            limits.hold_unique(conn, key, message_id)
        return message_id, True

    def defer(self, delivery: Delivery, due: float, waiting_on: str | None = None) -> bool:
        """Give a delivery back unstarted until ``due`` (or a slot of ``waiting_on`` frees)."""
        check_due(due)
        if waiting_on is not None:
            check_name("waiting_on", waiting_on)
        held = _held(delivery)
        if held is None:
            return False
        with self._writing() as conn:
            now = time.time()
            held.update(due=due, state="ready" if due <= now else "delayed")
            moved = conn.execute(
                "UPDATE messages SET state = :state, due = :due, deliveries = deliveries - 1,"
                " lease = NULL, lease_until = NULL WHERE id = :id AND lease = :lease",
                held,
            ).rowcount
            if moved and waiting_on is not None:
                limits.wait(conn, waiting_on, held["id"], now)
        return moved == 1

    def throttle(self, key: str, interval: float, claim: str) -> float | None:
        """None: go now; else the broker time of the turn reserved for ``claim``."""
        check_throttle(key, interval, claim)
        with self._writing() as conn:
            return limits.throttle(conn, key, float(interval), claim, time.time())

    def acquire_slot(self, key: str, holder: str, limit: int, ttl: float) -> float | None:
        """None: ``holder`` holds a slot of ``key``; else when the soonest slot runs out."""
        check_slot(key, holder, limit, ttl)
        with self._writing() as conn:
            return limits.acquire_slot(conn, key, holder, limit, ttl, time.time())

    def renew_slots(self, slots: Sequence[tuple[str, str]], ttl: float) -> list[bool]:
        """Renew ``(key, holder)`` slots for ``ttl`` seconds; whether each was still held."""
        check_lease(ttl)
        if not slots:
            return []
        with self._writing() as conn:
            now = time.time()
            return [limits.renew_slot(conn, key, holder, ttl, now) for key, holder in slots]

    def release_slots(self, slots: Sequence[tuple[str, str]]) -> None:
        """Free ``(key, holder)`` slots; wake one message waiting on each key."""
        if not slots:
            return
        with self._writing() as conn:
            for key, holder in slots:
                limits.release_slot(conn, key, holder)


class _SQLiteSubscription(Subscription):
    """Reads the topic rows appended after it opened, polling while it waits."""

    def __init__(self, transport: SQLiteTransport, topics: frozenset[str]) -> None:
        self._transport = transport
        self._topics = sorted(topics)
        self._last = transport._last_topic_row()
        self._closed = False

    def get(self, timeout: float | None = None) -> list[tuple[str, bytes]]:
        """Return ``(topic, body)`` pairs broadcast since the last call; wait up to ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.001
        while not self._closed:
            items = self._poll()
            if items:
                return items
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            time.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 2, 0.02)
        return []

    def _poll(self) -> list[tuple[str, bytes]]:
        """The rows of our topics between the last poll and now."""
        newest = self._transport._last_topic_row()
        if newest <= self._last:
            return []
        marks = ", ".join("?" * len(self._topics))
        with self._transport._reading() as conn:
            rows = conn.execute(
                f"SELECT topic, body FROM topics WHERE id > ? AND id <= ? AND topic IN ({marks})"
                " ORDER BY id",
                [self._last, newest, *self._topics],
            ).fetchall()
        self._last = newest
        return [(topic, bytes(body)) for topic, body in rows]

    def close(self) -> None:
        """Stop listening."""
        self._closed = True


def _event_json(event: str, reason: str, deliveries: int, detail_json: str | None = None) -> str:
    """One entry of a message's history, as JSON text for SQLite's json functions."""
    entry: dict[str, Any] = {
        "at": time.time(), "event": event, "reason": reason, "deliveries": deliveries
    }
    if detail_json is not None:
        entry["detail"] = json.loads(detail_json)
    return json.dumps(entry)
