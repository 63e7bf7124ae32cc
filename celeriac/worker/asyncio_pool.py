"""The asyncio pool: ``async def`` tasks run concurrently on one event loop.

Up to ``concurrency`` jobs run at once. A coroutine task is awaited on the loop itself; a
plain (sync) task runs in a thread beside it, so it never blocks the loop that serves the
async ones. Time limits cancel the coroutine: at the soft limit the task sees
``CancelledError`` and may clean up, and the job is recorded as failed with
``SoftTimeLimitExceeded``; at the hard limit it is recorded with ``TimeLimitExceeded``.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from celeriac import states
from celeriac.errors import SoftTimeLimitExceeded, TimeLimitExceeded
from celeriac.task import Request
from celeriac.trace import Outcome, trace_task_async
from celeriac.worker.execute import JobDone, describe_outcome
from celeriac.worker.pools import Event, Job, Pool, run_job

if TYPE_CHECKING:
    import queue

    from celeriac.app import Celeriac


class AsyncioPool(Pool):
    """One event loop thread for coroutine tasks, with a thread pool for sync ones."""

    name = "asyncio"

    def __init__(
        self, app: Celeriac, concurrency: int, hostname: str, events: queue.SimpleQueue[Event]
    ) -> None:
        super().__init__(app, concurrency, hostname, events)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="asyncio-pool", daemon=True)
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="AsyncioPoolSync")
        self._lock = threading.Lock()
        self._queued: dict[int, Job] = {}
        self._running = 0
        self._slots: asyncio.Semaphore | None = None

    def start(self) -> None:
        """Start the loop thread."""
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._slots = asyncio.Semaphore(self.concurrency)
        self.loop.run_forever()

    def submit(self, job: Job) -> None:
        """Schedule the job on the loop; it starts when one of the slots is free."""
        with self._lock:
            self._queued[job.job_id] = job
        asyncio.run_coroutine_threadsafe(self._run(job), self.loop)

    def take_back(self) -> list[int]:
        """Jobs waiting for a slot are removed and will not start."""
        with self._lock:
            taken = list(self._queued)
            self._queued.clear()
        return taken

    async def _run(self, job: Job) -> None:
        assert self._slots is not None
        async with self._slots:
            with self._lock:
                if self._queued.pop(job.job_id, None) is None:
                    return  # taken back at shutdown
                if not self._starting(job):
                    return
                self._running += 1
            try:
                done = await self._execute(job)
            finally:
                with self._lock:
                    self._running -= 1
        self.events.put(("done", done))

    async def _execute(self, job: Job) -> JobDone:
        task = self.app.tasks.get(job.message.task)
        if task is None or not inspect.iscoroutinefunction(task.run):
            return await self.loop.run_in_executor(
                self._executor, run_job, self.app, job, self.hostname
            )
        request = Request.from_message(job.message, self.hostname, job.delivery, eager=False)
        outcome = await self._limited(trace_task_async(task, request), job)
        return describe_outcome(self.app, job.job_id, job.message, self.hostname, outcome)

    async def _limited(self, coro: Any, job: Job) -> Outcome:
        """Await the traced task, cancelling it at its soft or hard time limit."""
        running = asyncio.ensure_future(coro)
        fired: list[BaseException] = []

        def expire(error: BaseException) -> None:
            if not running.done():
                fired.append(error)
                running.cancel()

        timers = []
        soft, hard = job.soft_time_limit, job.time_limit
        if soft:
            error = SoftTimeLimitExceeded(f"soft time limit ({soft}s) exceeded")
            timers.append(self.loop.call_later(soft, expire, error))
        if hard:
            timers.append(
                self.loop.call_later(hard, expire, TimeLimitExceeded(f"hard time limit ({hard}s)"))
            )
        started = time.perf_counter()
        try:
            outcome: Outcome = await asyncio.shield(running)
        finally:
            for timer in timers:
                timer.cancel()
        if fired and outcome.state == states.FAILURE:
            outcome = Outcome(states.FAILURE, fired[-1], outcome.traceback)
            outcome.runtime = time.perf_counter() - started
        return outcome

    def stop(self, timeout: float) -> None:
        """Wait for running jobs (up to ``timeout``), then stop the loop."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._running and not self._queued:
                    break
            time.sleep(0.01)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(2.0)
        self._executor.shutdown(wait=False, cancel_futures=True)
