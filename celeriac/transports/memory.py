"""The in-process transport: the twin of the real engines, for tests and single-process use.

``memory://name`` names a broker that lives in this process: every transport opened with the
same name shares its queues, keys and topics, so a producer and an in-thread worker see the
same work. ``memory://`` is the name ``default``. Nothing survives the process, and a forked
child gets a private copy, not a shared broker.

One ``threading.Condition`` per broker guards its state; every change that can make work
deliverable, a key appear or a topic grow notifies it, so ``fetch``, ``wait`` and
``Subscription.get`` wake at once instead of polling. Time is ``time.time()``.
"""

from __future__ import annotations

import heapq
import itertools
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from celeriac.errors import TransportError
from celeriac.transports.base import (
    DEFAULT_LEASE,
    DeadLetter,
    Delivery,
    Detail,
    KeyWrite,
    Subscription,
    Transport,
    check_bytes,
    check_detail,
    check_due,
    check_fetch,
    check_key,
    check_lease,
    check_messages,
    check_name,
    check_slot,
    check_throttle,
    check_topic,
    check_topics,
)
from celeriac.transports.memory_limits import Limits

__all__ = ["MemoryTransport"]

DEFAULT_NAME = "default"
#: Messages a subscriber that does not read keeps before dropping the oldest.
DEFAULT_TOPIC_KEEP = 10_000
#: Seconds between sweeps of expired keys.
KEY_SWEEP_INTERVAL = 1.0

_brokers: dict[str, _Broker] = {}
_brokers_lock = threading.Lock()


def _broker_named(name: str) -> _Broker:
    """The process-wide broker called ``name``, created on first use."""
    with _brokers_lock:
        broker = _brokers.get(name)
        if broker is None:
            broker = _brokers[name] = _Broker()
        return broker


@dataclass(slots=True)
class _Message:
    """A message as the broker holds it; ``where`` is ready, delayed or leased."""

    id: int
    queue: str
    body: bytes
    priority: int
    due: float
    where: str
    deliveries: int = 0
    lease: str | None = None
    lease_until: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


