"""The topics of the SQLite engine: broadcasts are rows, and listeners poll for new ones."""

from __future__ import annotations

import time
from collections.abc import Sequence

from celeriac.transports.base import Subscription, check_topic, check_topics
from celeriac.transports.sqlite.connection import SQLiteBase


class Topics(SQLiteBase):
    """Broadcasts appended to one table; old rows go in ``_sweep``, by count and by age."""

    def broadcast(self, topic: str, body: bytes) -> None:
        """Append ``body`` to ``topic`` for every current listener."""
        check_topic(topic, body)
        now = time.time()
        self._write_one(
            "INSERT INTO topics (topic, body, created) VALUES (?, ?, ?)", (topic, body, now)
        )
        self._sweep(now)

    def listen(self, topics: Sequence[str]) -> Subscription:
        """Subscribe to ``topics`` from now on."""
        return _SQLiteSubscription(self, check_topics(topics))

    def _last_topic_row(self) -> int:
        """The id of the newest topic row; every row up to it is committed."""
        with self._reading() as conn:
            last: int | None = conn.execute("SELECT max(id) FROM topics").fetchone()[0]
        return last or 0


class _SQLiteSubscription(Subscription):
    """Reads the topic rows appended after it opened, polling while it waits."""

    def __init__(self, transport: Topics, topics: frozenset[str]) -> None:
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
