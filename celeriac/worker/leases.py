"""Lease renewal: the leases and concurrency slots of everything a worker holds, renewed by
a part that a busy task cannot starve.

The consumer tells the ``LeaseKeeper`` what it took (``hold``, from the fetcher, before any
of it can start) and, after each batch of events, what it still holds (``update``); what
ended is dropped. A ``Renewer`` (``celeriac.worker.renewal``) renews the rest every third of
a lease, in one of two places:

- a thread of the worker process, for the prefork pool: its tasks run in child processes
  and cannot starve the parent (and no extra process costs memory);
- the lease helper process, for the threads, asyncio and solo pools, whose tasks run in the
  worker process and can hold its GIL for as long as a C call lasts. It renews only while
  the worker runs (not stopped by SIGSTOP, not gone).

What a round finds lost the keeper's thread logs ("lease lost on message ...") and counts.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from celeriac.worker.renewal import Helper, Renewer

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.metrics import WorkerMetrics
    from celeriac.transports.base import Delivery
    from celeriac.worker.limits import Slot

logger = logging.getLogger("celeriac.worker")

#: Seconds the worker waits for its lease helper to start before renewing in a thread.
HELPER_START_TIMEOUT = 15.0


class Held(Protocol):
    """What the consumer holds for one job (``celeriac.worker.consumer.Inflight``)."""

    @property
    def delivery(self) -> Delivery: ...
    @property
    def acked(self) -> bool: ...
    @property
    def slot(self) -> Slot | None: ...


class Owner(Protocol):
    """The consumer, as the keeper sees it: where lease counts go."""

    metrics: WorkerMetrics | None
    #: ``time.monotonic()`` of the last successful broker call (the health file reads it)
    last_broker_ok: float


class LeaseKeeper:
    """Keeps the leases of what the consumer holds; in a thread, or through a helper process."""

    def __init__(self, app: Celeriac, lease: float, owner: Owner, helper: bool) -> None:
        self.app = app
        self.lease = lease
        self.owner = owner
        self.interval = lease / 3
        self._want_helper = helper and not app.broker_url.startswith("memory:")
        self._helper: Helper | None = None
        self._renewer: Renewer | None = None  # when renewing in this process
        self._held: dict[str, Delivery] = {}  # what the renewer was told to renew
        self._held_at: dict[str, float] = {}  # lease token -> when it was fetched (monotonic)
        self._renewed_at = 0.0  # when the last round that renewed everything held began
        self._pending: set[str] = set()  # fetched, not yet seen by the consumer's main loop
        self._dropped: list[str] = []  # ended, not yet told: sent with the next message
        self._slots: set[Slot] = set()
        self._lock = threading.RLock()  # see Renewer._lock
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lease-keeper", daemon=True)

    @property
    def where(self) -> str:
        """Where the renewals run: ``helper process <pid>`` or ``thread``."""
        return f"helper process {self._helper.pid}" if self._helper is not None else "thread"

    def start(self) -> None:
        """Start the helper and wait until it runs, or the renewer; then the keeper's thread.

        The worker fetches only after this: a first task that holds the GIL at once must find
        its lease renewed by a helper that is already running (starting one takes a good part
        of a second, more on a busy host, and a short lease could lapse meanwhile).
        """
        self._use(self._spawn_helper() if self._want_helper else None)
        if self._helper is not None and not self._helper.ready(HELPER_START_TIMEOUT):
            self._fall_back()
        self._thread.start()

    # -- what the consumer holds ----------------------------------------------------------

    def hold(self, deliveries: list[Delivery]) -> None:
        """Renew these fetched deliveries from now on (called before they reach the pool)."""
        now = time.monotonic()
        with self._lock:
            for delivery in deliveries:
                self._held[delivery.lease] = delivery
                self._held_at[delivery.lease] = now
                self._pending.add(delivery.lease)
            self._send(("hold", deliveries, self._take_dropped()))

    def arrived(self, deliveries: list[Delivery]) -> None:
        """The main loop has these now: from here on ``update`` says whether they are held."""
        with self._lock:
            self._pending.difference_update(d.lease for d in deliveries)

    def hold_slot(self, slot: Slot) -> None:
        """Renew a concurrency slot taken for a job (called before the job starts)."""
        with self._lock:
            self._slots.add(slot)
            self._send(("slot", slot))

    def update(self, items: Iterable[Held]) -> None:
        """``items`` is everything held now: stop renewing the rest."""
        leases = {i.delivery.lease for i in items if not i.acked}
        slots = {i.slot for i in items if i.slot is not None}
        with self._lock:
            ended = [t for t in self._held if t not in leases and t not in self._pending]
            gone = [s for s in self._slots if s not in slots]
            if not ended and not gone:
                return
            for token in ended:
                del self._held[token]
                self._held_at.pop(token, None)
            self._dropped += ended
            self._slots.difference_update(gone)
            if gone or self._helper is None:  # else sent with the next message: fewer wakeups
                self._send(("drop", self._take_dropped(), gone))

    def fresh(self, delivery: Delivery) -> bool:
        """True while ``delivery``'s lease is surely still ours: fetched, or renewed by the last
        round, less than a lease ago. False after a freeze (SIGSTOP) or a starved renewer; the
        lease may be another worker's by now (``confirm`` asks the broker)."""
        with self._lock:
            since = self._held_at.get(delivery.lease)
            if since is None:
                return False  # ended, or reported lost
            return max(since, self._renewed_at) + self.lease > time.monotonic()

    def confirm(self, delivery: Delivery) -> bool:
        """Renew ``delivery``'s lease now; False if it was lost (another worker may run it)."""
        try:
            kept = self.app.broker.extend([delivery], self.lease)
        except Exception:
            logger.warning("could not renew the lease of %s; it runs, its ack decides",
                           delivery.message_id)  # fmt: skip
            return True
        if not kept:
            return False
        with self._lock:
            if delivery.lease in self._held_at:
                self._held_at[delivery.lease] = time.monotonic()
        return True

    def _take_dropped(self) -> list[str]:
        dropped, self._dropped = self._dropped, []
        return dropped

    def close(self) -> None:
        """Stop renewing (the worker is done); the helper exits."""
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join(self.interval + 2.0)
        if self._helper is not None:
            self._helper.stop()

    # -- the keeper's thread --------------------------------------------------------------

    def _send(self, message: tuple[Any, ...]) -> None:
        """Pass a message to the renewer; hold the lock."""
        if self._helper is None:
            assert self._renewer is not None
            self._renewer.apply(message)
            return
        with contextlib.suppress(OSError):  # the helper died: the keeper's thread starts
            self._helper.send(message)  # another and tells it everything held

    def _loop(self) -> None:
        known = _broker_instance(self.app, None, 0, self.owner)
        next_round = time.monotonic() + self.interval
        while not self._closed.is_set():
            wait = max(0.0, next_round - time.monotonic())
            if self._helper is not None:
                self._read_helper(wait)
            else:
                self._closed.wait(wait)
            with self._lock:
                if self._dropped:
                    self._send(("drop", self._take_dropped(), []))
            if time.monotonic() < next_round or self._closed.is_set():
                continue
            next_round = time.monotonic() + self.interval
            known = _broker_instance(self.app, known, len(self._held), self.owner)
            if self._helper is None:
                assert self._renewer is not None
                report = self._renewer.renew()
                if report is not None:
                    self._report(report)

    def _read_helper(self, wait: float) -> None:
        """Take the helper's reports for up to ``wait`` seconds; replace it if it died."""
        assert self._helper is not None
        try:
            for report in self._helper.receive(wait):
                self._report(report)
        except (EOFError, OSError):
            if not self._closed.is_set():
                self._replace_helper()

    def _replace_helper(self) -> None:
        logger.error("The lease helper process exited; starting another")
        if self._helper is not None:
            self._helper.stop()
        self._use(self._spawn_helper())
        if self._helper is not None and not self._helper.ready(HELPER_START_TIMEOUT):
            self._fall_back()

    def _fall_back(self) -> None:
        logger.warning("The lease helper process did not start; renewing leases in a thread, "
                       "where a task that holds the GIL can starve them")  # fmt: skip
        if self._helper is not None:
            self._helper.stop()
        self._use(None)

    def _spawn_helper(self) -> Helper | None:
        try:
            return Helper.spawn(self.app, self.lease)
        except Exception as exc:  # say, transport options that cannot be pickled
            logger.warning("Cannot start the lease helper process: %s", exc)
            return None

    def _use(self, helper: Helper | None) -> None:
        """Renew through ``helper``, else in this process; tell it everything held."""
        with self._lock:
            self._helper = helper
            if helper is None:
                self._renewer = Renewer(self.app.broker, self.lease)
            if self._held:
                self._send(("hold", list(self._held.values()), self._take_dropped()))
            for slot in self._slots:
                self._send(("slot", slot))
        logger.debug("Leases renewed by the worker's %s", self.where)

    def _report(self, report: tuple[Any, ...]) -> None:
        if report[0] == "error":
            logger.error("renewing leases failed: %s", report[1])
            return
        _, kept, lost, lost_slots, started = report
        with self._lock:
            lost = [(t, m) for t, m in lost if t in self._held]  # else ended meanwhile
            for token, _ in lost:
                self._held_at.pop(token, None)  # not fresh: a job not started yet is skipped
            self._renewed_at = max(self._renewed_at, started)
        metrics = self.owner.metrics
        if metrics is not None:
            metrics.leases(kept, len(lost))
        for _, message_id in lost:
            logger.warning("lease lost on message %s", message_id)
        for key in lost_slots:
            logger.warning("concurrency slot %s ran out while its task ran", key)


def _broker_instance(app: Celeriac, known: str | None, held: int, owner: Owner) -> str | None:
    """Report a broker that lost its state (a Redis restarted without persistence)."""
    try:
        current = app.broker.instance_id()
    except Exception:
        return known  # the broker is away; the transport reconnects
    owner.last_broker_ok = time.monotonic()  # for a worker whose fetches happen elsewhere
    if known is not None and current != known:
        logger.error(
            "The broker %s lost its state (restarted without persistence?): work queued "
            "before is gone; %d task(s) held here will be stored but cannot be acknowledged",
            app.broker_url, held,
        )  # fmt: skip
    return current