class _Broker:
    """The shared state behind every ``MemoryTransport`` of one name."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.ids = itertools.count(1)
        self.messages: dict[int, _Message] = {}
        # Heaps hold (key, id) entries; an entry is stale, and skipped, when the message
        # has moved on since it was pushed, which spares us deleting from the middle.
        self.ready: dict[str, list[tuple[int, int]]] = {}
        self.delayed: list[tuple[float, int]] = []
        self.leases: list[tuple[float, int, str]] = []
        self.dead: dict[int, tuple[DeadLetter, int]] = {}
        self.keys: dict[str, tuple[bytes, float | None]] = {}
        self.keys_swept = 0.0
        self.subscriptions: set[_MemorySubscription] = set()
        self.limits = Limits()  # rate turns, concurrency slots, unique keys

    # -- message states (callers hold ``cond``) ---------------------------------------------

    def make_ready(self, message: _Message) -> None:
        """Put a message where ``fetch`` finds it, and wake fetchers."""
        message.where, message.lease = "ready", None
        heap = self.ready.setdefault(message.queue, [])
        heapq.heappush(heap, (-message.priority, message.id))
        self.cond.notify_all()

    def schedule(self, message: _Message, now: float) -> None:
        """Make a message ready now, or delayed until its due time."""
        if message.due <= now:
            self.make_ready(message)
            return
        message.where, message.lease = "delayed", None
        heapq.heappush(self.delayed, (message.due, message.id))
        self.cond.notify_all()  # fetchers recompute how long to sleep

    def make_dead(self, message: _Message, reason: str, now: float) -> None:
        """Move a message to the dead-letter queue."""
        del self.messages[message.id]
        letter = DeadLetter(
            message_id=str(message.id),
            queue=message.queue,
            body=message.body,
            reason=reason,
            deliveries=message.deliveries,
            dead_at=now,
            history=list(message.history),
        )
        self.dead[message.id] = (letter, message.priority)

    def fail(self, message: _Message, event: dict[str, Any], max_deliveries: int) -> None:
        """Record a failed delivery: dead-letter at ``max_deliveries``, else deliver again."""
        message.history.append(event)
        if message.deliveries >= max_deliveries:
            self.make_dead(message, event.get("reason", event["event"]), event["at"])
        else:
            self.make_ready(message)

    def held(self, delivery: Delivery) -> _Message | None:
        """The message behind ``delivery`` if its lease is still the current one."""
        try:
            message = self.messages.get(int(delivery.message_id))
        except ValueError:
            return None
        if message is None or message.where != "leased" or message.lease != delivery.lease:
            return None
        return message

    # -- timers -------------------------------------------------------------------------------

    def tick(self, now: float, max_deliveries: int) -> None:
        """Promote due messages and take back expired leases."""
        while self.delayed and self.delayed[0][0] <= now:
            due, message_id = heapq.heappop(self.delayed)
            message = self.messages.get(message_id)
            if message is not None and message.where == "delayed" and message.due == due:
                self.make_ready(message)
        while self.leases and self.leases[0][0] <= now:
            until, message_id, token = heapq.heappop(self.leases)
            message = self.messages.get(message_id)
            if message is None or message.lease != token or message.lease_until != until:
                continue
            event = {"at": now, "event": "lease_expired", "deliveries": message.deliveries}
            self.fail(message, event, max_deliveries)

    def next_timer(self) -> float | None:
        """When the next delayed message falls due or lease runs out, if ever."""
        times = [heap[0][0] for heap in (self.delayed, self.leases) if heap]
        return min(times) if times else None

    # -- fetching -------------------------------------------------------------------------------

    def _head(self, queue: str) -> tuple[int, int] | None:
        """The most urgent ready entry of ``queue``, dropping stale entries on the way."""
        heap = self.ready.get(queue)
        while heap:
            message = self.messages.get(heap[0][1])
            if message is not None and message.where == "ready" and message.queue == queue:
                return heap[0]
            heapq.heappop(heap)
        return None

    def claim(self, queues: Sequence[str], limit: int, now: float, lease: float) -> list[Delivery]:
        """Lease up to ``limit`` ready messages of ``queues``, most urgent first."""
        deliveries: list[Delivery] = []
        while len(deliveries) < limit:
            heads = [(head, q) for q in queues if (head := self._head(q)) is not None]
            if not heads:
                break
            (_, message_id), queue = min(heads)
            heapq.heappop(self.ready[queue])
            deliveries.append(self._lease(self.messages[message_id], now + lease))
        return deliveries

    def _lease(self, message: _Message, until: float) -> Delivery:
        """Hand one message out under a fresh lease."""
        message.where, message.lease, message.lease_until = "leased", uuid.uuid4().hex, until
        message.deliveries += 1
        heapq.heappush(self.leases, (until, message.id, message.lease))
        return Delivery(
            queue=message.queue,
            body=message.body,
            message_id=str(message.id),
            lease=message.lease,
            deliveries=message.deliveries,
            priority=message.priority,
        )

    # -- keys -----------------------------------------------------------------------------------

    def live_value(self, key: str, now: float) -> bytes | None:
        """The value of ``key`` unless it is absent or expired."""
        entry = self.keys.get(key)
        if entry is None:
            return None
        if entry[1] is not None and entry[1] <= now:
            del self.keys[key]
            return None
        return entry[0]

    def sweep_keys(self, now: float) -> None:
        """Drop expired keys now and then, so that unread keys do not pile up."""
        if now - self.keys_swept < KEY_SWEEP_INTERVAL:
            return
        self.keys_swept = now
        expired = [k for k, (_, exp) in self.keys.items() if exp is not None and exp <= now]
        for key in expired:
            del self.keys[key]


class MemoryTransport(Transport):
    """Queues, keys and topics in this process's memory, shared by name."""

    schemes = ("memory",)

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        super().__init__(url, options)
        scheme, _, rest = url.partition("://")
        if scheme.lower() not in self.schemes:
            raise TransportError(f"not a memory URL: {url!r}")
        self.name = rest.strip("/") or DEFAULT_NAME
        self.topic_keep = int(self.options.get("topic_keep", DEFAULT_TOPIC_KEEP))
        self._broker = _broker_named(self.name)

    # -- queues ---------------------------------------------------------------------------------

    def publish(
        self, queue: str, body: bytes, *, due: float | None = None, priority: int = 0
    ) -> str:
        """Put ``body`` on ``queue``; return the message id."""
        return self.publish_many([(queue, body, due, priority)])[0]

    def publish_many(self, items: Iterable[tuple[str, bytes, float | None, int]]) -> list[str]:
        """Publish ``(queue, body, due, priority)`` items, all or none."""
        batch = check_messages(items)
        broker = self._broker
        now = time.time()
        ids: list[str] = []
        with broker.cond:
            for queue, body, due, priority in batch:
                message = _Message(
                    id=next(broker.ids),
                    queue=queue,
                    body=body,
                    priority=priority,
                    due=now if due is None else due,
                    where="",
                )
                broker.messages[message.id] = message
                broker.schedule(message, now)
                ids.append(str(message.id))
        return ids

    def fetch(
        self,
        queues: Sequence[str],
        limit: int = 1,
        timeout: float = 0.0,
        lease: float = DEFAULT_LEASE,
    ) -> list[Delivery]:
        """Lease up to ``limit`` deliverable messages; wait up to ``timeout`` for the first."""
        queues = check_fetch(queues, limit, timeout, lease)
        broker = self._broker
        deadline = time.time() + timeout
        with broker.cond:
            while True:
                now = time.time()
                broker.tick(now, self.max_deliveries)
                deliveries = broker.claim(queues, limit, now, lease)
                if deliveries or now >= deadline:
                    return deliveries
                wake = broker.next_timer()
                until = deadline if wake is None else min(deadline, wake)
                broker.cond.wait(max(until - now, 0.0))

    def ack(self, delivery: Delivery) -> bool:
        """Delete a delivered message; ``False`` if the lease was lost."""
        with self._broker.cond:
            message = self._broker.held(delivery)
            if message is None:
                return False
            del self._broker.messages[message.id]
            return True

    def complete(self, items: Sequence[tuple[Delivery, KeyWrite | None]]) -> list[bool]:
        """Acknowledge and store results under one lock; a lost lease stores nothing."""
        broker = self._broker
        done: list[bool] = []
        with broker.cond:
            now = time.time()
            for delivery, write in items:
                message = broker.held(delivery)
                if message is not None:
                    del broker.messages[message.id]
                    if write is not None:
                        key, value, ttl = write
                        check_key(key, value, ttl)
                        broker.keys[key] = (value, None if ttl is None else now + ttl)
                done.append(message is not None)
            broker.cond.notify_all()
        return done

    def release(
        self, delivery: Delivery, reason: str | None = None, detail: Detail | None = None
    ) -> bool:
        """Give a delivery back; with ``reason`` it counts as a failed delivery."""
        detail_json = check_detail(detail)
        broker = self._broker
        with broker.cond:
            message = broker.held(delivery)
            if message is None:
                return False
            if reason is None:
                message.deliveries -= 1
                broker.make_ready(message)
            else:
                event = _event("released", message, reason, detail_json)
                broker.fail(message, event, self.max_deliveries)
            return True

    def retry(self, delivery: Delivery, due: float | None, body: bytes | None = None) -> bool:
        """Put a delivered message back at ``due``, with a new body if given."""
        if body is not None:
            check_bytes("body", body)
        check_due(due)
        broker = self._broker
        now = time.time()
        with broker.cond:
            message = broker.held(delivery)
            if message is None:
                return False
            message.deliveries = 0
            message.due = now if due is None else due
            if body is not None:
                message.body = body
            broker.schedule(message, now)
            return True

    def extend(self, deliveries: Sequence[Delivery], lease: float) -> list[Delivery]:
        """Renew leases for ``lease`` seconds from now; return those still held."""
        check_lease(lease)
        broker = self._broker
        until = time.time() + lease
        held: list[Delivery] = []
        with broker.cond:
            for delivery in deliveries:
                message = broker.held(delivery)
                if message is not None:
                    message.lease_until = until
                    heapq.heappush(broker.leases, (until, message.id, delivery.lease))
                    held.append(delivery)
        return held

    def dead_letter(self, delivery: Delivery, reason: str, detail: Detail | None = None) -> bool:
        """Move a delivered message to the dead-letter queue."""
        detail_json = check_detail(detail)
        broker = self._broker
        with broker.cond:
            message = broker.held(delivery)
            if message is None:
                return False
            event = _event("dead_lettered", message, reason, detail_json)
            message.history.append(event)
            broker.make_dead(message, reason, event["at"])
            return True

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The most recent dead letters, newest first."""
        with self._broker.cond:
            letters = [letter for letter, _ in self._broker.dead.values()]
        return sorted(letters, key=lambda d: (d.dead_at, int(d.message_id)), reverse=True)[:limit]

    def redrive(self, message_id: str) -> bool:
        """Put a dead letter back on its queue with a fresh delivery count."""
        broker = self._broker
        now = time.time()
        with broker.cond:
            try:
                letter, priority = broker.dead.pop(int(message_id))
            except (KeyError, ValueError):
                return False
            message = _Message(
                id=int(letter.message_id),
                queue=letter.queue,
                body=letter.body,
                priority=priority,
                due=now,
                where="",
                history=[*letter.history, {"at": now, "event": "redriven"}],
            )
            broker.messages[message.id] = message
            broker.make_ready(message)
            return True

    def dead_letter_count(self) -> int:
        """How many messages the dead-letter queue holds."""
        with self._broker.cond:
            return len(self._broker.dead)

    def purge_dead_letters(self) -> int:
        """Delete every dead letter; return how many."""
        with self._broker.cond:
            count = len(self._broker.dead)
            self._broker.dead.clear()
            return count

    def size(self, queue: str) -> int:
        """Messages on ``queue`` that are not acknowledged (ready, delayed or leased)."""
        with self._broker.cond:
            return sum(1 for m in self._broker.messages.values() if m.queue == queue)

    def purge(self, queue: str) -> int:
        """Delete the messages of ``queue`` that are not leased; return how many."""
        broker = self._broker
        with broker.cond:
            doomed = [
                m.id for m in broker.messages.values() if m.queue == queue and m.where != "leased"
            ]
            for message_id in doomed:
                del broker.messages[message_id]
            broker.ready.pop(queue, None)
            return len(doomed)

    # -- keys -----------------------------------------------------------------------------------

    def publish_once(
        self,
        key: str,
        items: Sequence[tuple[str, bytes, float | None, int]],
        ttl: float | None = None,
    ) -> list[str] | None:
        """Publish ``items`` and set ``key`` (for ``ttl`` seconds) unless ``key`` exists."""
        check_key(key, b"1", ttl)
        now = time.time()
        with self._broker.cond:
            self._broker.sweep_keys(now)
            if self._broker.live_value(key, now) is not None:
                return None
            ids = self.publish_many(items)  # checks every item before publishing any
            self._broker.keys[key] = (b"1", None if ttl is None else now + ttl)
            self._broker.cond.notify_all()
            return ids

    def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``, expiring after ``ttl`` seconds if given."""
        check_key(key, value, ttl)
        now = time.time()
        with self._broker.cond:
            self._broker.sweep_keys(now)
            self._broker.keys[key] = (value, None if ttl is None else now + ttl)
            self._broker.cond.notify_all()

    def get(self, key: str) -> bytes | None:
        """The value under ``key``, or ``None``."""
        with self._broker.cond:
            return self._broker.live_value(key, time.time())

    def delete(self, key: str) -> None:
        """Remove ``key`` if present."""
        with self._broker.cond:
            self._broker.keys.pop(key, None)

    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Add ``amount`` to the integer under ``key`` (0 if absent); return the new value."""
        check_key(key, b"", ttl)
        now = time.time()
        broker = self._broker
        with broker.cond:
            broker.sweep_keys(now)
            old = broker.live_value(key, now)
            value = (0 if old is None else _as_int(key, old)) + amount
            # Like Redis INCR: without a ttl an existing expiry is kept.
            expires = now + ttl if ttl is not None else None
            if ttl is None and old is not None:
                expires = broker.keys[key][1]
            broker.keys[key] = (str(value).encode(), expires)
            broker.cond.notify_all()
            return value

    def wait(self, key: str, timeout: float | None = None) -> bytes | None:
        """Block until ``key`` exists; return its value, or ``None`` after ``timeout``."""
        deadline = None if timeout is None else time.time() + timeout
        broker = self._broker
        with broker.cond:
            while True:
                now = time.time()
                value = broker.live_value(key, now)
                if value is not None:
                    return value
                if deadline is not None and now >= deadline:
                    return None
                broker.cond.wait(None if deadline is None else deadline - now)

    # -- topics ---------------------------------------------------------------------------------

    def broadcast(self, topic: str, body: bytes) -> None:
        """Append ``body`` to ``topic`` for every current listener."""
        check_topic(topic, body)
        with self._broker.cond:
            for subscription in self._broker.subscriptions:
                if topic in subscription.topics:
                    subscription.buffer.append((topic, body))
            self._broker.cond.notify_all()

    def listen(self, topics: Sequence[str]) -> Subscription:
        """Subscribe to ``topics`` from now on."""
        names = check_topics(topics)
        subscription = _MemorySubscription(self._broker, names, self.topic_keep)
        with self._broker.cond:
            self._broker.subscriptions.add(subscription)
        return subscription

    # -- limits ---------------------------------------------------------------------------------

    def publish_unique(
        self, queue: str, body: bytes, key: str, *, due: float | None = None, priority: int = 0
    ) -> tuple[str, bool]:
        """Publish unless a live message holds ``key``: ``(message id, published)``."""
        check_name("key", key)
        broker = self._broker
        with broker.cond:
            holder = broker.limits.unique_holder(key, broker.messages)
            if holder is not None:
                return str(holder.id), False
            [message_id] = self.publish_many([(queue, body, due, priority)])
            uniques = broker.limits.uniques
            uniques[key] = broker.messages[int(message_id)]
            if len(uniques) > 2 * len(broker.messages) + 1000:
                broker.limits.sweep_uniques(broker.messages)
            return message_id, True

    def defer(self, delivery: Delivery, due: float, waiting_on: str | None = None) -> bool:
        """Give a delivery back unstarted until ``due`` (or a slot of ``waiting_on`` frees)."""
        check_due(due)
        if waiting_on is not None:
            check_name("waiting_on", waiting_on)
        broker = self._broker
        with broker.cond:
            message = broker.held(delivery)
            if message is None:
                return False
            message.deliveries -= 1
            message.due = due
            if waiting_on is not None:
                broker.limits.wait(waiting_on, message.id)
            broker.schedule(message, time.time())
            return True

    def throttle(self, key: str, interval: float, claim: str) -> float | None:
        """None: go now; else the broker time of the turn reserved for ``claim``."""
        check_throttle(key, interval, claim)
        with self._broker.cond:
            return self._broker.limits.throttle(key, float(interval), claim, time.time())

    def acquire_slot(self, key: str, holder: str, limit: int, ttl: float) -> float | None:
        """None: ``holder`` holds a slot of ``key``; else when the soonest slot runs out."""
        check_slot(key, holder, limit, ttl)
        with self._broker.cond:
            return self._broker.limits.acquire(key, holder, limit, ttl, time.time())

    def renew_slots(self, slots: Sequence[tuple[str, str]], ttl: float) -> list[bool]:
        """Renew ``(key, holder)`` slots for ``ttl`` seconds; whether each was still held."""
        check_lease(ttl)
        with self._broker.cond:
            now = time.time()
            return [self._broker.limits.renew(key, holder, ttl, now) for key, holder in slots]

    def release_slots(self, slots: Sequence[tuple[str, str]]) -> None:
        """Free ``(key, holder)`` slots; wake one message waiting on each key."""
        broker = self._broker
        with broker.cond:
            for key, holder in slots:
                for message_id in broker.limits.release(key, holder):
                    message = broker.messages.get(message_id)
                    if message is not None and message.where == "delayed":
                        broker.make_ready(message)  # it keeps its place until it runs
                        break
                    broker.limits.stop_waiting(key, message_id)


class _MemorySubscription(Subscription):
    """A listener's buffer, filled by ``broadcast`` and drained by ``get``."""

    def __init__(self, broker: _Broker, topics: frozenset[str], keep: int) -> None:
        self.topics = topics
        self.buffer: deque[tuple[str, bytes]] = deque(maxlen=keep)
        self._broker = broker
        self._closed = False

    def get(self, timeout: float | None = None) -> list[tuple[str, bytes]]:
        """Return ``(topic, body)`` pairs broadcast since the last call; wait up to ``timeout``."""
        with self._broker.cond:
            self._broker.cond.wait_for(self._has_news, timeout)
            items = list(self.buffer)
            self.buffer.clear()
            return items

    def _has_news(self) -> bool:
        """Whether ``get`` can stop waiting."""
        return bool(self.buffer) or self._closed

    def close(self) -> None:
        """Stop listening."""
        with self._broker.cond:
            self._closed = True
            self._broker.subscriptions.discard(self)
            self._broker.cond.notify_all()


# -- argument checks, the same for every engine (sqlite.py uses them too) -------------------------


def _event(
    name: str, message: _Message, reason: str, detail_json: str | None = None
) -> dict[str, Any]:
    """One entry of a message's history; the detail is stored as the other engines store it."""
    event = {"at": time.time(), "event": name, "reason": reason, "deliveries": message.deliveries}
    if detail_json is not None:
        event["detail"] = json.loads(detail_json)
    return event


def _as_int(key: str, value: bytes) -> int:
    """The integer stored under ``key``, for ``incr``."""
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"key {key!r} does not hold an integer") from None
