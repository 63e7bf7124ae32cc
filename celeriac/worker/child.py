"""A prefork child that consumes for itself; its parent (``celeriac.worker.consuming``)
supervises it.

One thread does the work, as the bare broker loop does: when nothing waits, fetch up to its
prefetch budget (its one slot's share, ``worker_prefetch_multiplier``); validate; run the jobs
one at a time; store and acknowledge them in batches, each within about 20 ms of its job's
end (``celeriac.worker.child_writer``). It fetches only when free, so a long task holds
hostage only the jobs not started of its batch, and the parent has those given back when a
sibling is idle.

The child is a ``Consumer`` with three more differences:

- its leases are renewed by the parent (``celeriac.worker.child_link``), which a task holding
  this process's GIL cannot starve;
- while a job runs it writes the job's delivery number and hard deadline in memory shared with
  the parent (``Slot``): the parent enforces hard time limits and, when the child dies, knows
  which job was lost, without a message per task;
- it takes no remote control of its own: the parent forwards what concerns it (stop, revoke,
  queues, rate and time limits), and answers for the worker.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from celeriac import signals, states
from celeriac.events import EventSender, use_sender
from celeriac.limits import parse_rate
from celeriac.worker.child_link import ChildLeases, ChildLink
from celeriac.worker.child_writer import WRITE_AFTER, Unwritten
from celeriac.worker.consumer import Consumer
from celeriac.worker.control import RevokedSet, read_revoked, revoked_job
from celeriac.worker.execute import JobDone
from celeriac.worker.pools import Event, Job, Pool, redirect_stdouts, run_job, should_retire
from celeriac.worker.task_events import TaskEvents

if TYPE_CHECKING:
    from celeriac.app import Celeriac

logger = logging.getLogger("celeriac.worker")

#: The fields of a child's shared slot: the number of the delivery running (IDLE: none), its
#: hard deadline (``time.monotonic()``, 0: none), when it started (``time.time()``), and how
#: many jobs the child has finished.
RUNNING, DEADLINE, STARTED, PROCESSED = range(4)
SLOT_SIZE = 4
IDLE = -1.0
Slot = Any  # a multiprocessing RawArray of SLOT_SIZE doubles


class ChildPool(Pool):
    """The child's one slot: fetched jobs wait in a queue; the consumer runs them one by one."""

    name = "prefork"
    hands_off = True  # submit only queues: the consumer runs the jobs itself

    def __init__(
        self, app: Celeriac, hostname: str, events: queue.SimpleQueue[Event], slot: Slot
    ) -> None:
        super().__init__(app, 1, hostname, events)
        self.slot = slot
        #: the delivery number of a job, as the parent knows it (set by the consumer)
        self.number_of: Callable[[Job], int] = lambda job: 0
        self._jobs: collections.deque[Job] = collections.deque()
        self._lock = threading.Lock()  # the parent's commands take jobs back from another thread

    def submit(self, job: Job) -> None:
        """Queue the job for the main thread."""
        with self._lock:
            self._jobs.append(job)

    def next(self) -> Job | None:
        """The next job to run, if one waits."""
        with self._lock:
            return self._jobs.popleft() if self._jobs else None

    def run(self, job: Job) -> JobDone | None:
        """Run ``job`` with its number in the shared slot; None when it must not run."""
        if not self._starting(job):
            return None  # its ending is on the events queue
        slot = self.slot
        slot[DEADLINE] = time.monotonic() + job.time_limit if job.time_limit else 0.0
        slot[STARTED] = time.time()
        slot[RUNNING] = self.number_of(job)
        try:
            return run_job(self.app, job, self.hostname)
        finally:
            slot[RUNNING] = IDLE
            slot[PROCESSED] += 1

    def take_back(self) -> list[int]:
        """Remove the jobs not started."""
        with self._lock:
            taken = [job.job_id for job in self._jobs]
            self._jobs.clear()
        return taken

    def backlog(self) -> int:
        """Jobs fetched and waiting for the main thread."""
        return len(self._jobs)

    def stop(self, timeout: float) -> None:
        """Nothing runs in the background."""


