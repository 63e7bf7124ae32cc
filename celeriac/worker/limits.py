"""The worker's side of rate limits and concurrency limits: run a fetched message now, or
give it back to the broker until it may run.

Before a fetched message of a limited task gets a pool slot (``Limits.admit``):

1. Rate limit: the broker hands out the task's turns (``Transport.throttle``), one per
   interval for the whole cluster (or per worker, with ``rate_limit_scope="worker"``). When
   the turn is later, the message goes back to the broker until then (``Transport.defer``,
   not counted as a delivery), and the turn stays reserved for it: it runs when it comes
   back, without asking again. A backlog so waits in the broker's delayed set, each message
   touched twice, and no worker sleeps on it or polls for it.
2. Concurrency limit: the message takes one of the key's slots (``Transport.acquire_slot``),
   held under its lease token and renewed with the leases (``celeriac.worker.leases``), so
   that the slot of a worker that was SIGKILLed runs out within one lease period. With no
   slot free it goes back to the broker to wait for one (``defer(..., waiting_on=key)``): a
   finished task releases its slot and wakes the longest-waiting message at once; the
   soonest expiry of a slot is the latest time it looks again, in case a holder died.

The rate in force is, first to last: one set for this worker alone by remote control, one set
for every worker by remote control (stored in the broker, read again every ``REFRESH``
seconds and at once when a ``rate_limit`` command arrives), the task's, the app's default.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING, Any

from celeriac.limits import (
    RATE_LIMIT_KEY,
    concurrency_key,
    parse_rate,
    parse_scope,
    rate_bucket,
    slot_key,
)

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.message import Message
    from celeriac.task import Task
    from celeriac.transports.base import Delivery

logger = logging.getLogger("celeriac.worker")

#: Seconds between reads of a task's rate limit as stored in the broker by remote control.
REFRESH = 2.0
#: ``(slot key, holder)``: a concurrency slot held by a running task.
Slot = tuple[str, str]
#: ``parse_rate``, remembered: the per-message path reads the task's rate text each time.
_rate_of = functools.lru_cache(maxsize=256)(parse_rate)


class Limits:
    """Admits fetched messages under their task's limits; keeps the slots they hold."""

    def __init__(self, app: Celeriac, hostname: str, lease: float) -> None:
        self.app = app
        self.hostname = hostname
        self.lease = lease
        #: task name -> rate (tasks per second, None for none), set for this worker alone
        self.local: dict[str, float | None] = {}
        self._stored: dict[str, tuple[float, float | None, bool]] = {}  # name -> (read, rate, set)
        self._releases: list[Slot] = []
        conf = app.conf
        self._default_rate = parse_rate(conf.task_default_rate_limit)
        self._default_scope = parse_scope(conf.task_default_rate_limit_scope)

    # -- admitting ------------------------------------------------------------------------

    def admit(self, delivery: Delivery, message: Message) -> tuple[bool, Slot | None]:
        """``(True, slot or None)`` to run now; ``(False, None)`` when given back to wait.

        Raises ConcurrencyKeyError when the task's key function fails on these arguments.
        """
        task = self.app.tasks[message.task]
        rate = self.rate(task)
        if rate is not None and not self._take_turn(delivery, message, task, rate):
            return False, None
        if not task.concurrency_limit:
            return True, None
        key = concurrency_key(task.concurrency_key, task.name, message.args, message.kwargs)
        if key is None:
            return True, None
        slot = (slot_key(task.name, key), delivery.lease)
        broker = self.app.broker
        soonest = broker.acquire_slot(*slot, task.concurrency_limit, self.lease)
        if soonest is None:
            return True, slot
        broker.defer(delivery, soonest, waiting_on=slot[0])
        logger.debug("Concurrency limit: %s[%s] waits for a slot of %r", task.name,
                     message.id, key)  # fmt: skip
        return False, None

    def _take_turn(self, delivery: Delivery, message: Message, task: Task[Any, Any],
                   rate: float) -> bool:  # fmt: skip
        """Whether the task may start now; if not, the message is back in the broker."""
        bucket = rate_bucket(task.name, self.scope(task), self.hostname)
        turn = self.app.broker.throttle(bucket, 1.0 / rate, delivery.message_id)
        if turn is None:
            return True
        self.app.broker.defer(delivery, turn)
        logger.debug("Rate limit: %s[%s] held back %.3fs", task.name, message.id,
                     turn - time.time())  # fmt: skip
        return False

    # -- the rate in force ----------------------------------------------------------------

    def rate(self, task: Task[Any, Any]) -> float | None:
        """Tasks per second allowed for ``task``, or None for no limit."""
        name = task.name
        if name in self.local:
            return self.local[name]
        read, stored, is_set = self._stored.get(name, (-REFRESH, None, False))
        if time.monotonic() - read >= REFRESH:
            stored, is_set = self.refresh(name)
        if is_set:
            return stored
        if task.rate_limit is not None:
            return _rate_of(task.rate_limit)
        return self._default_rate

    def scope(self, task: Task[Any, Any]) -> str:
        """Where the task's rate limit holds: ``cluster`` or ``worker``."""
        return parse_scope(task.rate_limit_scope) if task.rate_limit_scope else self._default_scope

    def refresh(self, name: str) -> tuple[float | None, bool]:
        """Read the rate remote control stored for every worker: ``(rate, whether set)``."""
        previous = self._stored.get(name, (0.0, None, False))
        try:
            raw = self.app.broker.get(RATE_LIMIT_KEY + name)
            stored, is_set = (None, False) if raw is None else (parse_rate(raw.decode()), True)
        except Exception as exc:  # the broker is away, or someone stored nonsense
            logger.warning("cannot read the stored rate limit of %s: %s", name, exc)
            stored, is_set = previous[1], previous[2]
        self._stored[name] = (time.monotonic(), stored, is_set)
        return stored, is_set

    # -- slots held -----------------------------------------------------------------------

    def finished(self, slot: Slot | None) -> None:
        """A task that held ``slot`` is done: release it with the next ``flush``."""
        if slot is not None:
            self._releases.append(slot)

    def flush(self) -> None:
        """Release the slots of finished tasks, waking what waits for them."""
        if not self._releases:
            return
        slots, self._releases = self._releases, []
        try:
            self.app.broker.release_slots(slots)
        except Exception:
            logger.exception("releasing %d concurrency slot(s) failed; they run out by "
                             "themselves within %ss", len(slots), self.lease)  # fmt: skip
