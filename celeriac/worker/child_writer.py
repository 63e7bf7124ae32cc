"""When a consuming prefork child (``celeriac.worker.child``) writes the endings of its jobs.

The child runs jobs one after another and writes their results and acknowledgements several
at a time, one broker call for the lot: on a backlog of short tasks that is most of its speed.
An ending must not wait long to be written, though: ``AsyncResult.get()`` waits for it, and the
finished task's lease is held until it is acknowledged. So the endings wait (``Unwritten``):

- until the child has nothing more to run, or the oldest has waited ``WRITE_AFTER`` when the
  next job starts, or the next job has follow-ups (the main thread writes them then);
- at most ``WRITE_WITHIN`` while a job runs: this module's thread writes them, so that a result
  never waits for a slow job that happened to come in the same batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from celeriac.worker.pools import Event

#: Seconds the oldest unwritten ending may wait when the next job starts.
WRITE_AFTER = 0.005
#: Seconds the oldest unwritten ending may wait while a job runs (the writer thread's bound).
WRITE_WITHIN = 0.02
#: Seconds without endings after which the writer thread parks until the next one: under load
#: it keeps looking every ``WRITE_WITHIN`` instead, as waking a parked thread costs the main
#: thread more than the thread's looks cost.
PARK_AFTER = 0.5


class Unwritten:
    """Endings of finished jobs not written yet, and the thread that bounds their wait."""

    def __init__(self, write: Callable[[list[Event]], None]) -> None:
        """``write`` handles a list of endings (the consumer's ``handle_now``)."""
        self._write = write
        self._events: list[Event] = []
        self._since = 0.0  # when the oldest of them was added
        self._lock = threading.Lock()
        self._added = threading.Event()  # wakes the parked thread when endings arrive
        self._parked = False
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="result-writer", daemon=True)

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def add(self, events: list[Event]) -> None:
        """Keep ``events`` for the next write."""
        with self._lock:
            if not self._events:
                self._since = time.monotonic()
            self._events += events
            wake, self._parked = self._parked, False
        if wake:
            self._added.set()

    def age(self) -> float | None:
        """Seconds the oldest unwritten ending has waited (None: none waits)."""
        with self._lock:
            return time.monotonic() - self._since if self._events else None

    def write(self) -> None:
        """Write every ending that waits, in the calling thread."""
        with self._lock:
            events, self._events = self._events, []
        if events:
            self._write(events)

    def close(self) -> None:
        """Write what waits and stop the thread."""
        self._closed = True
        self._added.set()
        self._thread.join(2.0)
        self.write()

    def _loop(self) -> None:
        """Sleep until the oldest ending is due, and write it if it still waits then; park
        once none has come for ``PARK_AFTER``. It wakes about twice per ``WRITE_WITHIN`` at
        most, however short the jobs: a wakeup per batch of short jobs would cost a backlog
        more than the writes."""
        last_seen = time.monotonic()
        while not self._closed:
            now = time.monotonic()
            with self._lock:
                due = self._since + WRITE_WITHIN if self._events else None
                if due is not None:
                    last_seen = now
                park = due is None and now - last_seen >= PARK_AFTER
                if park:
                    self._parked = True
                    self._added.clear()
            if due is None:
                if park:
                    self._added.wait()  # set by add() (or close()) once parked
                    last_seen = time.monotonic()
                time.sleep(WRITE_WITHIN)  # what woke it is not due sooner
            elif now < due:
                time.sleep(max(0.0, due - time.monotonic()))
            else:
                self.write()
