"""Execution pools: where jobs run. Every pool reports to the consumer through one queue (a
pool that ``hands_off``, prefork, gives finished jobs to ``on_events`` in its own thread).

Events a pool puts on the queue::

    ("done", JobDone)                 a job finished (any state)
    ("lost", job_id, description)     the process running a job died; prefork adds a 4th
                                      item, {"pid": ..., "exitcode": ...} (negative: signal)
    ("timeout", job_id, limit)        a job passed its hard time limit and was stopped
"""

from __future__ import annotations

import abc
import logging
import os
import queue
import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeriac.trace import soft_time_limit
from celeriac.worker.execute import JobDone, failed_job, run_message

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.message import Message
    from celeriac.worker.endings import Inflight

Event = tuple[Any, ...]


@dataclass(slots=True)
class Job:
    """A message handed to a pool."""

    job_id: int
    message: Message
    body: bytes
    delivery: dict[str, Any]
    #: the limits in force: the message's, else the task's, else the app's
    time_limit: float | None = None
    soft_time_limit: float | None = None


class Pool(abc.ABC):
    """The pool interface the consumer drives."""

    name = ""
    #: monitoring and control (celeriac.worker.control): told of each job as it starts; a
    #: JobDone it returns stands for the job, which does not run (revoked while it waited)
    on_start: Callable[[Job], JobDone | None] | None = None
    #: ``submit`` only hands the job over, never runs it in the calling thread (prefork): the
    #: consumer's threads may then handle events where they happen, without the main loop
    hands_off = False
    #: set by the consumer when ``hands_off``: handles events in the calling thread; the
    #: prefork collector gives it finished jobs directly instead of through the queue
    on_events: Callable[[list[Event]], None] | None = None

    def __init__(
        self, app: Celeriac, concurrency: int, hostname: str, events: queue.SimpleQueue[Event]
    ) -> None:
        self.app = app
        self.concurrency = concurrency
        self.hostname = hostname
        self.events = events

    def _starting(self, job: Job) -> bool:
        """Tell ``on_start`` that ``job`` starts; False when it must not run after all."""
        if self.on_start is None:
            return True
        instead = self.on_start(job)
        if instead is None:
            return True
        self.events.put(("done", instead))
        return False

    def terminate_job(self, job_id: int, signum: int) -> bool:
        """Signal the process running ``job_id`` (revoke with terminate); False: cannot."""
        return False

    def start(self) -> None:
        """Start the pool's threads or processes."""

    @abc.abstractmethod
    def submit(self, job: Job) -> None:
        """Run a job as soon as a slot is free; its outcome arrives on the events queue."""

    @abc.abstractmethod
    def take_back(self) -> list[int]:
        """Remove the jobs not started yet and return their ids (for a shutdown)."""

    def backlog(self) -> int:
        """Jobs submitted and waiting for a free slot."""
        return 0

    def grow(self, count: int) -> None:
        """Add ``count`` slots (``--autoscale``); pools that cannot resize refuse."""
        raise NotImplementedError(f"the {self.name} pool cannot be resized")

    def shrink(self, count: int) -> None:
        """Retire up to ``count`` idle slots (``--autoscale``)."""
        raise NotImplementedError(f"the {self.name} pool cannot be resized")

    def check(self) -> None:
        """Enforce hard time limits and notice dead processes (called often by the consumer)."""

    @abc.abstractmethod
    def stop(self, timeout: float) -> None:
        """Let running jobs finish (up to ``timeout``), then stop."""

    def terminate(self) -> None:
        """Stop at once; running jobs are abandoned (their leases bring them back)."""
        self.stop(0)

    def info(self) -> str:
        """A short description for the banner."""
        return f"{self.concurrency} ({self.name})"

    # -- pools whose processes fetch for themselves (celeriac.worker.consuming) -----------

    #: the pool's processes fetch, run and acknowledge for themselves; the consumer in the
    #: worker process only settles what they leave behind when they die or time out
    consumes = False

    def forward(self, command: tuple[Any, ...]) -> None:
        """Pass a control command on to processes that consume for themselves."""

    def hand_back(self) -> int:
        """Have consuming processes stop fetching and give back unstarted work; how much."""
        return 0

    def busy(self) -> bool:
        """Whether consuming processes still run (finishing their work after a stop)."""
        return False

    def abandon(self, reason: str) -> None:
        """Give back what consuming processes held; call after ``terminate``."""

    def held(self, running_only: bool = False) -> list[tuple[int, Inflight, float | None]] | None:
        """What consuming processes hold (``running_only``: run): ``(job id, item, started or
        None)``; None when the consumer holds everything itself."""
        return None

    def processed(self) -> int:
        """Jobs finished by consuming processes."""
        return 0


