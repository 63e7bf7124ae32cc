"""The finisher: acknowledges finished work and stores results in batches, off the main loop.

The main loop only hands finished deliveries over; this thread writes them with one
``Transport.complete`` call per round, taking everything that piled up while the previous
write was in progress. Under load the batches grow by themselves. A worker with nothing
else in hand writes in the main loop itself, one wakeup sooner.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from celeriac.transports.base import Delivery, KeyWrite

if TYPE_CHECKING:
    from celeriac.app import Celeriac

logger = logging.getLogger("celeriac.worker")

Item = tuple[Delivery, KeyWrite | None]


class Finisher:
    """A thread that completes deliveries (ack + result) in batches."""

    def __init__(self, app: Celeriac) -> None:
        self.app = app
        self._items: list[Item] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = False
        self._thread = threading.Thread(target=self._loop, name="finisher", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def submit(self, items: list[Item], now: bool = False) -> None:
        """Queue finished deliveries for the next write; or, with ``now`` (the worker has
        nothing else to do) and no write in progress, write them in the calling thread: an
        idle worker then stores a result without waking another thread, which costs more
        than the write on a small machine."""
        with self._cond:
            if not now or self._busy or self._items or self._stopping:
                self._items.extend(items)
                self._cond.notify()
                return
            self._busy = True
        self._write_safely(items)

    def pending(self) -> int:
        """Deliveries handed over and not yet written."""
        with self._cond:
            return len(self._items) + (1 if self._busy else 0)

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while (self._busy or not self._items) and not self._stopping:
                    self._cond.wait()
                if not self._items:
                    return
                batch, self._items = self._items, []
                self._busy = True
            self._write_safely(batch)

    def _write_safely(self, batch: list[Item]) -> None:
        """One write at a time, whichever thread makes it."""
        try:
            self._write(batch)
        except Exception:
            # Unwritten work keeps no lease renewal: it is delivered again. Nothing lost.
            logger.exception("storing %d result(s) failed; redelivery follows", len(batch))
        finally:
            with self._cond:
                self._busy = False
                if self._items:
                    self._cond.notify()

    def _write(self, batch: list[Item]) -> None:
        """Ack and store; one atomic step when the results live in the broker."""
        broker, store = self.app.broker, self.app.results.transport
        if store is broker:
            answers = broker.complete(batch)
        else:
            for _, write in batch:
                if write is not None:
                    store.put(*write)
            answers = broker.ack_many([delivery for delivery, _ in batch])
        for (delivery, _), ok in zip(batch, answers, strict=True):
            if not ok:
                logger.warning("ack of %s refused: its lease was lost", delivery.message_id)
