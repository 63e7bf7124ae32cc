"""The dead-letter queue of the Redis engine: per queue, a zset of numbers by time and a hash
per letter, in the queue's slot; ``P queues`` names the queues to look in (no KEYS)."""

from __future__ import annotations

import heapq
import json
from typing import Any, cast

from celeriac.transports.base import DeadLetter, Delivery, Detail, check_detail
from celeriac.transports.redis.connection import RedisBase, message_id, number, translated
from celeriac.transports.redis.queue import PURGE_BATCH


class DeadLetters(RedisBase):
    """``P{q}:dead`` orders a queue's letters by the time they died; ``P{q}:dead:<n>`` holds
    each. The letters of every queue ever fetched from (``P queues``) make the queue."""

    @translated
    def dead_letter(self, delivery: Delivery, reason: str, detail: Detail | None = None) -> bool:
        """Move a delivered message to the dead-letter queue."""
        detail_json = check_detail(detail)
        base, n = self._base(delivery.queue), number(delivery.message_id)
        keys = [base + "leased", base + "m:" + n, base + "dead"]
        args = [n, delivery.lease, reason, delivery.queue, base + "dead:" + n, detail_json or ""]
        return bool(self._script().dead_letter(keys, args))

    @translated
    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The most recent dead letters, newest first."""
        client = self._client()
        queues = self._dead_queues()
        with client.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.zrevrange(self._base(queue) + "dead", 0, limit - 1, withscores=True)
            heads: list[list[tuple[bytes, float]]] = pipe.execute()
        # Letters buried by one script share a time: the greater number comes first, as
        # elsewhere.
        found = zip(queues, heads, strict=True)
        newest = heapq.nlargest(
            limit, ((dead_at, int(n), queue) for queue, head in found for n, dead_at in head)
        )
        fields = ("queue", "body", "reason", "deliveries", "dead_at", "history")
        with client.pipeline(transaction=False) as pipe:
            for _, n, queue in newest:
                pipe.hmget(f"{self._base(queue)}dead:{n}", fields)
            rows = pipe.execute()
        return [
            DeadLetter(
                message_id=message_id(queue, n),
                queue=queue,
                body=body,
                reason=reason.decode(),
                deliveries=int(deliveries),
                dead_at=float(dead_at),
                history=json.loads(history or b"[]"),
            )
            for (_, n, queue), (_, body, reason, deliveries, dead_at, history) in zip(
                newest, rows, strict=True
            )
            if body is not None  # redriven between the two reads
        ]

    @translated
    def redrive(self, message_id: str) -> bool:
        """Put a dead letter back on its queue with a fresh delivery count."""
        queue, _, n = message_id.rpartition(":")
        if not queue or not number(message_id):
            return False
        base = self._base(queue)
        keys = [base + "dead", base + "dead:" + n, base + "ready", base + "wake", base + "m:" + n]
        return bool(self._script().redrive(keys, [n]))

    @translated
    def dead_letter_count(self) -> int:
        """How many messages the dead-letter queue holds."""
        client = self._client()
        with client.pipeline(transaction=False) as pipe:
            for queue in self._dead_queues():
                pipe.zcard(self._base(queue) + "dead")
            return sum(pipe.execute())

    @translated
    def purge_dead_letters(self) -> int:
        """Delete every dead letter, ``PURGE_BATCH`` per script call; return how many."""
        total = 0
        for queue in self._dead_queues():
            base = self._base(queue)
            args: list[Any] = [base + "dead:", PURGE_BATCH]
            while removed := int(self._script().purge_dead([base + "dead"], args)):
                total += removed
        return total

    def _dead_queues(self) -> list[str]:
        """The queues whose dead letters make the dead-letter queue: those fetched from."""
        members = cast(set[bytes], self._client().smembers(self._queues_key()))
        return sorted(member.decode() for member in members)
