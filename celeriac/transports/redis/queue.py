"""The queues of the Redis engine: publish and fetch.

Every state change of a message is one Lua script, conditional on the lease token where the
contract says so (what a holder does with a delivery: ``leases.py``). ``fetch`` runs one script
that moves due delayed messages to ready, takes back expired leases (or dead-letters them at
``max_deliveries``), and leases the most urgent ready messages, all judged by ``TIME`` on the
server. With nothing to hand out it blocks on the queues' wake lists (``wake.py``), bounded by
the next due time or lease expiry the script reported. A fetcher that leaves work behind
pushes a token again, so idle fetchers wake one after another instead of all at once.

On Redis Cluster a script touches one slot, so what spans queues in several slots goes in
steps: a batch is published per slot, and a fetch claims from one slot after another
(starting with a different one each time).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from celeriac.transports.base import (
    DEFAULT_LEASE,
    Delivery,
    check_bytes,
    check_fetch,
    check_key,
    check_message,
    check_messages,
    check_name,
    make_delivery,
)
from celeriac.transports.redis.connection import (
    REDIS_ERRORS,
    broker_error,
    message_id,
    ms,
    translated,
)
from celeriac.transports.redis.wake import Call, Wake

#: Messages per publish script call; a bulk publish sends its chunks in one transaction.
PUBLISH_CHUNK = 1000
#: Delayed messages promoted, and expired leases taken back, per queue per fetch.
TIMER_BATCH = 1000
#: Messages deleted per purge script call, so that purging a huge queue never stalls Redis.
PURGE_BATCH = 5000
#: Seconds between a process's notes that it fetches from a queue (``P queues``).
REGISTER_EVERY = 60.0

Item = tuple[str, bytes, float | None, int]


class Queues(Wake):
    """Per queue, zsets of ready, delayed and leased ids, a hash per message, a wake list."""

    @translated
    def publish(
        self, queue: str, body: bytes, *, due: float | None = None, priority: int = 0
    ) -> str:
        """Put ``body`` on ``queue``; return the message id."""
        check_message(queue, body, due, priority)
        keys, args = self._publish_args([(queue, body, due, priority)])
        [n] = self._script().publish(keys, args)
        return message_id(queue, n)

    def publisher(self, queue: str, priority: int = 0) -> Callable[[bytes], str]:
        """``publish`` to one queue at one priority with its keys and checks made ahead: a
        call is the script's EVALSHA and little else."""
        if self.is_cluster:
            return super().publisher(queue, priority)
        check_message(queue, b"", None, priority)
        base = self._base(queue)
        keys = (base + "ids", base + "ready", base + "delayed", base + "wake")

        def publish(body: bytes) -> str:
            if type(body) is not bytes:
                check_bytes("body", body)
            try:
                [n] = self._script().publish(keys, (base, body, priority, ""))
            except REDIS_ERRORS as exc:
                raise broker_error(self.location, exc) from exc
            return message_id(queue, n)

        return publish

    @translated
    def publish_many(self, items: Iterable[Item]) -> list[str]:
        """Publish ``(queue, body, due, priority)`` items, all or none (on a cluster: all or
        none per slot).

        One script call per ``PUBLISH_CHUNK`` items; several calls go as one transaction.
        """
        batch = check_messages(items)
        ids = [""] * len(batch)
        for group in self._slot_groups([queue for queue, *_ in batch]) if batch else []:
            numbers = self._publish_slot([batch[i] for i in group])
            for i, n in zip(group, numbers, strict=True):
                ids[i] = message_id(batch[i][0], n)
        return ids

    def _publish_slot(self, batch: list[Item]) -> list[Any]:
        """Publish items of one slot (of any queues on one server); their numbers."""
        chunks = [batch[i : i + PUBLISH_CHUNK] for i in range(len(batch))[::PUBLISH_CHUNK]]
        scripts = self._script()
        if len(chunks) == 1:
            return list(scripts.publish(*self._publish_args(chunks[0])))
        if self.is_cluster:  # redis-py's cluster pipelines do not load scripts: one by one
            return [n for chunk in chunks for n in scripts.publish(*self._publish_args(chunk))]
        with self._client().pipeline(transaction=True) as pipe:
            for chunk in chunks:
                keys, args = self._publish_args(chunk)
                scripts.publish(keys, args, client=pipe)
            return [n for numbers in pipe.execute() for n in numbers]

    @translated
    def publish_once(
        self,
        key: str,
        items: Sequence[tuple[str, bytes, float | None, int]],
        ttl: float | None = None,
    ) -> list[str] | None:
        """Publish ``items`` and set ``key`` (for ``ttl`` seconds) unless ``key`` exists."""
        check_key(key, b"1", ttl)
        batch = check_messages(items)
        ttl_ms = "0" if ttl is None else ms(ttl)
        if self.is_cluster:
            return self._publish_once_in_steps(key, batch, ttl_ms)
        keys, args = self._publish_args(batch)
        name = self._key(key)
        numbers = self._script().publish_once([name, *keys], [ttl_ms, name, *args])
        if numbers is None:
            return None
        return [message_id(queue, n) for (queue, *_), n in zip(batch, numbers, strict=True)]

    def _publish_once_in_steps(self, key: str, batch: list[Item], ttl_ms: Any) -> list[str] | None:
        """``publish_once`` on a cluster, where the key and the queues are in other slots.

        The once step happens in the slot of the first item's queue: a guard key there is set
        in the same script that publishes the items of that slot, so of several callers one
        publishes. The key itself is written after (it may be missing for a moment, or for
        good if the caller dies in between; the guard still stops a second publish). Items
        in other slots follow, one slot at a time.
        """
        name, scripts = self._key(key), self._script()
        if self._client().exists(name):
            return None
        if not batch:
            done = self._client().set(name, b"1", px=None if ttl_ms == "0" else ttl_ms, nx=True)
            if done:
                self._client().publish(name, b"")
            return [] if done else None
        first, *others = self._slot_groups([queue for queue, *_ in batch])
        guard = self._base(batch[0][0]) + "once:" + key
        keys, args = self._publish_args([batch[i] for i in first])
        numbers = scripts.publish_once([guard, *keys], [ttl_ms, name, *args])
        if numbers is None:
            return None
        ids = [""] * len(batch)
        for i, n in zip(first, numbers, strict=True):
            ids[i] = message_id(batch[i][0], n)
        for group in others:
            for i, n in zip(group, self._publish_slot([batch[i] for i in group]), strict=True):
                ids[i] = message_id(batch[i][0], n)
        scripts.put([name], [b"1", ttl_ms, name])
        return ids

    def _publish_args(self, chunk: list[Item]) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of the publish script for ``chunk``."""
        keys: list[str] = []
        args: list[Any] = []
        names: dict[str, tuple[str, list[str]]] = {}  # queue -> its base and its four keys
        for queue, body, due, priority in chunk:
            found = names.get(queue)
            if found is None:
                base = self._base(queue)
                found = names[queue] = (base, [base + "ids", base + "ready", base + "delayed",
                                               base + "wake"])  # fmt: skip
            keys += found[1]
            args += [found[0], body, priority, "" if due is None else repr(due * 1000)]
        return keys, args

    @translated
    def fetch(
        self,
        queues: Sequence[str],
        limit: int = 1,
        timeout: float = 0.0,
        lease: float = DEFAULT_LEASE,
    ) -> list[Delivery]:
        """Lease up to ``limit`` deliverable messages; wait up to ``timeout`` for the first."""
        names = check_fetch(queues, limit, timeout, lease)
        self._register(names)
        deadline = time.monotonic() + timeout
        deliveries, wait = self._claim(names, limit, lease)
        while True:
            left = deadline - time.monotonic()
            if deliveries or left <= 0:
                return deliveries
            if wait is not None:
                left = min(left, wait)
            # The next claim goes with the wait, and runs as soon as a token wakes it.
            then = self._claim_call(names, limit, lease)
            reply = self._block(names, min(left, self.socket_timeout), then)
            if reply is None:
                deliveries, wait = self._claim(names, limit, lease)
            else:
                deliveries, wait = _claimed(names, reply)

    def _register(self, queues: list[str]) -> None:
        """Note in ``P queues`` that ``queues`` are used, so that their dead letters are found.

        Once a minute per queue and process: a Redis that lost its data learns them again.
        """
        now = time.monotonic()
        due = [
            q for q in queues if self._registered.get(q, -REGISTER_EVERY) <= now - REGISTER_EVERY
        ]
        if due:
            self._client().sadd(self._queues_key(), *due)
            self._registered.update(dict.fromkeys(due, now))

    def _claim(
        self, queues: list[str], limit: int, lease: float
    ) -> tuple[list[Delivery], float | None]:
        """One claim: the deliveries, and else the seconds until a timer may change that.

        Queues in several cluster slots are claimed from one slot after another, until
        ``limit`` is reached, starting with the next slot each time.
        """
        groups = self._slot_groups(queues)
        if len(groups) == 1:
            return self._claim_slot(queues, limit, lease)
        self._turn = start = (self._turn + 1) % len(groups)
        deliveries: list[Delivery] = []
        waits: list[float] = []
        for group in groups[start:] + groups[:start]:
            found, wait = self._claim_slot(
                [queues[i] for i in group], limit - len(deliveries), lease
            )
            deliveries += found
            waits += [] if wait is None else [wait]
            if len(deliveries) >= limit:
                break
        return deliveries, min(waits, default=None)

    def _claim_slot(
        self, queues: list[str], limit: int, lease: float
    ) -> tuple[list[Delivery], float | None]:
        """One claim script over ``queues`` (all of one slot, or all on one server)."""
        script, keys, args = self._claim_call(queues, limit, lease)
        return _claimed(queues, script(keys, args))

    def _claim_call(self, queues: list[str], limit: int, lease: float) -> Call:
        """The claim script's call over ``queues`` (of one slot, or all on one server)."""
        keys: list[str] = []
        args: list[Any] = [limit, ms(lease), self.max_deliveries, secrets.token_hex(8) + "-"]
        args.append(TIMER_BATCH)
        for queue in queues:
            base = self._base(queue)
            keys += [base + "ready", base + "delayed", base + "leased", base + "wake"]
            keys.append(base + "dead")
            args += [queue, base]
        return self._script().claim, keys, args

    @translated
    def size(self, queue: str) -> int:
        """Messages on ``queue`` that are not acknowledged (ready, delayed or leased)."""
        check_name("queue", queue)
        base = self._base(queue)
        return int(self._script().size([base + "ready", base + "delayed", base + "leased"]))

    @translated
    def purge(self, queue: str) -> int:
        """Delete the messages of ``queue`` that are not leased; return how many."""
        check_name("queue", queue)
        base = self._base(queue)
        keys = [base + "ready", base + "delayed"]
        total = 0
        while removed := int(self._script().purge(keys, [base, PURGE_BATCH])):
            total += removed
        return total


def _claimed(queues: list[str], reply: list[Any]) -> tuple[list[Delivery], float | None]:
    """The deliveries of a claim script's reply, and the seconds until a timer falls due."""
    wait_ms = int(reply[0])
    deliveries = []
    for i in range(1, len(reply), 6):
        queue = queues[int(reply[i]) - 1]
        number, body, lease = reply[i + 1], reply[i + 2], reply[i + 5].decode()
        made = make_delivery(
            queue, body, message_id(queue, number), lease, int(reply[i + 4]), int(reply[i + 3])
        )
        deliveries.append(made)
    return deliveries, (None if wait_ms < 0 else wait_ms / 1000)
