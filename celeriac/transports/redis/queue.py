"""The queues of the Redis engine: publish, fetch, and what a holder does with a delivery.

Every state change of a message is one Lua script, conditional on the lease token where the
contract says so. ``fetch`` runs one script that moves due delayed messages to ready, takes back
expired leases (or dead-letters them at ``max_deliveries``), and leases the most urgent ready
messages, all judged by ``TIME`` on the server. With nothing to hand out it blocks in BLPOP on
the queues' wake lists, bounded by the next due time or lease expiry the script reported; the
wait is timed on the client and ended with ``CLIENT UNBLOCK``, because Redis only checks
blocking timeouts ten times a second. A fetcher that leaves work behind pushes a token again,
so idle fetchers wake one after another instead of all at once.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis
from redis.exceptions import ResponseError

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
    check_message,
    check_name,
)
from celeriac.transports.redis.connection import RedisBase, ms, translated

#: Messages per publish script call; a bulk publish sends its chunks in one transaction.
PUBLISH_CHUNK = 1000
#: Delayed messages promoted, and expired leases taken back, per queue per fetch.
TIMER_BATCH = 1000
#: Messages deleted per purge script call, so that purging a huge queue never stalls Redis.
PURGE_BATCH = 5000


class Queues(RedisBase):
    """Per queue, zsets of ready, delayed and leased ids, a hash per message, a wake list."""

    @translated
    def publish(
        self, queue: str, body: bytes, *, due: float | None = None, priority: int = 0
    ) -> str:
        """Put ``body`` on ``queue``; return the message id."""
        check_message(queue, body, due, priority)
        keys, args = self._publish_args([(queue, body, due, priority)])
        [message_id] = self._script().publish(keys, args)
        return str(message_id)

    @translated
    def publish_many(self, items: Iterable[tuple[str, bytes, float | None, int]]) -> list[str]:
        """Publish ``(queue, body, due, priority)`` items, all or none.

        One script call per ``PUBLISH_CHUNK`` items; several calls go as one transaction.
        """
        batch = list(items)
        for queue, body, due, priority in batch:
            check_message(queue, body, due, priority)
        if not batch:
            return []
        chunks = [batch[i : i + PUBLISH_CHUNK] for i in range(len(batch))[::PUBLISH_CHUNK]]
        scripts = self._script()
        if len(chunks) == 1:
            return [str(i) for i in scripts.publish(*self._publish_args(chunks[0]))]
        with self._client().pipeline(transaction=True) as pipe:
            for chunk in chunks:
                keys, args = self._publish_args(chunk)
                scripts.publish(keys, args, client=pipe)
            return [str(i) for ids in pipe.execute() for i in ids]

    @translated
    def publish_once(
        self,
        key: str,
        items: Sequence[tuple[str, bytes, float | None, int]],
        ttl: float | None = None,
    ) -> list[str] | None:
        """Publish ``items`` and set ``key`` (for ``ttl`` seconds) unless ``key`` exists."""
        check_key(key, b"1", ttl)
        batch = list(items)
        for queue, body, due, priority in batch:
            check_message(queue, body, due, priority)
        keys, args = self._publish_args(batch)
        ttl_ms = "0" if ttl is None else ms(ttl)
        ids = self._script().publish_once([self._key(key), *keys], [ttl_ms, *args])
        return None if ids is None else [str(i) for i in ids]

    def _publish_args(
        self, chunk: list[tuple[str, bytes, float | None, int]]
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of the publish script for ``chunk``."""
        keys: list[str] = [self.prefix + "ids"]
        args: list[Any] = []
        for queue, body, due, priority in chunk:
            base = self._base(queue)
            keys += [base + "ready", base + "delayed", base + "wake"]
            args += [base, body, priority, "" if due is None else repr(due * 1000)]
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
        deadline = time.monotonic() + timeout
        while True:
            deliveries, wait = self._claim(names, limit, lease)
            left = deadline - time.monotonic()
            if deliveries or left <= 0:
                return deliveries
            if wait is not None:
                left = min(left, wait)
            self._block(names, min(left, self.socket_timeout))

    def _claim(
        self, queues: list[str], limit: int, lease: float
    ) -> tuple[list[Delivery], float | None]:
        """One claim: the deliveries, and else the seconds until a timer may change that."""
        keys: list[str] = []
        args: list[Any] = [limit, ms(lease), self.max_deliveries, secrets.token_hex(8) + "-"]
        args += [self.prefix + "dead:", TIMER_BATCH]
        for queue in queues:
            base = self._base(queue)
            keys += [base + "ready", base + "delayed", base + "leased", base + "wake"]
            args += [queue, base]
        reply = self._script().claim([*keys, self.prefix + "dead"], args)
        wait_ms = int(reply[0])
        deliveries = [
            Delivery(
                queue=queues[int(reply[i]) - 1],
                body=reply[i + 2],
                message_id=reply[i + 1].decode(),
                lease=reply[i + 5].decode(),
                deliveries=int(reply[i + 4]),
                priority=int(reply[i + 3]),
            )
            for i in range(1, len(reply), 6)
        ]
        return deliveries, (None if wait_ms < 0 else wait_ms / 1000)

    def _block(self, queues: list[str], seconds: float) -> None:
        """Wait up to ``seconds`` for a token on the wake list of one of ``queues``.

        Redis checks blocking timeouts only ``hz`` times a second (every 100 ms by default), too
        coarse for due times; so the wait is timed here, and ended early with CLIENT UNBLOCK.
        """
        if seconds < 0.001:
            return
        wake_keys = [self._base(queue) + "wake" for queue in queues]
        try:
            with self._borrowed() as conn:
                conn.send_command("CLIENT", "ID")
                conn.send_command("BLPOP", *wake_keys, f"{seconds:.3f}", check_health=False)
                client_id = _allowed(conn.read_response)
                if not conn.can_read(timeout=seconds) and client_id is not None:
                    _allowed(functools.partial(self._client().client_unblock, client_id))
                conn.read_response()
        except redis.exceptions.ConnectionError:
            pass  # the next claim reconnects, with retries, or reports the error

    @translated
    def ack_many(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Acknowledge several deliveries with one script call."""
        return self.complete([(delivery, None) for delivery in deliveries])

    def ack(self, delivery: Delivery) -> bool:
        """Delete a delivered message; ``False`` if the lease was lost."""
        return self.ack_many([delivery])[0]

    @translated
    def complete(self, items: Sequence[tuple[Delivery, KeyWrite | None]]) -> list[bool]:
        """Acknowledge and store results in one script call; a lost lease stores nothing."""
        if not items:
            return []
        keys: list[str] = []
        args: list[Any] = []
        for delivery, write in items:
            base = self._base(delivery.queue)
            keys += [base + "leased", base + "m:" + delivery.message_id]
            if write is None:
                keys.append(base + "leased")  # a key of the same slot, never written
                args += [delivery.message_id, delivery.lease, "0", "", "0", ""]
                continue
            key, value, ttl = write
            check_key(key, value, ttl)
            keys.append(self._key(key))
            ttl_ms = "0" if ttl is None else ms(ttl)
            args += [delivery.message_id, delivery.lease, "1", value, ttl_ms, self._key(key)]
        return [bool(done) for done in self._script().complete(keys, args)]

    @translated
    def release(
        self, delivery: Delivery, reason: str | None = None, detail: Detail | None = None
    ) -> bool:
        """Give a delivery back; with ``reason`` it counts as a failed delivery."""
        detail_json = check_detail(detail)
        base = self._base(delivery.queue)
        keys = [base + "leased", base + "ready", base + "wake", base + "m:" + delivery.message_id]
        args: list[Any] = [delivery.message_id, delivery.lease]
        args += ["0" if reason is None else "1", reason or ""]
        args += [self.max_deliveries, delivery.queue, self.prefix + "dead:", detail_json or ""]
        return bool(self._script().release([*keys, self.prefix + "dead"], args))

    @translated
    def retry(self, delivery: Delivery, due: float | None, body: bytes | None = None) -> bool:
        """Put a delivered message back at ``due``, with a new body if given."""
        if body is not None:
            check_bytes("body", body)
        check_due(due)
        base = self._base(delivery.queue)
        keys = [base + "leased", base + "ready", base + "delayed", base + "wake"]
        keys.append(base + "m:" + delivery.message_id)
        args: list[Any] = [delivery.message_id, delivery.lease]
        args += ["" if due is None else repr(due * 1000), "0" if body is None else "1", body or b""]
        return bool(self._script().retry(keys, args))

    @translated
    def extend(self, deliveries: Sequence[Delivery], lease: float) -> list[Delivery]:
        """Renew leases for ``lease`` seconds from now; return those still held."""
        check_lease(lease)
        if not deliveries:
            return []
        keys: list[str] = []
        args: list[Any] = [ms(lease)]
        for delivery in deliveries:
            base = self._base(delivery.queue)
            keys += [base + "leased", base + "m:" + delivery.message_id]
            args += [delivery.message_id, delivery.lease]
        held = self._script().extend(keys, args)
        return [delivery for delivery, ok in zip(deliveries, held, strict=True) if ok]

    @translated
    def size(self, queue: str) -> int:
        """Messages on ``queue`` that are not acknowledged (ready, delayed or leased)."""
        check_name("queue", queue)
        base = self._base(queue)
        with self._client().pipeline(transaction=True) as pipe:
            for state in ("ready", "delayed", "leased"):
                pipe.zcard(base + state)
            return sum(pipe.execute())

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


def _allowed(command: Callable[[], Any]) -> Any:
    """Run ``command``; ``None`` if the server refuses it (an ACL user without CLIENT).

    Without CLIENT ID or CLIENT UNBLOCK a fetch still works: Redis ends the BLPOP itself at
    its timeout, up to 100 ms late.
    """
    try:
        return command()
    except ResponseError:
        return None
