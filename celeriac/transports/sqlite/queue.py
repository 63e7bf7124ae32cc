"""The queues of the SQLite engine: publish, fetch, and what a holder does with a delivery.

A message row is in one of three states, each with its own partial index so that every hot
query touches only the rows it needs, even with 100k messages queued:

- ``ready``: deliverable now; claimed by one ``UPDATE ... RETURNING`` in priority, id order;
- ``delayed``: due later; promoted to ready by the next fetch after its due time;
- ``leased``: held by a consumer until ``lease_until``; taken back by a later fetch when the
  lease runs out (at most once per ``reclaim_interval`` per transport object).
"""

from __future__ import annotations

import functools
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from typing import Any

from celeriac.transports.base import (
    DEFAULT_LEASE,
    Delivery,
    Detail,
    KeyWrite,
    check_bytes,
    check_detail,
    check_due,
    check_fetch,
    check_key,
    check_lease,
    check_messages,
    make_delivery,
)
from celeriac.transports.sqlite.connection import ROWS_PER_STATEMENT
from celeriac.transports.sqlite.dead_letters import DeadLetters
from celeriac.transports.sqlite.schema import HISTORY_ADD, PUT, event_json, held_row

_EXPIRED_EVENT = (
    "json_insert(coalesce(history, '[]'), '$[#]',"
    " json_object('at', :now, 'event', 'lease_expired', 'deliveries', deliveries))"
)
_BURY_EXPIRED = """
    WITH expired AS MATERIALIZED (
        SELECT id, lease, deliveries FROM messages
        WHERE state = 'leased' AND lease_until <= :now AND deliveries >= :max)
    INSERT INTO burials (message, lease, reason, dead_at, event)
    SELECT id, lease, 'lease_expired', :now,
        json_object('at', :now, 'event', 'lease_expired', 'deliveries', deliveries)
    FROM expired"""
_FREE_EXPIRED = f"""
    UPDATE messages SET state = 'ready', lease = NULL, lease_until = NULL,
        history = {_EXPIRED_EVENT}
    WHERE state = 'leased' AND lease_until <= :now"""
#: What a claim leased, read after its commit: its expiry, and leases made of its token
#: and the message id (each delivery's lease is its own: holders keep them in sets).
_CLAIMED = """
    SELECT id, queue, body, priority, deliveries, lease FROM messages
    WHERE state = 'leased' AND lease_until = ? AND lease = ? || id"""
_READY_ONE_QUEUE = """SELECT * FROM (
    SELECT id, priority FROM messages WHERE state = 'ready' AND queue = ?
    ORDER BY priority DESC, id LIMIT ?)"""


@functools.lru_cache(maxsize=32)
def _claim_sql(queue_count: int) -> str:
    """The statement that leases the most urgent ready messages of ``queue_count`` queues.

    Each queue is read through its own index range and the results merged, because
    ``queue IN (...) ORDER BY`` would sort every ready message of those queues.
    """
    per_queue = " UNION ALL ".join([_READY_ONE_QUEUE] * queue_count)
    return f"""
        UPDATE messages
        SET state = 'leased', lease = ? || id, lease_until = ?, deliveries = deliveries + 1
        WHERE id IN (SELECT id FROM ({per_queue}) ORDER BY priority DESC, id LIMIT ?)"""


@functools.lru_cache(maxsize=32)
def _peek_sql(queue_count: int) -> str:
    """The query that tells whether any of ``queue_count`` queues has a ready message."""
    marks = ", ".join("?" * queue_count)
    return f"SELECT EXISTS (SELECT 1 FROM messages WHERE state = 'ready' AND queue IN ({marks}))"


