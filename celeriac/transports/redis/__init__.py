"""The production broker: queues, keys and topics in Redis (6.0 or newer).

URLs: ``redis://[user:password@]host:port/db``, ``rediss://...`` (TLS, certificates checked
unless ``ssl_cert_reqs`` says otherwise), ``unix:///path/to/redis.sock?db=N``, and for Redis
Cluster ``redis+cluster://[user:password@]host:port`` (``rediss+cluster://`` with TLS), naming
any one node: the client learns the others from it. The client is redis-py (with hiredis when
installed), the ``celeriac[redis]`` extra.

Key layout (``P`` is the ``prefix`` option, ``celeriac:`` by default), the same on one server
and on a cluster. The keys of one queue carry the hash tag ``{queue}``, so that on a cluster
they share one slot and every script touches one slot; a message is numbered within its queue,
and its id is ``<queue>:<n>``::

    P{q}:ready     zset   n -> (9 - priority) * 2**46 + n: most urgent first, then publish order
    P{q}:delayed   zset   n -> due time, ms since the epoch
    P{q}:leased    zset   n -> lease expiry, ms since the epoch (the Redis server's clock)
    P{q}:m:<n>     hash   body, priority, deliveries, lease (the holder's token, while leased),
                          history (JSON list of failed deliveries, once there is one),
                          unique (the P{q}:unique:<k> key it holds, if published unique)
    P{q}:wake      list   at most one token, pushed when work may be ready; idle fetchers BLPOP it
    P{q}:ids       string the queue's message counter
    P{q}:dead      zset   n -> dead_at, seconds: the queue's dead letters, newest last
    P{q}:dead:<n>  hash   a dead letter: the message hash plus queue, reason and dead_at
    P{q}:once:<k>  string on a cluster, what ``publish_once`` sets beside its key (below)
    P queues       set    the queues fetched from: where the dead-letter queue is looked for
    P key:<k>      string a key of ``put``/``incr``; a write also publishes on channel P key:<k>
    (channel)             P topic:<t>, for ``broadcast``/``listen`` (plain pub/sub)
    P limit:{k}*, P slots:{k}*, P{q}:unique:<k>   rate turns, concurrency slots, unique keys:
                          see ``redis_limits.py``, which holds their scripts too

Options (``broker_transport_options``): ``max_deliveries`` (see the contract), ``prefix``,
``socket_timeout`` (seconds, default 10), ``health_check_interval`` (seconds between pings of
an idle connection, default 30), ``retries`` (reconnection attempts, with backoff, before an
operation fails with ``TransportError``; default 6, about 3.5 s), ``ssl_cert_reqs``
(``required``, ``optional`` or ``none``) and ``ssl_ca_certs`` for ``rediss://``.
``lease_timeout`` is read by the worker, not here.

Limits: a publish retried after the connection dropped mid-reply may enqueue twice (delivery
is at-least-once anyway). A unique key is unique within its queue. On a cluster, what spans
slots goes in steps, one slot at a time (see ``cluster.py``): a batch for queues in several
slots is all-or-none per slot; a fetch from queues in several slots takes from one slot after
another, so priorities order messages within a slot only; ``complete`` holds the lease, writes
the results, then acknowledges; ``publish_once`` sets a guard in its first queue's slot
together with the publish, then its key.

The parts, one a module: ``connection`` (the client, reconnection, fork safety, the server
checks, key names), ``cluster`` (what Redis Cluster changes), ``queue`` (publish and fetch),
``wake`` (an idle fetcher's wait), ``leases`` (ack, complete, release, retry, extend),
``dead_letters``, ``keys`` (and ``wait``) and ``topics``; the Lua scripts are in
``redis_scripts.py``. This module puts them together with the limits.
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
from celeriac.transports.redis.connection import message_id, ms, number, translated
from celeriac.transports.redis.dead_letters import DeadLetters
from celeriac.transports.redis.keys import Keys
from celeriac.transports.redis.leases import Leases
from celeriac.transports.redis.queue import Queues
from celeriac.transports.redis.topics import Topics

__all__ = ["RedisTransport"]

#: Waiting messages looked at per released slot, to find one that still waits.
WAKE_SCAN = 100


class RedisTransport(Queues, Leases, DeadLetters, Keys, Topics):
    """Queues, keys and topics in one Redis server or cluster, shared by every host."""

    schemes = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")

    # -- limits (the scripts and their keys: redis_limits.py) -----------------------------------

    @translated
    def publish_unique(
        self, queue: str, body: bytes, key: str, *, due: float | None = None, priority: int = 0
    ) -> tuple[str, bool]:
        """Publish unless a live message holds ``key``: ``(message id, published)``."""
        check_message(queue, body, due, priority)
        check_name("key", key)
        base = self._base(queue)
        keys = [base + "ids", base + "ready", base + "delayed", base + "wake"]
        args: list[Any] = [base, body, priority, "" if due is None else repr(due * 1000)]
        n, published = self._script().publish_unique([*keys, base + "unique:" + key], args)
        return message_id(queue, n), bool(published)

    @translated
    def defer(self, delivery: Delivery, due: float, waiting_on: str | None = None) -> bool:
        """Give a delivery back unstarted until ``due`` (or a slot of ``waiting_on`` frees)."""
        check_due(due)
        base, n = self._base(delivery.queue), number(delivery.message_id)
        keys = [base + "leased", base + "ready", base + "delayed", base + "wake", base + "m:" + n]
        args: list[Any] = [n, delivery.lease, repr(due * 1000)]
        if waiting_on is not None:
            check_name("waiting_on", waiting_on)
        line, member = self._slots(waiting_on or "") + ":waiting", f"{n}:{delivery.queue}"
        if waiting_on is None or self.is_cluster:  # on a cluster the line is another slot's
            keys.append(base + "leased")  # not written
            args += ["0", ""]
        else:
            keys.append(line)
            args += ["1", member]
        deferred = bool(self._script().defer(keys, args))
        if deferred and waiting_on is not None and self.is_cluster:
            self._script().wait_in_line([line], [member])
        return deferred

    @translated
    def throttle(self, key: str, interval: float, claim: str) -> float | None:
        """None: go now; else the broker time of the turn reserved for ``claim``."""
        check_throttle(key, interval, claim)
        name = f"{self.prefix}limit:{{{key}}}"
        args = [repr(float(interval) * 1000), claim, repr(TURN_GRACE * 1000)]
        turn = self._script().throttle([name, name + ":turns"], args)
        return None if turn is None else float(turn) / 1000

    @translated
    def acquire_slot(self, key: str, holder: str, limit: int, ttl: float) -> float | None:
        """None: ``holder`` holds a slot of ``key``; else when the soonest slot runs out."""
        check_slot(key, holder, limit, ttl)
        soonest = self._script().acquire_slot([self._slots(key)], [holder, limit, ms(ttl)])
        return None if soonest is None else float(soonest) / 1000

    @translated
    def renew_slots(self, slots: Sequence[tuple[str, str]], ttl: float) -> list[bool]:
        """Renew ``(key, holder)`` slots for ``ttl`` seconds; whether each was still held."""
        check_lease(ttl)
        if not slots:
            return []
        if self.is_cluster:  # each key in a slot of its own
            renew = self._script().renew_slots
            return [bool(renew([self._slots(k)], [ms(ttl), h])[0]) for k, h in slots]
        keys = [self._slots(key) for key, _ in slots]
        held = self._script().renew_slots(keys, [ms(ttl), *(holder for _, holder in slots)])
        return [bool(ok) for ok in held]

    @translated
    def release_slots(self, slots: Sequence[tuple[str, str]]) -> None:
        """Free ``(key, holder)`` slots; wake one message waiting on each key."""
        if not slots:
            return
        if self.is_cluster:
            for key, holder in slots:
                self._release_slot_in_steps(key, holder)
            return
        keys: list[str] = []
        for key, _ in slots:
            keys += [self._slots(key), self._slots(key) + ":waiting"]
        args: list[Any] = [self.prefix, WAKE_SCAN, *(holder for _, holder in slots)]
        self._script().release_slots(keys, args)

    def _release_slot_in_steps(self, key: str, holder: str) -> None:
        """``release_slots`` for one slot on a cluster: free it in the slot of the key, then
        wake the first message in its line that still waits, in the slot of its queue."""
        line = self._slots(key) + ":waiting"
        members = self._script().free_slot([self._slots(key), line], [holder, WAKE_SCAN])
        gone = []
        for member in members:
            n, _, queue = member.decode().partition(":")
            base = self._base(queue)
            keys = [base + "delayed", base + "ready", base + "wake"]
            if self._script().wake_waiting(keys, [base, n]):
                break  # it keeps its place in the line, in case it has to wait again
            gone.append(member)  # running, woken already, or gone
        if gone:
            self._client().zrem(line, *gone)

    def _slots(self, key: str) -> str:
        """The concurrency slots of ``key``; its line is the same name plus ``:waiting``."""
        return f"{self.prefix}slots:{{{key}}}"