class ChildConsumer(Consumer):
    """A consumer in a prefork child (see the module docstring)."""

    pool: ChildPool
    #: results are written by the thread that hands them over (the main thread or the result
    #: writer) before it goes on, so those before a job with follow-ups are stored before it starts
    write_inline = True

    def __init__(
        self, app: Celeriac, pool: ChildPool, events: queue.SimpleQueue[Event],
        queues: list[str], hostname: str, conn: Connection,
    ) -> None:  # fmt: skip
        super().__init__(app, pool, events, queues, hostname)  # prefetch: one slot's share
        self.link = ChildLink(conn, self.command)
        self.leases = ChildLeases(app, self.lease, self, self.link)
        self.revoked = RevokedSet()
        self.sender: EventSender | None = None
        self.unwritten = Unwritten(self.handle_now)
        pool.number_of = self._number_of
        pool.on_start = self._job_started
        pool.on_events = self.handle_now

    def start(self) -> None:
        """Load revocations; start task events (if on), the lease keeper and the finisher."""
        self.revoked.add(read_revoked(self.app, self.app.conf.control_signing_key))
        if self.app.conf.worker_send_task_events:
            self.sender = EventSender(self.app, self.hostname).start()
            use_sender(self.app, self.sender)
            self.task_events = TaskEvents(self.sender)
        self.leases.start()
        self.finisher.start()
        self.unwritten.start()

    def run(self) -> None:
        """One thread, as the bare broker loop: fetch when nothing waits, run what came, store
        and acknowledge it in batches (``celeriac.worker.child_writer``); until stopped (or
        retired)."""
        while not self.stopping.is_set():
            self.last_loop = time.monotonic()
            job = self.pool.next()
            if job is None:
                self.unwritten.write()  # nothing more to run: write the batch now
                self._fetch_when_free()
                continue
            age = self.unwritten.age()
            if age is not None and (age > WRITE_AFTER or _has_follow_ups(job)):
                self.unwritten.write()
            done = self.pool.run(job)
            self.unwritten.add([("done", done)] if done is not None else _drain(self.events))
            if should_retire(self.app, int(self.pool.slot[PROCESSED])):
                self.unwritten.write()
                self.give_back()
        self.unwritten.write()
        self.give_back()

    def _fetch_when_free(self) -> None:
        with self._held_lock:
            room = self.budget - self._held
        if room > 0:
            self._fetch(room)
        else:  # finished work not written yet holds the budget: the finisher frees it
            self.stopping.wait(0.01)

    def give_back(self) -> None:
        """Stop fetching and hand unstarted work back at once; tell the parent how much."""
        self.stop()
        released = self._give_back_unstarted()
        with contextlib.suppress(OSError):
            self.link.send(("released", released))

    def close(self) -> None:
        """Write the last results, then tell the parent that nothing is held any more."""
        self.unwritten.close()
        self.finisher.stop()
        self.leases.update(())
        self.leases.close()
        if self.sender is not None:
            self.sender.flush()
            self.sender.stop()

    # -- what the parent sends ------------------------------------------------------------

    def command(self, message: tuple[Any, ...]) -> None:
        """Carry out a command forwarded by the parent (in the lease keeper's thread)."""
        kind = message[0]
        if kind == "stop":
            self.give_back()
        elif kind == "give_back":  # our job runs long and a sibling is idle: for the sibling
            self._give_back_unstarted()
        elif kind == "revoke":
            self.revoked.add(message[1])
        elif kind == "queues":
            self.queues = list(message[1])
        elif kind == "rate":
            self._set_rate(*message[1:])
        elif kind == "time_limit":
            task = self.app.tasks.get(message[1])
            if task is not None:
                task.soft_time_limit, task.time_limit = message[2], message[3]

    def _set_rate(self, name: str, rate: Any, local: bool) -> None:
        if not local:
            self.limits.refresh(name)
        elif rate is None:
            self.limits.local.pop(name, None)
        else:
            self.limits.local[name] = parse_rate(rate)

    # -- the main thread --------------------------------------------------------------------

    def _number_of(self, job: Job) -> int:
        item = self.inflight.get(job.job_id)
        return self.link.number(item.delivery.lease) if item is not None else 0

    def _job_started(self, job: Job) -> JobDone | None:
        """A job is about to start: skip it if its lease lapsed or it was revoked meanwhile."""
        message = job.message
        if not self.still_held(job.job_id):
            logger.warning("Skipping %s[%s]: its lease ran out before it could start (was the "
                           "worker frozen?); another worker runs it", message.task, message.id)
            return JobDone(job.job_id, states.PENDING, skipped=True)
        if message.id in self.revoked:
            logger.info("Discarding revoked task: %s[%s]", message.task, message.id)
            return revoked_job(self, job.job_id, message)
        if self.task_events is not None:
            self.task_events.started(message)
        return None


def _has_follow_ups(job: Job) -> bool:
    """Whether the job sends work of its own when it ends (callbacks, chain, chord).

    The endings before it are written first: its follow-ups cost broker calls of their own,
    so one more costs little, and if the process dies in them (a chord part found the chord
    complete and sends its body) only that job runs again, not the batch finished before it.
    """
    message = job.message
    return bool(message.callbacks or message.errbacks or message.chain or message.chord)


def _drain(events: queue.SimpleQueue[Event]) -> list[Event]:
    batch: list[Event] = []
    while not events.empty():
        batch.append(events.get_nowait())
    return batch


def child_main(app: Celeriac, conn: Connection, slot: Slot, hostname: str,
               queues: list[str]) -> None:  # fmt: skip
    """A consuming child's life, from fork to exit."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)  # the parent stops us; Ctrl-C reaches the group
    if app.conf.worker_redirect_stdouts:
        redirect_stdouts(app.conf.worker_redirect_stdouts_level)
    signals.worker_process_init.send(sender=None)
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    pool = ChildPool(app, hostname, events, slot)
    consumer = ChildConsumer(app, pool, events, queues, hostname, conn)
    try:
        consumer.start()
        consumer.run()
        consumer.close()
    except Exception:
        logger.exception("pool process %s failed; its leases will expire", os.getpid())
        sys.stdout.flush()
        os._exit(1)
    sys.stdout.flush()
    os._exit(0)
