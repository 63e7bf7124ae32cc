"""The embedded broker: one SQLite file shared by the producers and workers of one host.

``sqlite:///relative/path.db`` (relative to the working directory when the transport is made)
or ``sqlite:////absolute/path.db``. The file and its tables are created on first use.

Rate turns, concurrency slots, waiting messages and unique keys have tables of their own
(``sqlite_limits.py``).

Options (``options`` dict): ``max_deliveries`` (see the contract), ``reclaim_interval``
(seconds between sweeps of expired leases, default 0.5), ``busy_timeout`` (seconds a writer
waits for the lock, default 10), ``sweep_interval`` (seconds between sweeps of expired keys
and old topic rows, default 5), ``topic_keep`` (topic rows kept, default 2,000) and
``topic_max_age`` (seconds a topic row is kept, default 300) and ``poll_interval`` (how
often a waiting fetch or ``wait`` looks for other processes' commits, default 0.002 s).

The parts, one a module: ``connection`` (the file, WAL, transactions and fork safety),
``schema`` (the tables), ``queue`` (the message states, publish, fetch and leases),
``dead_letters``, ``keys`` (and ``wait``) and ``topics``; this module puts them together
with the limits.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from celeriac.transports import sqlite_limits as limits
from celeriac.transports.base import (
    Delivery,
    check_due,
    check_lease,
    check_message,
    check_name,
    check_slot,
    check_throttle,
)
from celeriac.transports.sqlite.keys import Keys
from celeriac.transports.sqlite.queue import Queues
from celeriac.transports.sqlite.queue import _claim_sql as _claim_sql
from celeriac.transports.sqlite.schema import held_row
from celeriac.transports.sqlite.topics import Topics

__all__ = ["SQLiteTransport"]


class SQLiteTransport(Queues, Keys, Topics):
    """Queues, keys and topics in one SQLite file, for the processes of one host."""

    schemes = ("sqlite",)

    # -- limits (their tables and statements: sqlite_limits.py) ---------------------------------

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
        held = held_row(delivery)
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