def run_job(app: Celeriac, job: Job, hostname: str) -> JobDone:
    """Run one job with its soft time limit."""
    try:
        if job.soft_time_limit is None:  # most jobs: no limit to set, nor a context to enter
            return run_message(app, job.job_id, job.message, hostname, job.delivery)
        with soft_time_limit(job.soft_time_limit):
            return run_message(app, job.job_id, job.message, hostname, job.delivery)
    except BaseException as exc:  # a failure outside the task itself still gets a result
        logging.getLogger(__name__).exception("job %s failed outside its task", job.job_id)
        return failed_job(app, job.job_id, job.message, exc)


class SoloPool(Pool):
    """Runs each job in the consumer's own thread, one at a time."""

    name = "solo"

    def __init__(
        self, app: Celeriac, concurrency: int, hostname: str, events: queue.SimpleQueue[Event]
    ) -> None:
        super().__init__(app, 1, hostname, events)

    def submit(self, job: Job) -> None:
        """Run the job now."""
        if self._starting(job):
            self.events.put(("done", run_job(self.app, job, self.hostname)))

    def take_back(self) -> list[int]:
        """Nothing waits: jobs run as they are submitted."""
        return []

    def stop(self, timeout: float) -> None:
        """Nothing runs in the background."""


class ThreadPool(Pool):
    """Runs jobs in N threads of the worker process."""

    name = "threads"

    def __init__(
        self, app: Celeriac, concurrency: int, hostname: str, events: queue.SimpleQueue[Event]
    ) -> None:
        super().__init__(app, concurrency, hostname, events)
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._stops_queued = 0  # None markers in the queue, each ending one thread
        self._stops_lock = threading.Lock()

    def start(self) -> None:
        """Start the threads."""
        self._start_threads(self.concurrency)

    def _start_threads(self, count: int) -> None:
        for _ in range(count):
            thread = threading.Thread(
                target=self._loop, name=f"ThreadPoolWorker-{len(self._threads) + 1}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def backlog(self) -> int:
        """Jobs queued for a thread."""
        return max(0, self._jobs.qsize() - self._stops_queued)

    def grow(self, count: int) -> None:
        """Start ``count`` more threads."""
        self._start_threads(count)
        self.concurrency += count

    def shrink(self, count: int) -> None:
        """Ask ``count`` threads to end once they are free."""
        for _ in range(count):
            with self._stops_lock:
                self._stops_queued += 1
            self._jobs.put(None)
        self.concurrency -= count

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                with self._stops_lock:
                    self._stops_queued -= 1
                return
            if self._starting(job):
                self.events.put(("done", run_job(self.app, job, self.hostname)))

    def submit(self, job: Job) -> None:
        """Queue the job for the next free thread."""
        self._jobs.put(job)

    def take_back(self) -> list[int]:
        """Empty the job queue."""
        taken: list[int] = []
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return taken
            if job is not None:
                taken.append(job.job_id)

    def stop(self, timeout: float) -> None:
        """Ask every thread to finish after its current job and wait for them."""
        alive = [thread for thread in self._threads if thread.is_alive()]
        for _ in alive:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for thread in alive:
            thread.join(max(0.0, deadline - time.monotonic()))


def create_pool(
    kind: str, app: Celeriac, concurrency: int, hostname: str, events: queue.SimpleQueue[Event]
) -> Pool:
    """The pool named ``kind``: prefork, threads, asyncio or solo."""
    if kind == "prefork":
        from celeriac.worker.prefork import PreforkPool

        return PreforkPool(app, concurrency, hostname, events)
    if kind == "asyncio":
        from celeriac.worker.asyncio_pool import AsyncioPool

        return AsyncioPool(app, concurrency, hostname, events)
    if kind == "threads":
        return ThreadPool(app, concurrency, hostname, events)
    if kind == "solo":
        return SoloPool(app, concurrency, hostname, events)
    raise ValueError(f"unknown pool {kind!r}; choose prefork, threads, asyncio or solo")


def should_retire(app: Celeriac, done: int) -> bool:
    """True once a pool process ran its task budget or grew past its memory budget."""
    limit = app.conf.worker_max_tasks_per_child
    if limit is not None and done >= limit:
        return True
    memory = app.conf.worker_max_memory_per_child  # KiB, as Celery counts it
    if memory is not None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        if peak > memory:
            logging.getLogger(__name__).warning(
                "pool process %s used %d KiB (limit %d KiB): replacing it", os.getpid(), peak,
                memory,
            )  # fmt: skip
            return True
    return False


def redirect_stdouts(level: str) -> None:
    """Send print() output of tasks to the log, as Celery does."""
    sys.stdout = _LogWriter(logging.getLogger("celeriac.task.stdout"), level)


class _LogWriter:
    """A file-like object that logs each line written to it."""

    def __init__(self, logger: logging.Logger, level: str) -> None:
        self.logger = logger
        self.level = logging.getLevelName(level.upper()) if isinstance(level, str) else level
        self._buffer = ""

    def write(self, text: str) -> int:
        self._buffer += text
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            if line:
                self.logger.log(self.level, line)
        return len(text)

    def flush(self) -> None:
        if self._buffer:
            self.logger.log(self.level, self._buffer)
            self._buffer = ""

    def isatty(self) -> bool:
        return False
