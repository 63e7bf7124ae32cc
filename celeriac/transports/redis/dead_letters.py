"""The dead-letter queue of the Redis engine: one zset of ids by time, one hash per letter."""

from __future__ import annotations

import json
from typing import Any, cast

from celeriac.transports.base import DeadLetter, Delivery, Detail, check_detail
from celeriac.transports.redis.connection import RedisBase, translated
from celeriac.transports.redis.queue import PURGE_BATCH


class DeadLetters(RedisBase):
    """``P dead`` orders the letters by the time they died; ``P dead:<id>`` holds each."""

    @translated
    def dead_letter(self, delivery: Delivery, reason: str, detail: Detail | None = None) -> bool:
        """Move a delivered message to the dead-letter queue."""
        detail_json = check_detail(detail)
        base = self._base(delivery.queue)
        keys = [base + "leased", base + "m:" + delivery.message_id, self.prefix + "dead"]
        args = [delivery.message_id, delivery.lease, reason, delivery.queue, self.prefix + "dead:"]
        return bool(self._script().dead_letter(keys, [*args, detail_json or ""]))

    @translated
    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The most recent dead letters, newest first."""
        client = self._client()
        newest = cast(list[bytes], client.zrevrange(self.prefix + "dead", 0, limit - 1))
        ids = [message_id.decode() for message_id in newest]
        fields = ("queue", "body", "reason", "deliveries", "dead_at", "history")
        with client.pipeline(transaction=False) as pipe:
            for message_id in ids:
                pipe.hmget(self.prefix + "dead:" + message_id, fields)
            rows = pipe.execute()
        letters = [
            DeadLetter(
                message_id=message_id,
                queue=queue.decode(),
                body=body,
                reason=reason.decode(),
                deliveries=int(deliveries),
                dead_at=float(dead_at),
                history=json.loads(history or b"[]"),
            )
            for message_id, (queue, body, reason, deliveries, dead_at, history) in zip(
                ids, rows, strict=True
            )
            if queue is not None  # redriven between the two reads
        ]
        # Letters buried by one script share a time: the newer id comes first, as elsewhere.
        return sorted(letters, key=lambda d: (d.dead_at, int(d.message_id)), reverse=True)

    @translated
    def redrive(self, message_id: str) -> bool:
        """Put a dead letter back on its queue with a fresh delivery count."""
        letter = self.prefix + "dead:" + message_id
        queue = cast(bytes | None, self._client().hget(letter, "queue"))
        if queue is None:
            return False
        base = self._base(queue.decode())
        keys = [self.prefix + "dead", letter, base + "ready", base + "wake"]
        keys.append(base + "m:" + message_id)
        return bool(self._script().redrive(keys, [message_id]))

    @translated
    def dead_letter_count(self) -> int:
        """How many messages the dead-letter queue holds."""
        return int(self._client().zcard(self.prefix + "dead"))

    @translated
    def purge_dead_letters(self) -> int:
        """Delete every dead letter, ``PURGE_BATCH`` per script call; return how many."""
        keys: list[Any] = [self.prefix + "dead"]
        args: list[Any] = [self.prefix + "dead:", PURGE_BATCH]
        total = 0
        while removed := int(self._script().purge_dead(keys, args)):
            total += removed
        return total
