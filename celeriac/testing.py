"""Helpers for testing code that uses celeriac: a worker in a thread, and ``join()``.

    app = Celeriac("t", broker="memory://t")
    with start_worker(app) as worker:
        add.delay(2, 2)
        worker.join()          # returns when every queue is empty and nothing runs

No sleeps: ``join`` watches the broker and the worker's own bookkeeping.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from celeriac.errors import TimeoutError
from celeriac.worker.consumer import Consumer
from celeriac.worker.pools import Event, create_pool
from celeriac.worker.worker import default_hostname

if TYPE_CHECKING:
    from celeriac.app import Celeriac


class WorkerThread:
    """A consumer and its pool running in a background thread of this process."""

    def __init__(
        self,
        app: Celeriac,
        pool: str = "threads",
        concurrency: int = 2,
        queues: list[str] | None = None,
    ) -> None:
        self.app = app
        self.queues = queues or [app.conf.task_default_queue]
        events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        hostname = default_hostname("test@%h")
        self.pool = create_pool(pool, app, concurrency, hostname, events)
        self.consumer = Consumer(app, self.pool, events, self.queues, hostname)
        self._thread = threading.Thread(target=self._run, name="celeriac-test-worker", daemon=True)

    def _run(self) -> None:
        self.consumer.run()
        self.consumer.wait_running(10.0)

    def start(self) -> WorkerThread:
        """Start consuming."""
        self.app.finalize()
        self.pool.start()
        self.consumer.start()
        self._thread.start()
        return self

    def join(self, timeout: float = 10.0) -> None:
        """Wait until the worker's queues are empty and nothing is in flight."""
        deadline = time.monotonic() + timeout
        pause = 0.001
        while True:
            idle = not self.consumer.inflight and self.consumer.events.empty()
            if idle and all(self.app.broker.size(q) == 0 for q in self.queues):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"work still pending after {timeout}s")
            time.sleep(pause)
            pause = min(pause * 2, 0.02)

    def stop(self) -> None:
        """Stop after the running jobs finish."""
        self.consumer.stop()
        self._thread.join(15)
        self.pool.stop(timeout=5)
        self.consumer.close()


@contextlib.contextmanager
def start_worker(
    app: Celeriac, pool: str = "threads", concurrency: int = 2, queues: list[str] | None = None
) -> Iterator[WorkerThread]:
    """Run a worker in a thread for the duration of a ``with`` block."""
    worker = WorkerThread(app, pool, concurrency, queues).start()
    try:
        yield worker
    finally:
        worker.stop()
