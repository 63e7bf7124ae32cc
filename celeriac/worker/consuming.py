"""The prefork pool whose children consume for themselves; the worker process supervises.

Each child (``celeriac.worker.child``) fetches, runs, stores and acknowledges its own work,
so the worker process spends nothing per task. It keeps what a child cannot do for itself:

- renewing the leases and concurrency slots each child says it holds, in a thread of its own
  (a task that holds a child's GIL cannot starve it), and telling the child what it kept;
- hard time limits: the child writes the running job's deadline in shared memory, and
  ``check`` kills the child whose job passed it;
- settling a dead child's work: the job it was running is lost (a failed delivery, with the
  exit code and pids), what it fetched and had not started goes back uncounted; then a
  replacement is forked;
- forwarding control commands, and answering ``inspect`` from what children told it.

What must go through the consumer arrives on its queue::

    ("lost_held", Inflight, description, {"pid": ..., "exitcode": ...})
    ("timeout_held", Inflight)

The dispatching pool (``celeriac.worker.prefork``) serves what this one does not: the
in-process memory broker, ``--autoscale`` (it sizes by a backlog in the worker process) and
``--metrics-port`` (its counters live in the worker process).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import select
import threading
import time
from typing import TYPE_CHECKING, Any

from celeriac.transports.base import DEFAULT_LEASE
from celeriac.worker.child import (
    DEADLINE,
    IDLE,
    PROCESSED,
    RUNNING,
    SLOT_SIZE,
    STARTED,
    child_main,
)
from celeriac.worker.child_state import ChildState
from celeriac.worker.pools import Event, Job, Pool
from celeriac.worker.prefork import kill
from celeriac.worker.renewal import Renewer

if TYPE_CHECKING:
    import queue

    from celeriac.app import Celeriac
    from celeriac.worker.endings import Inflight

logger = logging.getLogger("celeriac.worker")

#: Seconds a child's job runs before the child gives back the work waiting behind it, when a
#: sibling is idle; and how often that is looked at.
UNBLOCK_AFTER = 0.25
UNBLOCK_TICK = 0.1


class ConsumingPool(Pool):
    """Child processes that fetch for themselves, renewed, timed and replaced by this one."""

    name = "prefork"
    consumes = True

    def __init__(
        self, app: Celeriac, concurrency: int, hostname: str, events: queue.SimpleQueue[Event],
        queues: list[str],
    ) -> None:  # fmt: skip
        super().__init__(app, concurrency, hostname, events)
        self.queues = list(queues)
        options = app.conf.broker_transport_options or {}
        self.lease = float(options.get("lease_timeout", DEFAULT_LEASE))
        self._ctx = multiprocessing.get_context("fork")
        self._children: list[ChildState] = []
        self._lock = threading.RLock()  # the children and what they hold
        #: held from a fork until its child is listed, and while a command is forwarded: a
        #: child forked before a command changed the parent is always sent that command
        self._forking = threading.Lock()
        self._stopping = self._terminated = False
        self._closed = threading.Event()
        self._counter = 0
        self._processed = 0  # by children that exited
        self._wake_r, self._wake_w = os.pipe()  # wakes the collector when children change

    # -- life -----------------------------------------------------------------------------

    def start(self) -> None:
        """Fork the children; start the collector and the lease renewer."""
        for _ in range(self.concurrency):
            self._fork()
        for target, name in ((self._collect, "pool-collector"), (self._renew, "lease-keeper")):
            threading.Thread(target=target, name=name, daemon=True).start()

    def _spawn(self) -> ChildState:
        self._counter += 1
        parent_end, child_end = self._ctx.Pipe()
        slot = self._ctx.RawArray("d", SLOT_SIZE)
        slot[RUNNING] = IDLE
        process = self._ctx.Process(
            target=child_main,
            args=(self.app, child_end, slot, self.hostname, list(self.queues)),
            name=f"ForkPoolWorker-{self._counter}",
            daemon=True,
        )
        process.start()
        child_end.close()
        renewer = Renewer(self.app.broker, self.lease)
        child = ChildState(self._counter, process, parent_end, slot, renewer)
        child.accept = list(self.app.conf.accept_content)
        return child

    def _fork(self) -> None:
        """Fork a child and list it, as one step for ``forward``."""
        with self._forking:
            child = self._spawn()
            with self._lock:
                self._children.append(child)
        os.write(self._wake_w, b"x")

    def submit(self, job: Job) -> None:
        """Jobs are fetched by the children; nothing is submitted here."""
        raise NotImplementedError("children of a consuming pool fetch their own jobs")

    def take_back(self) -> list[int]:
        """Nothing waits here (see ``hand_back``)."""
        return []

    def hand_back(self, timeout: float = 2.0) -> int:
        """Tell every child to stop fetching and give back what it has not started; wait
        (up to ``timeout``) for their answers; how many deliveries went back."""
        self._stopping = True
        with self._lock:
            children = list(self._children)
            for child in children:
                child.released = None
        for child in children:
            child.send(("stop",))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(
            c.released is None and c.process.is_alive() for c in children
        ):
            time.sleep(0.01)
        return sum(child.released or 0 for child in children)

    def busy(self) -> bool:
        """Whether children still run."""
        with self._lock:
            return bool(self._children)

    def stop(self, timeout: float) -> None:
        """Ask children to stop, wait for them up to ``timeout``, then kill the rest."""
        self._stopping = True
        with self._lock:
            children = list(self._children)
        for child in children:
            child.send(("stop",))
        deadline = time.monotonic() + timeout
        for child in children:
            child.process.join(max(0.0, deadline - time.monotonic()))
        for child in children:
            kill(child.process)
        self._closed.set()
        os.write(self._wake_w, b"x")

    def terminate(self) -> None:
        """Kill every child now; ``abandon`` settles what they held."""
        self._stopping = self._terminated = True
        with self._lock:
            for child in self._children:
                kill(child.process)
        os.write(self._wake_w, b"x")

    def abandon(self, reason: str) -> None:
        """Kill the children and give back what they held: the running jobs counted as a
        failed delivery (``reason``), the rest not."""
        self.terminate()
        with self._lock:
            children, self._children = self._children, []
        for child in children:
            self._read(child)
            running = child.pop(child.running())
            if running is not None and not running.acked:
                self._release([running.delivery], child, reason)
            self._release(child.deliveries(), child)
        self._closed.set()

    # -- resizing ---------------------------------------------------------------------------

    def grow(self, count: int) -> None:
        """Fork ``count`` more children."""
        for _ in range(count):
            self._fork()
            self.concurrency += 1

    def shrink(self, count: int) -> None:
        """Let up to ``count`` idle children exit without replacement."""
        with self._lock:
            idle = [c for c in self._children if c.running() == IDLE and not c.dismissed]
            for child in idle[:count]:
                child.dismissed = True
                self.concurrency -= 1
                child.send(("stop",))

    # -- what children hold ---------------------------------------------------------------

    def forward(self, command: tuple[Any, ...]) -> None:
        """Pass a control command to every child (and to the ones forked later: queues)."""
        with self._forking:  # not between a fork and its listing (see _fork)
            if command[0] == "queues":
                self.queues = list(command[1])
            with self._lock:
                children = list(self._children)
            for child in children:
                child.send(command)

    def held(self, running_only: bool = False) -> list[tuple[int, Inflight, float | None]]:
        """What the children hold (``running_only``: run), for ``inspect``."""
        with self._lock:
            return [entry for c in self._children for entry in c.entries(running_only)]

    def processed(self) -> int:
        """Jobs the children finished."""
        with self._lock:
            return self._processed + sum(int(c.slot[PROCESSED]) for c in self._children)

    def pids(self) -> list[int]:
        """The children's process ids."""
        with self._lock:
            return [c.process.pid for c in self._children if c.process.pid is not None]

    def terminate_job(self, job_id: int, signum: int) -> bool:
        """Signal the child running ``job_id`` (revoke with terminate); False if none does."""
        index, number = divmod(job_id, 1 << 32)
        with self._lock:
            child = next((c for c in self._children if c.index == index), None)
            if child is None or child.running() != number or child.process.pid is None:
                return False
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.process.pid, signum)
        return True

    def check(self) -> None:
        """Kill children whose job passed its hard time limit; the job is reported timed out."""
        with self._lock:
            self._kill_late(time.monotonic())

    def _unblock(self, now: float) -> None:
        """A child in a long job gives back what it fetched and has not started, for an idle
        sibling to take: a long task never holds short ones hostage for long."""
        if all(c.running() != IDLE for c in self._children):
            return
        for child in self._children:
            number = child.running()
            if number == IDLE or child.asked == number or len(child.held) < 2:
                continue
            if now - float(child.slot[STARTED]) > UNBLOCK_AFTER and child.running() == number:
                child.asked = number
                child.send(("give_back",))

    def _kill_late(self, now: float) -> None:
        for child in self._children:
            number, deadline = child.running(), float(child.slot[DEADLINE])
            if number == IDLE or not deadline or deadline >= now or child.timed_out:
                continue
            if child.running() != number:
                continue  # it finished that job just now
            child.timed_out = number
            item = child.pop(number)
            kill(child.process)
            if item is not None:
                self.events.put(("timeout_held", item))

    # -- the collector and the renewer ----------------------------------------------------

    def _collect(self) -> None:
        """Read what children say and reap the ones that exit."""
        watched: list[ChildState] = []
        poller = select.poll()
        pipes: dict[int, ChildState] = {}
        sentinels: dict[int, ChildState] = {}
        while not self._closed.is_set():
            with self._lock:
                children = list(self._children)
            if children != watched:
                watched, poller = children, select.poll()
                pipes = {c.conn.fileno(): c for c in children}
                sentinels = {c.process.sentinel: c for c in children}
                for fd in [*pipes, *sentinels, self._wake_r]:
                    poller.register(fd, select.POLLIN)
            ready = {fd for fd, _ in poller.poll(1000.0)}
            if self._wake_r in ready:
                os.read(self._wake_r, 64)
            for fd in ready:
                if fd in pipes:  # one message each: the poll says again if there are more
                    self._read_next(pipes[fd])
            for fd in ready:
                if fd in sentinels:
                    self._reap(sentinels[fd])

    def _read_next(self, child: ChildState) -> None:
        """Apply the next message the child sent (its pipe is readable). The collector reads
        one per readiness: looking for more costs more than a message (``Connection.poll``
        builds a selector each time)."""
        with self._lock, contextlib.suppress(EOFError, OSError):  # died: its sentinel says so
            child.take(child.conn.recv())

    def _read(self, child: ChildState) -> None:
        """Apply every message the child has sent so far."""
        with self._lock:
            try:
                while child.conn.poll(0):
                    child.take(child.conn.recv())
            except (EOFError, OSError):
                pass  # it died; its sentinel says so

    def _reap(self, child: ChildState) -> None:
        """A child exited: settle what it held, then fork a replacement."""
        child.process.join(0.1)
        self._read(child)
        with self._lock:
            if self._terminated or child not in self._children:
                return  # abandon() settles
            self._children.remove(child)
            self._processed += int(child.slot[PROCESSED])
            running = child.pop(child.running()) if child.running() != child.timed_out else None
            rest = child.deliveries()
        child.conn.close()
        if running is not None:
            code = child.process.exitcode
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            process = {"pid": child.process.pid, "exitcode": code}  # for the dead letter
            self.events.put(("lost_held", running, f"{how}, pid {child.process.pid}", process))
        self._release(rest, child)
        if not self._stopping and not child.dismissed:
            self._fork()

    def _release(self, deliveries: list[Any], child: ChildState, reason: str | None = None) -> None:
        """Give back a gone child's deliveries (and its concurrency slots, once)."""
        broker = self.app.broker
        try:
            for delivery in deliveries:
                broker.release(delivery, reason=reason)
            slots = list(child.renewer.slots)
            child.renewer.slots.clear()
            if slots:
                broker.release_slots(slots)
        except Exception:
            logger.exception("giving back what pool process %s held failed; its leases will "
                             "expire", child.process.pid)  # fmt: skip

    def _renew(self) -> None:
        """Renew what every child holds, every third of a lease, and tell each what it kept;
        in between, look for work waiting behind a long job (``_unblock``)."""
        next_round = time.monotonic() + self.lease / 3
        while not self._closed.wait(min(UNBLOCK_TICK, max(0.0, next_round - time.monotonic()))):
            with self._lock:
                self._unblock(time.time())
                children = list(self._children)
            if time.monotonic() < next_round:
                continue
            next_round = time.monotonic() + self.lease / 3
            for child in children:
                report = child.renewer.renew()
                if report is not None:
                    child.send(report)
