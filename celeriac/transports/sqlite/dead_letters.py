"""The dead-letter queue of the SQLite engine: burying a leased message, listing, redriving."""

from __future__ import annotations

import json
import time
from typing import Any

from celeriac.transports.base import DeadLetter, Delivery, Detail, check_detail
from celeriac.transports.sqlite.connection import SQLiteBase
from celeriac.transports.sqlite.schema import HISTORY_ADD, event_json, held_row


class DeadLetters(SQLiteBase):
    """Dead letters in their own table, each with the history of its failed deliveries."""

    def dead_letter(self, delivery: Delivery, reason: str, detail: Detail | None = None) -> bool:
        """Move a delivered message to the dead-letter queue."""
        detail_json = check_detail(detail)
        held = held_row(delivery)
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
        entry = event_json(event, reason, deliveries, detail_json)
        row = (held["id"], held["lease"], reason, time.time(), entry)
        # One statement (see ``_through``): the trigger of ``burials`` moves the message if
        # the lease holds, and leaves the row behind if not.
        return not self._through("burials", [row])

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
                f" SELECT id, queue, body, priority, :now, 'ready', {HISTORY_ADD}"
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
