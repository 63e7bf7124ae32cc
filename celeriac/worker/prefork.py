"""The dispatching prefork pool: N child processes, each running one job at a time, handed
out by the worker process. The worker uses it where children cannot fetch for themselves
(the in-process memory broker, ``--autoscale``, ``--metrics-port``; otherwise prefork
children consume on their own, ``celeriac.worker.consuming``), and so does the in-thread
worker of ``celeriac.testing``.

The consumer (in the parent) holds every lease; jobs wait in the pool's queue in the parent
and a child gets one only when it is idle, so a long task never holds short ones hostage. A
collector thread waits on the children's pipes and process sentinels: it hands the next
waiting job to a child the moment that child reports a result, then has the consumer finish
the results in this same thread (``Pool.on_events``: storing and acknowledging them does not
wait for the main loop to wake), and replaces a dead child, reporting its job lost through
the consumer's queue. Hard time limits are enforced by killing the child that passed its
limit.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING

from celeriac import signals
from celeriac.message import decode
from celeriac.worker.execute import JobDone
from celeriac.worker.pools import Event, Job, Pool, redirect_stdouts, run_job, should_retire

if TYPE_CHECKING:
    import queue

    from celeriac.app import Celeriac

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Child:
    index: int
    process: BaseProcess
    conn: Connection
    job_id: int | None = None
    deadline: float | None = None
    killed: bool = False
    #: the child said it exits after its last job (task or memory limit): no more work
    retiring: bool = False
    #: let go by autoscale: not replaced when it exits
    dismissed: bool = False


class PreforkPool(Pool):
    """Child processes forked from the worker, replaced when they die."""

    name = "prefork"
    hands_off = True

    def __init__(
        self, app: Celeriac, concurrency: int, hostname: str, events: queue.SimpleQueue[Event]
    ) -> None:
        super().__init__(app, concurrency, hostname, events)
        self._ctx = multiprocessing.get_context("fork")
        self._children: list[_Child] = []
        self._waiting: collections.deque[Job] = collections.deque()
        self._lock = threading.Lock()
        self._stopping = False
        self._collector: threading.Thread | None = None
        self._counter = 0
        # A pipe that wakes the collector when the set of children changes.
        self._wake_r, self._wake_w = os.pipe()

    # -- life ---------------------------------------------------------------------------

    def start(self) -> None:
        """Fork the children and start the collector thread."""
        for _ in range(self.concurrency):
            self._children.append(self._spawn())
        self._collector = threading.Thread(target=self._collect, name="pool-collector", daemon=True)
        self._collector.start()

    def backlog(self) -> int:
        """Jobs waiting for an idle child."""
        with self._lock:
            return len(self._waiting)

    def grow(self, count: int) -> None:
        """Fork ``count`` more children and give them waiting jobs."""
        for _ in range(count):
            child = self._spawn()
            with self._lock:
                self._children.append(child)
                self.concurrency += 1
                job = self._next_for(child)
            if job is not None:
                self._send(child, job)
        os.write(self._wake_w, b"x")  # the collector watches the new pipes

    def shrink(self, count: int) -> None:
        """Let up to ``count`` idle children exit without replacement."""
        with self._lock:
            idle = [c for c in self._children if self._available(c)][:count]
            for child in idle:
                child.dismissed = child.retiring = True
                self.concurrency -= 1
        for child in idle:
            with contextlib.suppress(OSError):
                child.conn.send(None)

    def _spawn(self) -> _Child:
        self._counter += 1
        parent_end, child_end = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_child_main,
            args=(self.app, child_end, self.hostname, self._counter),
            name=f"ForkPoolWorker-{self._counter}",
            daemon=True,
        )
        process.start()
        child_end.close()
        return _Child(self._counter, process, parent_end)

    def submit(self, job: Job) -> None:
        """Start the job in an idle child, or queue it for the next child that frees up."""
        with self._lock:
            child = next((c for c in self._children if self._available(c)), None)
            if child is None:
                self._waiting.append(job)
                return
            if not self._starting(job):
                return
            self._assign(child, job)
        self._send(child, job)

    def take_back(self) -> list[int]:
        """Remove the queued jobs no child has started."""
        with self._lock:
            taken = [job.job_id for job in self._waiting]
            self._waiting.clear()
        return taken

    def _assign(self, child: _Child, job: Job) -> None:
        """Mark ``child`` busy with ``job`` (caller holds the lock)."""
        child.job_id = job.job_id
        child.deadline = time.monotonic() + job.time_limit if job.time_limit else None

    def _next_for(self, child: _Child) -> Job | None:
        """The next waiting job for a child that just became free (caller holds the lock)."""
        while self._waiting and self._available(child):
            job = self._waiting.popleft()
            if self._starting(job):
                self._assign(child, job)
                return job
        return None

    def _send(self, child: _Child, job: Job) -> None:
        try:
            child.conn.send((job.job_id, job.body, job.delivery, job.soft_time_limit))
        except OSError:
            # The child died just now; the collector reaps it and reports the job lost.
            logger.warning("pool process %s died before it could take a job", child.index)

    def _available(self, child: _Child) -> bool:
        """Idle, alive, and not retiring (a child past its task or memory limit exits)."""
        return child.job_id is None and not child.killed and not child.retiring

    def check(self) -> None:
        """Kill children past their hard time limit; the job is reported as timed out."""
        now = time.monotonic()
        with self._lock:
            late = [c for c in self._children if c.deadline is not None and c.deadline < now]
            for child in late:
                self.events.put(("timeout", child.job_id, child.deadline))
                child.job_id = child.deadline = None
                child.killed = True
                kill(child.process)

    def stop(self, timeout: float) -> None:
        """Ask idle children to exit, wait for busy ones up to ``timeout``, then kill."""
        self._stopping = True
        deadline = time.monotonic() + timeout
        with self._lock:
            children = list(self._children)
        for child in children:
            with contextlib.suppress(OSError):
                child.conn.send(None)
        for child in children:
            child.process.join(max(0.0, deadline - time.monotonic()))
        for child in children:
            if child.process.is_alive():
                kill(child.process)
                child.process.join(1)
        os.write(self._wake_w, b"x")

    def terminate(self) -> None:
        """Kill every child now."""
        self._stopping = True
        for child in list(self._children):
            kill(child.process)
        os.write(self._wake_w, b"x")

    # -- the collector thread ------------------------------------------------------------

    def _collect(self) -> None:
        """Wait on every child's pipe and sentinel with one poll object, rebuilt only when the
        children change (a fresh selector per wakeup costs more than the job it hands out)."""
        watched: list[_Child] = []
        poller = select.poll()
        pipes: dict[int, _Child] = {}
        sentinels: dict[int, _Child] = {}
        while not self._stopping:
            with self._lock:
                children = list(self._children)
            if children != watched:
                watched = children
                poller, pipes, sentinels = self._poller(children)
            ready = {fd for fd, _ in poller.poll(1000.0)}
            if self._wake_r in ready:
                os.read(self._wake_r, 64)
            finished = [e for fd in ready if fd in pipes and (e := self._receive(pipes[fd]))]
            if finished and self.on_events is not None:
                self.on_events(finished)
            else:
                for event in finished:
                    self.events.put(event)
            for fd in ready:
                if fd in sentinels:
                    self._reap(sentinels[fd])

    def _poller(
        self, children: list[_Child]
    ) -> tuple[select.poll, dict[int, _Child], dict[int, _Child]]:
        """A poll object watching ``children`` (pipes and sentinels) and the wake pipe."""
        poller = select.poll()
        pipes = {c.conn.fileno(): c for c in children}
        sentinels = {c.process.sentinel: c for c in children}
        for fd in [*pipes, *sentinels, self._wake_r]:
            poller.register(fd, select.POLLIN)
        return poller, pipes, sentinels

    def _receive(self, child: _Child) -> Event | None:
        """Take a child's result and give it its next job; the event to report, if any."""
        try:
            done: JobDone
            done, retiring = child.conn.recv()
        except (EOFError, OSError):
            return None  # the child died; its sentinel reports it
        with self._lock:
            if child.job_id != done.job_id:
                return None  # already reported as timed out
            child.job_id = child.deadline = None
            child.retiring = retiring
            job = self._next_for(child)
        if job is not None:
            self._send(child, job)
        return ("done", done)

    def _reap(self, child: _Child) -> None:
        """A child exited: report its job lost and start a replacement."""
        child.process.join(0.1)
        code = child.process.exitcode
        with self._lock:
            job_id = child.job_id
            if child in self._children:
                self._children.remove(child)
        child.conn.close()
        if job_id is not None:
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            process = {"pid": child.process.pid, "exitcode": code}  # for the dead letter
            self.events.put(("lost", job_id, f"{how}, pid {child.process.pid}", process))
        if not self._stopping and not child.dismissed:
            replacement = self._spawn()
            with self._lock:
                self._children.append(replacement)
                job = self._next_for(replacement)
            if job is not None:
                self._send(replacement, job)

    def terminate_job(self, job_id: int, signum: int) -> bool:
        """Signal the child running ``job_id`` (revoke with terminate); False if none does."""
        with self._lock:
            child = next((c for c in self._children if c.job_id == job_id), None)
        if child is None or child.process.pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.process.pid, signum)
        return True

    def pids(self) -> list[int]:
        """The children's process ids."""
        with self._lock:
            return [c.process.pid for c in self._children if c.process.pid is not None]


def kill(process: BaseProcess) -> None:
    """SIGKILL a pool process if it still runs."""
    if process.pid is not None and process.is_alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)


def _child_main(app: Celeriac, conn: Connection, hostname: str, index: int) -> None:
    """A child's life: take a job, run it, send back what happened, until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if app.conf.worker_redirect_stdouts:
        redirect_stdouts(app.conf.worker_redirect_stdouts_level)
    signals.worker_process_init.send(sender=None)
    accept = app.conf.accept_content
    done = 0
    retiring = False
    while not retiring:
        try:
            item = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            break
        if item is None:
            break
        job_id, body, delivery, soft = item
        message = decode(body, accept)
        result = run_job(app, Job(job_id, message, body, delivery, None, soft), hostname)
        done += 1
        retiring = should_retire(app, done)
        conn.send((result, retiring))
    sys.stdout.flush()
    os._exit(0)
