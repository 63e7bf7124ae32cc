"""What the holder of a delivery does with it on the Redis engine: acknowledge (and store a
result), release, retry, extend. Each is one Lua script, conditional on the lease token; a
batch spanning several cluster slots is one script call per slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celeriac.transports.base import (
    Delivery,
    Detail,
    KeyWrite,
    check_bytes,
    check_detail,
    check_due,
    check_key,
    check_lease,
)
from celeriac.transports.redis.connection import RedisBase, ms, number, translated
from celeriac.transports.redis.direct import AnyScript

#: Seconds a completion on a cluster holds the lease while it writes results (``complete``).
COMPLETE_HOLD = 30.0


class Leases(RedisBase):
    """A delivery's message hash holds its lease token; ``P{q}:leased`` its expiry."""

    @translated
    def ack_many(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Acknowledge several deliveries with one script call."""
        return self.complete([(delivery, None) for delivery in deliveries])

    def ack(self, delivery: Delivery) -> bool:
        """Delete a delivered message; ``False`` if the lease was lost."""
        return self.ack_many([delivery])[0]

    @translated
    def complete(self, items: Sequence[tuple[Delivery, KeyWrite | None]]) -> list[bool]:
        """Acknowledge and store results in one script call; a lost lease stores nothing.

        On a cluster, where a result key is in a slot of its own, in three steps instead: the
        leases of the items with a result are held ``COMPLETE_HOLD`` seconds more (those
        lost are done with; a unique key is freed then), their results written, then every
        item acknowledged. A worker that dies in between leaves its task to run again, never
        acknowledged without its result; a result can be seen a moment before its message
        is gone, as with Celery's late acknowledgement.
        """
        for _, write in items:
            if write is not None:
                check_key(*write)
        if not items:
            return []
        if not self.is_cluster:
            return self._complete_slot(list(items))
        writing = [delivery for delivery, write in items if write is not None]
        held = {d.lease for d in self._renew(writing, COMPLETE_HOLD, self._script().hold)}
        for delivery, write in items:
            if write is not None and delivery.lease in held:
                key, value, ttl = write
                name = self._key(key)
                self._script().put([name], [value, "0" if ttl is None else ms(ttl), name])
        going = [write is None or delivery.lease in held for delivery, write in items]
        done = iter(self._acknowledge([d for (d, _), go in zip(items, going, strict=True) if go]))
        return [next(done) if go else False for go in going]

    def _acknowledge(self, deliveries: list[Delivery]) -> list[bool]:
        """Acknowledge without writing, one script call per slot."""
        done = [False] * len(deliveries)
        for group in self._slot_groups([d.queue for d in deliveries]) if deliveries else []:
            found = self._complete_slot([(deliveries[i], None) for i in group])
            for i, ok in zip(group, found, strict=True):
                done[i] = ok
        return done

    def _complete_slot(self, items: list[tuple[Delivery, KeyWrite | None]]) -> list[bool]:
        """The complete script over ``items`` (of one slot, or all on one server)."""
        keys: list[str] = []
        args: list[Any] = []
        bases: dict[str, str] = {}  # a batch is mostly of one queue, and of one ttl
        key_prefix, last_ttl = self._key(""), None
        ttl_ms: str | int = "0"
        for delivery, write in items:
            base = bases.get(delivery.queue)
            if base is None:
                base = bases[delivery.queue] = self._base(delivery.queue)
            n = number(delivery.message_id)
            if write is None:  # the third key: one of the same slot, never written
                keys += [base + "leased", base + "m:" + n, base + "leased"]
                args += [n, delivery.lease, "0", "", "0", ""]
                continue
            key, value, ttl = write
            if ttl != last_ttl:
                last_ttl, ttl_ms = ttl, "0" if ttl is None else ms(ttl)
            name = key_prefix + key
            keys += [base + "leased", base + "m:" + n, name]
            args += [n, delivery.lease, "1", value, ttl_ms, name]
        return [bool(done) for done in self._script().complete(keys, args)]

    @translated
    def release(
        self, delivery: Delivery, reason: str | None = None, detail: Detail | None = None
    ) -> bool:
        """Give a delivery back; with ``reason`` it counts as a failed delivery."""
        detail_json = check_detail(detail)
        base, n = self._base(delivery.queue), number(delivery.message_id)
        keys = [base + "leased", base + "ready", base + "wake", base + "m:" + n, base + "dead"]
        args: list[Any] = [n, delivery.lease, "0" if reason is None else "1", reason or ""]
        args += [self.max_deliveries, delivery.queue, base + "dead:" + n, detail_json or ""]
        return bool(self._script().release(keys, args))

    @translated
    def retry(self, delivery: Delivery, due: float | None, body: bytes | None = None) -> bool:
        """Put a delivered message back at ``due``, with a new body if given."""
        if body is not None:
            check_bytes("body", body)
        check_due(due)
        base, n = self._base(delivery.queue), number(delivery.message_id)
        keys = [base + "leased", base + "ready", base + "delayed", base + "wake", base + "m:" + n]
        args: list[Any] = [n, delivery.lease]
        args += ["" if due is None else repr(due * 1000), "0" if body is None else "1", body or b""]
        return bool(self._script().retry(keys, args))

    @translated
    def extend(self, deliveries: Sequence[Delivery], lease: float) -> list[Delivery]:
        """Renew leases for ``lease`` seconds from now; return those still held."""
        check_lease(lease)
        return self._renew(list(deliveries), lease, self._script().extend)

    def _renew(self, batch: list[Delivery], lease: float, script: AnyScript) -> list[Delivery]:
        """Run ``script`` (EXTEND, or HOLD) over ``batch``, one call per slot: those held."""
        held: list[int] = []
        for group in self._slot_groups([d.queue for d in batch]) if batch else []:
            keys: list[str] = []
            args: list[Any] = [ms(lease)]
            for delivery in (batch[i] for i in group):
                base, n = self._base(delivery.queue), number(delivery.message_id)
                keys += [base + "leased", base + "m:" + n]
                args += [n, delivery.lease]
            found = script(keys, args)
            held += [i for i, ok in zip(group, found, strict=True) if ok]
        return [batch[i] for i in sorted(held)]
