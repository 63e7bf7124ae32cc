"""The transport contract: where bytes live. A transport knows nothing of tasks.

A transport offers three things, and every engine passes the same contract test suite
(``tests/transports/test_contract.py``):

Queues with leases
    ``publish`` puts a body on a queue with a due time (``due``, seconds since the epoch, judged
    by the broker's clock; ``None`` means now) and a priority (0-9, 9 most urgent). ``fetch``
    hands out up to ``limit`` deliverable messages (due, not leased), most urgent first, then in
    publish order, each leased to the caller for ``lease`` seconds and with its delivery count
    raised by one. ``publisher(queue, priority)`` is ``publish`` bound to one queue and
    priority, due now, with its checks (and an engine's key names) made once: what a task's
    plain calls send with. The holder of a lease ends it with exactly one of:

    - ``ack``: done, the message is deleted (``complete`` also stores the task's result in
      the same atomic step);
    - ``release``: given back; without a reason the delivery is not counted (work handed back
      unstarted), with a reason it counts as a failed delivery;
    - ``retry``: back on the queue at a new due time, optionally with a new body, delivery
      count reset (a task-level retry is a successful delivery);
    - ``dead_letter``: moved to the dead-letter queue with a reason code.

    ``release`` with a reason and ``dead_letter`` take an optional ``detail``, a JSON-able dict
    kept in the message's history (a dead pool process's exit code or signal and pids).

    Every one of these is conditional on still holding the lease and returns ``False`` when the
    lease was lost (expired and taken by another worker, or already ended). ``extend`` renews
    leases and returns the deliveries still held. A lease that runs out makes the message
    deliverable again; a message whose delivery count has reached ``max_deliveries`` when its
    lease runs out (or is released with a reason) goes to the dead-letter queue instead, with
    its history. ``dead_letters`` lists the dead-letter queue, ``dead_letter_count`` counts it,
    ``redrive`` puts one back and ``purge_dead_letters`` empties it.

Keys
    ``put`` (with an optional time to live), ``get``, ``delete``, ``incr`` and ``wait``, which
    blocks until a key exists (results, chord counters, revocations, control replies).
    ``publish_once(key, items, ttl)`` publishes a batch and sets ``key`` in one atomic step,
    unless ``key`` exists: ``None`` then, and nothing is published. A chord's body is sent
    this way, so the header tasks that find the chord complete send it once between them,
    and a process that dies before sending it leaves it to the next.

Topics
    ``broadcast`` appends to a topic; ``listen`` returns a subscription that yields what is
    broadcast after it was opened (events, remote control).

Limits
    Shared state for rate limits, concurrency limits and unique tasks, each read and changed in
    one atomic step, so that a limit holds for every worker of the cluster together:

    - ``throttle(key, interval, claim)``: one turn every ``interval`` seconds per key. Returns
      None when the caller may go now; else the broker time of the turn it reserved for
      ``claim`` (a message id). Asked again at or after that time with the same claim, it
      returns None and uses the turn. An interval other than the one the key was last used
      with starts the key over (reserved turns are dropped, no turn comes early); turns not
      used within ``TURN_GRACE`` seconds of their time are dropped.
    - ``acquire_slot(key, holder, limit, ttl)``: one of ``limit`` slots of ``key`` for
      ``holder`` (a lease token), for ``ttl`` seconds. None when held (taken, or renewed if
      already held); else the broker time at which the soonest slot runs out unless renewed.
      ``renew_slots`` renews; ``release_slots`` frees, and makes the longest-waiting message
      deferred on each key (below) deliverable at once.
    - ``defer(delivery, due, waiting_on=None)``: give a delivery back unstarted, deliverable
      again at ``due``, without counting the delivery; with ``waiting_on`` (a slot key) it
      also waits for a slot of that key to be released, whichever comes first.
    - ``publish_unique(queue, body, key)``: publish unless a message published with ``key``
      is still ready, delayed or leased; returns ``(message id, published)``, the id being
      that earlier message's when nothing was published. The key is free again once that
      message is acknowledged, dead-lettered or purged.

Transports open their connections on first use, once per process, and again after a fork.
"""

from __future__ import annotations

import abc
import functools
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_PRIORITY = 9
DEFAULT_LEASE = 30.0
DEFAULT_MAX_DELIVERIES = 3
DEAD_LETTER_QUEUE = "celeriac.dead"
#: Seconds after its time that a reserved turn of ``throttle`` is kept for its claim.
TURN_GRACE = 300.0