class Queues(DeadLetters):
    """Message rows that move between ready, delayed and leased (see the module docstring)."""

    def publish(
        self, queue: str, body: bytes, *, due: float | None = None, priority: int = 0
    ) -> str:
        """Put ``body`` on ``queue``; return the message id."""
        return self.publish_many([(queue, body, due, priority)])[0]

    def publish_many(self, items: Iterable[tuple[str, bytes, float | None, int]]) -> list[str]:
        """Publish ``(queue, body, due, priority)`` items, all or none: one statement (up to
        ``ROWS_PER_STATEMENT``) or one transaction."""
        batch = check_messages(items)
        if not batch:
            return []
        if len(batch) > ROWS_PER_STATEMENT:
            with self._writing() as conn:
                return _insert(conn, batch, time.time())
        now = time.time()
        rows = [_row(message, now) for message in batch]
        marks = ", ".join(["(?, ?, ?, ?, ?)"] * len(rows))
        last = self._write_one(
            f"INSERT INTO messages (queue, body, priority, due, state) VALUES {marks}",
            [v for row in rows for v in row],
        ).lastrowid
        # AUTOINCREMENT gives the rows of one statement consecutive ids.
        assert last is not None
        return [str(id_) for id_ in range(last - len(rows) + 1, last + 1)]

    def publish_once(
        self,
        key: str,
        items: Sequence[tuple[str, bytes, float | None, int]],
        ttl: float | None = None,
    ) -> list[str] | None:
        """Publish ``items`` and set ``key`` (for ``ttl`` seconds) unless ``key`` exists."""
        check_key(key, b"1", ttl)
        batch = check_messages(items)
        with self._writing() as conn:
            now = time.time()
            taken = conn.execute(
                "SELECT 1 FROM keys WHERE key = ? AND (expires IS NULL OR expires > ?)",
                (key, now),
            ).fetchone()
            if taken:
                return None
            conn.execute(PUT, (key, b"1", None if ttl is None else now + ttl))
            return _insert(conn, batch, now)

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
        """One fetch attempt: deliveries, when to try again, and the database version seen.

        Every write is a statement of its own (see ``_write_one``): the claim gives the
        messages it leases one new expiry and a new token in their leases, and a read after
        its commit finds them. No one else can touch them in between: only the holder of a
        lease can, and these have just begun.
        """
        now = time.time()
        with self._reading() as conn:
            # Read before the claim, so that a commit made meanwhile shows as a change.
            seen = conn.execute("PRAGMA data_version").fetchone()[0]
        if now - self._reclaimed >= self.reclaim_interval:
            self._reclaim(now)
            self._reclaimed = now
        self._write_one(
            "UPDATE messages SET state = 'ready' WHERE state = 'delayed' AND due <= ?", (now,)
        )
        token, until = os.urandom(16).hex(), now + lease
        params: list[Any] = [token, until]
        for queue in queues:
            params += [queue, limit]
        claimed = self._write_one(_claim_sql(len(queues)), [*params, limit]).rowcount
        with self._reading() as conn:
            rows = conn.execute(_CLAIMED, (until, token)).fetchall() if claimed else []
            wake_at = None if rows else self._next_timer(conn)
        rows.sort(key=lambda row: (-row[3], row[0]))
        deliveries = [make_delivery(q, b, str(i), lz, n, p) for i, q, b, p, n, lz in rows]
        return deliveries, wake_at, (seen, self._commits)

    def _reclaim(self, now: float) -> None:
        """Take back expired leases: dead-letter those out of deliveries, free the rest."""
        params = {"now": now, "max": self.max_deliveries}
        # The trigger buries every row: the statement read their leases itself.
        self._write_one(_BURY_EXPIRED, params)
        self._write_one(_FREE_EXPIRED, params)

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
        """Acknowledge several deliveries, each at once (see ``complete``)."""
        return self.complete([(delivery, None) for delivery in deliveries])

    def complete(self, items: Sequence[tuple[Delivery, KeyWrite | None]]) -> list[bool]:
        """Acknowledge and store results, each item at once; a lost lease stores nothing.

        One INSERT into this connection's ``completions`` table does it all (its trigger
        ends each delivery whose lease holds); the rows left behind are the refused items.
        """
        if not items:
            return []
        now = time.time()
        rows: list[tuple[Any, ...]] = []
        for item, (delivery, write) in enumerate(items):
            held = held_row(delivery)
            if held is None:
                continue
            key = value = expires = None
            if write is not None:
                key, value, ttl = write
                check_key(key, value, ttl)
                expires = None if ttl is None else now + ttl
            rows.append((item, held["id"], held["lease"], key, value, expires))
        refused = set(range(len(items))) - {row[0] for row in rows}
        refused |= self._through("completions", rows)
        self._sweep(now)
        return [item not in refused for item in range(len(items))]

    def release(
        self, delivery: Delivery, reason: str | None = None, detail: Detail | None = None
    ) -> bool:
        """Give a delivery back; with ``reason`` it counts as a failed delivery."""
        detail_json = check_detail(detail)
        held = held_row(delivery)
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
            held["event"] = event_json("released", reason, delivery.deliveries, detail_json)
            sql = (
                "UPDATE messages SET state = 'ready', lease = NULL, lease_until = NULL,"
                f" history = {HISTORY_ADD} WHERE id = :id AND lease = :lease"
            )
        return self._write_one(sql, held).rowcount == 1

    def retry(self, delivery: Delivery, due: float | None, body: bytes | None = None) -> bool:
        """Put a delivered message back at ``due``, with a new body if given."""
        if body is not None:
            check_bytes("body", body)
        check_due(due)
        held = held_row(delivery)
        if held is None:
            return False
        now = time.time()
        when = now if due is None else due
        held.update(due=when, body=body, state="ready" if when <= now else "delayed")
        moved = self._write_one(
            "UPDATE messages SET state = :state, due = :due, body = coalesce(:body, body),"
            " deliveries = 0, lease = NULL, lease_until = NULL WHERE id = :id AND lease = :lease",
            held,
        ).rowcount
        return moved == 1

    def extend(self, deliveries: Sequence[Delivery], lease: float) -> list[Delivery]:
        """Renew leases for ``lease`` seconds from now; return those still held.

        One INSERT into this connection's ``renewals`` table per chunk (see ``complete``):
        the lock is never held while Python runs, so that a task of this process holding
        the GIL cannot keep other workers from renewing theirs.
        """
        check_lease(lease)
        until = time.time() + lease
        rows: list[tuple[Any, ...]] = []
        for item, delivery in enumerate(deliveries):
            held = held_row(delivery)
            if held is not None:
                rows.append((item, held["id"], held["lease"], until))
        refused = set(range(len(deliveries))) - {row[0] for row in rows}
        refused |= self._through("renewals", rows)
        return [d for item, d in enumerate(deliveries) if item not in refused]

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


def _insert(
    conn: sqlite3.Connection, batch: list[tuple[str, bytes, float | None, int]], now: float
) -> list[str]:
    """Insert checked messages (in the caller's transaction); their ids."""
    ids: list[str] = []
    for message in batch:
        cursor = conn.execute(
            "INSERT INTO messages (queue, body, priority, due, state) VALUES (?, ?, ?, ?, ?)",
            _row(message, now),
        )
        ids.append(str(cursor.lastrowid))
    return ids


def _row(
    message: tuple[str, bytes, float | None, int], now: float
) -> tuple[str, bytes, int, float, str]:
    """The column values of a checked message: queue, body, priority, due and state."""
    queue, body, due, priority = message
    when = now if due is None else due
    return queue, body, priority, when, "ready" if when <= now else "delayed"
