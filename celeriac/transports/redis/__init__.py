"""The production broker: queues, keys and topics in Redis (6.0 or newer).

URLs: ``redis://[user:password@]host:port/db``, ``rediss://...`` (TLS, certificates checked
unless ``ssl_cert_reqs`` says otherwise) and ``unix:///path/to/redis.sock?db=N``. The client is
redis-py (with hiredis when installed), the ``celeriac[redis]`` extra.

Key layout (``P`` is the ``prefix`` option, ``celeriac:`` by default). The keys of one queue
carry the hash tag ``{queue}``, so that under Redis Cluster they share one slot::

    P{q}:ready     zset   id -> (9 - priority) * 2**46 + id: most urgent first, then publish order
    P{q}:delayed   zset   id -> due time, ms since the epoch
    P{q}:leased    zset   id -> lease expiry, ms since the epoch (the Redis server's clock)
    P{q}:m:<id>    hash   body, priority, deliveries, lease (the holder's token, while leased),
                          history (JSON list of failed deliveries, once there is one),
                          unique (the P unique:<k> key it holds, if published unique)
    P{q}:wake      list   at most one token, pushed when work may be ready; idle fetchers BLPOP it
    P ids          string the message id counter (ids are global, so publish order is too)
    P dead         zset   id -> dead_at, seconds: the dead-letter queue, newest last
    P dead:<id>    hash   a dead letter: the message hash plus queue, reason and dead_at
    P key:<k>      string a key of ``put``/``incr``; a write also publishes on channel P key:<k>
    (channel)             P topic:<t>, for ``broadcast``/``listen`` (plain pub/sub)
    P limit:*, P slots:*, P unique:*   rate turns, concurrency slots, unique keys: see
                          ``redis_limits.py``, which holds their scripts too

Options (``broker_transport_options``): ``max_deliveries`` (see the contract), ``prefix``,
``socket_timeout`` (seconds, default 10), ``health_check_interval`` (seconds between pings of
an idle connection, default 30), ``retries`` (reconnection attempts, with backoff, before an
operation fails with ``TransportError``; default 6, about 3.5 s), ``ssl_cert_reqs``
(``required``, ``optional`` or ``none``) and ``ssl_ca_certs`` for ``rediss://``.
``lease_timeout`` is read by the worker, not here.

Limits: Redis Cluster is not supported yet: the id counter, the dead-letter keys, result keys
and fetching from several queues at once cross slots. A publish retried after the connection
dropped mid-reply may enqueue twice (delivery is at-least-once anyway).

The parts, one a module: ``connection`` (the client, reconnection, fork safety, the server
checks), ``queue`` (publish, fetch and leases), ``dead_letters``, ``keys`` (and ``wait``) and
``topics``; the Lua scripts are in ``redis_scripts.py``. This module puts them together with
the limits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celeriac.transports.base import (
    TURN_GRACE,
    Delivery,
    check_due,
    check_lease,
    check_message,
    check_name,
    check_slot,
    check_throttle,
)

# First of the parts: it imports redis-py, and names the extra to install when it is missing.
from celeriac.transports.redis.connection import ms, translated
from celeriac.transports.redis.dead_letters import DeadLetters
from celeriac.transports.redis.keys import Keys
from celeriac.transports.redis.queue import Queues
from celeriac.transports.redis.topics import Topics

__all__ = ["RedisTransport"]

#: Waiting messages looked at per released slot, to find one that still waits.
WAKE_SCAN = 100


class RedisTransport(Queues, DeadLetters, Keys, Topics):
    """Queues, keys and topics in one Redis server, shared by every host that reaches it."""

    schemes = ("redis", "rediss", "unix")

    # -- limits (the scripts and their keys: redis_limits.py) -----------------------------------

    @translated
    def publish_unique(
        self, queue: str, body: bytes, key: str, *, due: float | None = None, priority: int = 0
    ) -> tuple[str, bool]:
        """Publish unless a live message holds ``key``: ``(message id, published)``."""
        check_message(queue, body, due, priority)
        check_name("key", key)
        base = self._base(queue)
        keys = [self.prefix + "ids", base + "ready", base + "delayed", base + "wake"]
        args: list[Any] = [base, body, priority, "" if due is None else repr(due * 1000)]
        message_id, published = self._script().publish_unique(
            [*keys, self.prefix + "unique:" + key], args
        )
        return _text(message_id), bool(published)

    @translated
    def defer(self, delivery: Delivery, due: float, waiting_on: str | None = None) -> bool:
        """Give a delivery back unstarted until ``due`` (or a slot of ``waiting_on`` frees)."""
        check_due(due)
        base = self._base(delivery.queue)
        keys = [base + "leased", base + "ready", base + "delayed", base + "wake"]
        keys.append(base + "m:" + delivery.message_id)
        args: list[Any] = [delivery.message_id, delivery.lease, repr(due * 1000)]
        if waiting_on is None:
            keys.append(base + "leased")  # not written
            args += ["0", ""]
        else:
            check_name("waiting_on", waiting_on)
            keys.append(self.prefix + "slots:" + waiting_on + ":waiting")
            args += ["1", f"{delivery.message_id}:{delivery.queue}"]
        return bool(self._script().defer(keys, args))

    @translated
    def throttle(self, key: str, interval: float, claim: str) -> float | None:
        """None: go now; else the broker time of the turn reserved for ``claim``."""
        check_throttle(key, interval, claim)
        name = self.prefix + "limit:" + key
        args = [repr(float(interval) * 1000), claim, repr(TURN_GRACE * 1000)]
        turn = self._script().throttle([name, name + ":turns"], args)
        return None if turn is None else float(turn) / 1000

    @translated
    def acquire_slot(self, key: str, holder: str, limit: int, ttl: float) -> float | None:
        """None: ``holder`` holds a slot of ``key``; else when the soonest slot runs out."""
        check_slot(key, holder, limit, ttl)
        soonest = self._script().acquire_slot(
            [self.prefix + "slots:" + key], [holder, limit, ms(ttl)]
        )
        return None if soonest is None else float(soonest) / 1000

    @translated
    def renew_slots(self, slots: Sequence[tuple[str, str]], ttl: float) -> list[bool]:
        """Renew ``(key, holder)`` slots for ``ttl`` seconds; whether each was still held."""
        check_lease(ttl)
        if not slots:
            return []
        keys = [self.prefix + "slots:" + key for key, _ in slots]
        held = self._script().renew_slots(keys, [ms(ttl), *(holder for _, holder in slots)])
        return [bool(ok) for ok in held]

    @translated
    def release_slots(self, slots: Sequence[tuple[str, str]]) -> None:
        """Free ``(key, holder)`` slots; wake one message waiting on each key."""
        if not slots:
            return
        keys: list[str] = []
        for key, _ in slots:
            keys += [self.prefix + "slots:" + key, self.prefix + "slots:" + key + ":waiting"]
        args: list[Any] = [self.prefix, WAKE_SCAN, *(holder for _, holder in slots)]
        self._script().release_slots(keys, args)


def _text(value: Any) -> str:
    """A script's reply as text (redis-py hands bulk strings back as bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)