#: ``(key, value, ttl)``: a key to write, as ``Transport.put`` takes it.
KeyWrite = tuple[str, bytes, float | None]
#: What a failed delivery or a dead letter records beside its reason (JSON-able).
Detail = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message handed to one consumer under a lease.

    ``message_id`` names the message in the broker; ``lease`` is the token that proves the
    holder still owns it; ``deliveries`` counts the times it was handed out (1 on first fetch).
    """

    queue: str
    body: bytes
    message_id: str
    lease: str
    deliveries: int
    priority: int = 0


_DELIVERY_SETTERS = tuple(
    getattr(Delivery, name).__set__
    for name in ("queue", "body", "message_id", "lease", "deliveries", "priority")
)


def make_delivery(
    queue: str, body: bytes, message_id: str, lease: str, deliveries: int, priority: int
) -> Delivery:
    """``Delivery(...)`` for an engine's fetch, which makes one per message: its slots filled
    directly, past the frozen dataclass's ``__init__`` (a setattr call per field, twice the
    cost). The values are the engine's own, already of the right types."""
    made: Delivery = object.__new__(Delivery)
    put_queue, put_body, put_id, put_lease, put_deliveries, put_priority = _DELIVERY_SETTERS
    put_queue(made, queue)
    put_body(made, body)
    put_id(made, message_id)
    put_lease(made, lease)
    put_deliveries(made, deliveries)
    put_priority(made, priority)
    return made


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message moved to the dead-letter queue, with why and what happened to it."""

    message_id: str
    queue: str
    body: bytes
    reason: str
    deliveries: int
    dead_at: float
    history: list[dict[str, Any]] = field(default_factory=list)


class Subscription(abc.ABC):
    """What ``Transport.listen`` returns: the bodies broadcast on some topics since it opened."""

    @abc.abstractmethod
    def get(self, timeout: float | None = None) -> list[tuple[str, bytes]]:
        """Return ``(topic, body)`` pairs broadcast since the last call; wait up to ``timeout``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop listening."""

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Transport(abc.ABC):
    """The base class of every engine; see the module docstring for the contract."""

    #: URL schemes this engine answers to.
    schemes: tuple[str, ...] = ()

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.options = dict(options or {})
        self.max_deliveries = int(self.options.get("max_deliveries", DEFAULT_MAX_DELIVERIES))
        if self.max_deliveries < 1:
            raise ValueError("max_deliveries must be at least 1")

    # -- queues ---------------------------------------------------------------------------

    @abc.abstractmethod
    def publish(
        self, queue: str, body: bytes, *, due: float | None = None, priority: int = 0
    ) -> str:
        """Put ``body`` on ``queue``; return the message id."""

    def publisher(self, queue: str, priority: int = 0) -> Callable[[bytes], str]:
        """A function that puts a body on ``queue`` with ``priority``, due now, and returns
        the message id: for a caller that sends many messages the same way (a task's plain
        calls). The queue and priority are checked here, once; engines may do more ahead."""
        check_message(queue, b"", None, priority)
        return functools.partial(self.publish, queue, priority=priority)

    def publish_many(self, items: Iterable[tuple[str, bytes, float | None, int]]) -> list[str]:
        """Publish ``(queue, body, due, priority)`` items; engines batch this."""
        return [self.publish(q, b, due=d, priority=p) for q, b, d, p in items]

    @abc.abstractmethod
    def publish_once(
        self,
        key: str,
        items: Sequence[tuple[str, bytes, float | None, int]],
        ttl: float | None = None,
    ) -> list[str] | None:
        """Publish ``items`` and set ``key`` (for ``ttl`` seconds) unless ``key`` exists.

        Returns the new message ids, or ``None`` (nothing published) when ``key`` exists.
        """

    @abc.abstractmethod
    def fetch(
        self,
        queues: Sequence[str],
        limit: int = 1,
        timeout: float = 0.0,
        lease: float = DEFAULT_LEASE,
    ) -> list[Delivery]:
        """Lease up to ``limit`` deliverable messages; wait up to ``timeout`` for the first."""

    @abc.abstractmethod
    def ack(self, delivery: Delivery) -> bool:
        """Delete a delivered message; ``False`` if the lease was lost."""

    def ack_many(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Acknowledge several deliveries; engines batch this."""
        return [self.ack(d) for d in deliveries]

    def complete(self, items: Sequence[tuple[Delivery, KeyWrite | None]]) -> list[bool]:
        """Acknowledge deliveries and store a key for each (a task's result), atomically.

        For each item, when the lease is still held, the message is deleted and the key
        written; when it was lost, nothing happens and the answer is ``False``: a worker that
        lost its lease never overwrites the result of the worker that now owns the task.
        Engines make each item (or the whole batch) one atomic step.
        """
        done = []
        for delivery, write in items:
            ok = self.ack(delivery)
            if ok and write is not None:
                self.put(*write)
            done.append(ok)
        return done

    @abc.abstractmethod
    def release(
        self, delivery: Delivery, reason: str | None = None, detail: Detail | None = None
    ) -> bool:
        """Give a delivery back; with ``reason`` it counts as a failed delivery.

        ``detail`` (only with a reason) is kept in the history entry of that failed delivery.
        """

    @abc.abstractmethod
    def retry(self, delivery: Delivery, due: float | None, body: bytes | None = None) -> bool:
        """Put a delivered message back at ``due``, with a new body if given."""

    @abc.abstractmethod
    def extend(self, deliveries: Sequence[Delivery], lease: float) -> list[Delivery]:
        """Renew leases for ``lease`` seconds from now; return those still held."""

    @abc.abstractmethod
    def dead_letter(self, delivery: Delivery, reason: str, detail: Detail | None = None) -> bool:
        """Move a delivered message to the dead-letter queue; ``detail`` goes in its history."""

    @abc.abstractmethod
    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The most recent dead letters, newest first."""

    @abc.abstractmethod
    def redrive(self, message_id: str) -> bool:
        """Put a dead letter back on its queue with a fresh delivery count."""

    @abc.abstractmethod
    def dead_letter_count(self) -> int:
        """How many messages the dead-letter queue holds."""

    @abc.abstractmethod
    def purge_dead_letters(self) -> int:
        """Delete every dead letter; return how many."""

    @abc.abstractmethod
    def size(self, queue: str) -> int:
        """Messages on ``queue`` that are not acknowledged (ready, delayed or leased)."""

    @abc.abstractmethod
    def purge(self, queue: str) -> int:
        """Delete the messages of ``queue`` that are not leased; return how many."""

    # -- keys -----------------------------------------------------------------------------

    @abc.abstractmethod
    def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``, expiring after ``ttl`` seconds if given."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes | None:
        """The value under ``key``, or ``None``."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` if present."""

    @abc.abstractmethod
    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Add ``amount`` to the integer under ``key`` (0 if absent); return the new value."""

    def wait(self, key: str, timeout: float | None = None) -> bytes | None:
        """Block until ``key`` exists; return its value, or ``None`` after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.0005
        while True:
            value = self.get(key)
            if value is not None:
                return value
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                pause = min(pause, left)
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    # -- topics ---------------------------------------------------------------------------

    @abc.abstractmethod
    def broadcast(self, topic: str, body: bytes) -> None:
        """Append ``body`` to ``topic`` for every current listener."""

    @abc.abstractmethod
    def listen(self, topics: Sequence[str]) -> Subscription:
        """Subscribe to ``topics`` from now on."""

    # -- limits ---------------------------------------------------------------------------

    @abc.abstractmethod
    def publish_unique(
        self, queue: str, body: bytes, key: str, *, due: float | None = None, priority: int = 0
    ) -> tuple[str, bool]:
        """Publish unless a live message holds ``key``: ``(message id, published)``."""

    @abc.abstractmethod
    def defer(self, delivery: Delivery, due: float, waiting_on: str | None = None) -> bool:
        """Give a delivery back unstarted until ``due`` (or a slot of ``waiting_on`` frees)."""

    @abc.abstractmethod
    def throttle(self, key: str, interval: float, claim: str) -> float | None:
        """None: go now; else the broker time of the turn reserved for ``claim``."""

    @abc.abstractmethod
    def acquire_slot(self, key: str, holder: str, limit: int, ttl: float) -> float | None:
        """None: ``holder`` holds a slot of ``key``; else when the soonest slot runs out."""

    @abc.abstractmethod
    def renew_slots(self, slots: Sequence[tuple[str, str]], ttl: float) -> list[bool]:
        """Renew ``(key, holder)`` slots for ``ttl`` seconds; whether each was still held."""

    @abc.abstractmethod
    def release_slots(self, slots: Sequence[tuple[str, str]]) -> None:
        """Free ``(key, holder)`` slots; wake one message waiting on each key."""

    # -- life -----------------------------------------------------------------------------

    def instance_id(self) -> str | None:
        """A name for the broker's current state that changes if that state is lost.

        A worker compares it over time: a Redis restarted without persistence comes back
        empty, and the worker reports it instead of carrying on silently. Engines whose
        state cannot vanish that way return None.
        """
        return None

    def server_warnings(self) -> list[str]:
        """Settings of the broker server that put acknowledged work at risk, in plain words."""
        return []

    def close(self) -> None:
        """Release connections; the transport reopens them if used again."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"


# -- argument checks shared by every engine ------------------------------------------------


def check_message(queue: str, body: bytes, due: float | None, priority: int) -> None:
    """Refuse a publish that no engine could store faithfully."""
    check_name("queue", queue)
    _check_payload(body, due, priority)


def _check_payload(body: bytes, due: float | None, priority: int) -> None:
    """What ``check_message`` checks besides the queue name."""
    check_bytes("body", body)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(f"priority must be an int, not {type(priority).__name__}")
    if not 0 <= priority <= MAX_PRIORITY:
        raise ValueError(f"priority must be between 0 and {MAX_PRIORITY}, not {priority}")
    check_due(due)


def check_messages(
    items: Iterable[tuple[str, bytes, float | None, int]],
) -> list[tuple[str, bytes, float | None, int]]:
    """The ``(queue, body, due, priority)`` items of a batch, each checked before any is sent."""
    batch = list(items)
    named: set[str] = set()  # queue names checked already: a batch often has one
    for queue, body, due, priority in batch:
        if type(queue) is not str or queue not in named:
            check_name("queue", queue)
            named.add(queue)
        _check_payload(body, due, priority)
    return batch


def check_due(due: float | None) -> None:
    """A due time is ``None`` or a finite number of seconds since the epoch."""
    if due is None:
        return
    if isinstance(due, bool) or not isinstance(due, int | float):
        raise TypeError(f"due must be seconds since the epoch, not {type(due).__name__}")
    if not math.isfinite(due):
        raise ValueError(f"due must be finite, not {due}")


def check_fetch(queues: Sequence[str], limit: int, timeout: float, lease: float) -> list[str]:
    """Validate fetch arguments; return the queue names, without duplicates."""
    if isinstance(queues, str):
        raise TypeError("queues must be a sequence of queue names, not one string")
    names = list(dict.fromkeys(queues))
    if not names:
        raise ValueError("fetch needs at least one queue")
    for name in names:
        check_name("queue", name)
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int, not {type(limit).__name__}")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    if not timeout >= 0:
        raise ValueError(f"timeout must be zero or more, not {timeout}")
    check_lease(lease)
    return names


def check_lease(lease: float) -> None:
    """A lease is a positive, finite number of seconds."""
    if not 0 < lease < math.inf:
        raise ValueError(f"lease must be a positive number of seconds, not {lease}")


def check_key(key: str, value: bytes, ttl: float | None) -> None:
    """Validate the arguments of ``put`` and ``incr`` (and of each result ``complete`` writes,
    so the common case costs no calls)."""
    if type(key) is not str or not key:
        check_name("key", key)
    if type(value) is not bytes:
        check_bytes("value", value)
    if ttl is not None and not 0 < ttl < math.inf:
        raise ValueError(f"ttl must be a positive number of seconds, not {ttl}")


def check_detail(detail: Detail | None) -> str | None:
    """The detail of a failed delivery as JSON text (None without one); refuse what is not."""
    if detail is None:
        return None
    if not isinstance(detail, dict):
        raise TypeError(f"detail must be a dict, not {type(detail).__name__}")
    try:
        return json.dumps(detail, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"detail must be JSON-able: {exc}") from None


def check_topic(topic: str, body: bytes) -> None:
    """Validate the arguments of ``broadcast``."""
    check_name("topic", topic)
    check_bytes("body", body)


def check_topics(topics: Sequence[str]) -> frozenset[str]:
    """Validate the topics of ``listen``."""
    if isinstance(topics, str):
        raise TypeError("topics must be a sequence of topic names, not one string")
    names = frozenset(topics)
    if not names:
        raise ValueError("listen needs at least one topic")
    for name in names:
        check_name("topic", name)
    return names


def check_bytes(what: str, value: bytes) -> None:
    """Transports move bytes; serializing is the caller's job."""
    if not isinstance(value, bytes):
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")


def check_name(what: str, name: str) -> None:
    """Queue, key and topic names are non-empty strings."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError(f"{what} must not be empty")


def check_throttle(key: str, interval: float, claim: str) -> None:
    """Validate the arguments of ``throttle``."""
    check_name("key", key)
    check_name("claim", claim)
    if isinstance(interval, bool) or not isinstance(interval, int | float):
        raise TypeError(f"interval must be a number of seconds, not {type(interval).__name__}")
    if not 0 < interval < math.inf:
        raise ValueError(f"interval must be a positive number of seconds, not {interval}")


def check_slot(key: str, holder: str, limit: int, ttl: float) -> None:
    """Validate the arguments of ``acquire_slot``."""
    check_name("key", key)
    check_name("holder", holder)
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int, not {type(limit).__name__}")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    check_lease(ttl)
