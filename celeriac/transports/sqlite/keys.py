"""The keys of the SQLite engine (results, counters) and ``wait``, which polls for commits."""

from __future__ import annotations

import time

from celeriac.transports.base import check_key
from celeriac.transports.sqlite.connection import SQLiteBase
from celeriac.transports.sqlite.schema import PUT


class Keys(SQLiteBase):
    """Values under keys, each with an optional expiry; expired rows go in ``_sweep``."""

    def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``, expiring after ``ttl`` seconds if given."""
        check_key(key, value, ttl)
        now = time.time()
        self._write_one(PUT, (key, value, None if ttl is None else now + ttl))
        self._sweep(now)

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
        self._write_one("DELETE FROM keys WHERE key = ?", (key,))

    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Add ``amount`` to the integer under ``key`` (0 if absent); return the new value."""
        check_key(key, b"", ttl)
        # A read and a write in one transaction: the new value must be the one this call
        # made (a chord's counter), and a statement that returns rows keeps its transaction
        # open while Python reads them anyway.
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
        self._sweep(now)
        return value
