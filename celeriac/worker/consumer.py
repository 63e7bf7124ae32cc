"""The consumer: fetches leased work, feeds the pool, stores results and acknowledges.

Three threads in the worker process share the work:

- the fetcher takes deliveries from the broker while there is room in the prefetch budget
  (under load, once half of it is free: one broker call then fetches several messages);
- the lease keeper (``celeriac.worker.leases``) renews the leases of everything held, on its
  own schedule, so that a busy main loop cannot let a lease lapse; for pools that run tasks
  in this process, through a helper process that a task holding the GIL cannot starve;
- the main loop (``run``) validates what was fetched, hands jobs to idle pool slots and
  finishes what the pool reports: store the result, then ack / retry / dead-letter (those
  endings are in ``celeriac.worker.endings``).

With the prefork pool, whose ``submit`` only writes to a child's pipe, that work is done where
it arrives, without waking the main loop (each wakeup of another thread costs more than the
work it carries): the fetcher validates and hands out what it fetched, and the pool's collector
thread finishes what the children report (``handle_now``). The consumer's lock lets one thread
at a time change what the worker holds. The main loop is then left with the rest: lost
children, hard time limits, autoscale, shutdown.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from celeriac import signals
from celeriac.errors import ConcurrencyKeyError, MessageError, NotRegistered
from celeriac.message import Message, decode
from celeriac.transports.base import DEFAULT_LEASE, Delivery
from celeriac.worker.control import RevokedSet, WorkerControl
from celeriac.worker.endings import Endings, Inflight, time_limits
from celeriac.worker.execute import JobDone
from celeriac.worker.finisher import Finisher
from celeriac.worker.leases import LeaseKeeper
from celeriac.worker.limits import Limits, Slot
from celeriac.worker.pools import Event, Job, Pool

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.metrics import WorkerMetrics
    from celeriac.worker.autoscale import Autoscaler
    from celeriac.worker.task_events import TaskEvents

logger = logging.getLogger("celeriac.worker")


class Consumer(Endings):
    """Moves work between the broker and the pool; owns every lease the worker holds."""

    def __init__(
        self,
        app: Celeriac,
        pool: Pool,
        events: queue.SimpleQueue[Event],
        queues: list[str],
        hostname: str,
        autoscaler: Autoscaler | None = None,
        lease_helper: bool = False,
    ) -> None:
        """``lease_helper``: renew leases from a helper process (tasks run in this one)."""
        self.app = app
        self.autoscaler = autoscaler
        self.pool = pool
        self.events = events
        self.queues = queues
        self.hostname = hostname
        conf = app.conf
        options = conf.broker_transport_options or {}
        self.lease = float(options.get("lease_timeout", DEFAULT_LEASE))
        multiplier = conf.worker_prefetch_multiplier
        slots = autoscaler.maximum if autoscaler is not None else pool.concurrency
        self.budget = slots * max(1, multiplier)
        self.refill = max(1, self.budget // 2)  # see _worth_fetching
        self.accept = conf.accept_content
        self.inflight: dict[int, Inflight] = {}
        self.processed = 0
        self._held = 0  # deliveries fetched and not yet finished (the fetcher's budget)
        self._held_lock = threading.Lock()
        self._room = threading.Event()
        self._next_id = 0
        self._lock = threading.RLock()  # one batch of events handled at a time (handle_now)
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.finisher = Finisher(app)
        self.limits = Limits(app, hostname, self.lease)  # rate and concurrency limits
        self.leases = LeaseKeeper(app, self.lease, self, helper=lease_helper)
        # monitoring and control (celeriac.worker.control): set up by start()
        self.revoked = RevokedSet()
        self.task_events: TaskEvents | None = None  # only when task events are on (-E)
        self.control: WorkerControl | None = None
        self.metrics: WorkerMetrics | None = None  # Prometheus counters (--metrics-port)
        #: monotonic times of the last main-loop step and successful broker call (health)
        self.last_loop = self.last_broker_ok = time.monotonic()

    # -- the threads ----------------------------------------------------------------------

    def start(self) -> None:
        """Start remote control, the lease keeper, the finisher and the fetcher."""
        self.control = WorkerControl(self)  # revocations loaded before the first fetch
        self.control.start()
        if self.pool.hands_off:
            self.pool.on_events = self.handle_now
        self.leases.start()
        self.finisher.start()
        if self.pool.consumes:
            return  # its processes fetch for themselves
        thread = threading.Thread(target=self._fetch_loop, name="fetcher", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _fetch_loop(self) -> None:
        while not self.stopping.is_set():
            with self._held_lock:
                room = self.budget - self._held
                self._room.clear()
            if not self._worth_fetching(room):
                self._room.wait(0.5)
                continue
            self._fetch(room)

    def _fetch(self, room: int) -> None:
        """Fetch up to ``room`` deliveries, have them renewed, and hand them on."""
        try:
            deliveries = self.app.broker.fetch(self.queues, limit=room, timeout=0.25,
                                               lease=self.lease)  # fmt: skip
        except Exception:
            logger.exception("fetching from the broker failed; trying again in 1s")
            self.stopping.wait(1.0)
            return
        self.last_broker_ok = time.monotonic()
        if deliveries:
            with self._held_lock:
                self._held += len(deliveries)
            self.leases.hold(deliveries)  # renewed from now on, before anything can start
            if self.pool.on_events is not None:  # prefork: hand them out from this thread
                self.handle_now([("fetched", deliveries)])
            else:
                self.events.put(("fetched", deliveries))

    # -- the main loop --------------------------------------------------------------------

    def run(self) -> None:
        """Work until ``stop()``; returns once running jobs are finished and results stored."""
        while not self.stopping.is_set():
            self._step(timeout=0.5)
        self._wind_down()

    def _step(self, timeout: float) -> None:
        self.last_loop = time.monotonic()
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            event = None
        batch: list[Event] = [event] if event is not None else []
        while len(batch) < 256:
            try:
                batch.append(self.events.get_nowait())
            except queue.Empty:
                break
        self.handle_now(batch)
        self.pool.check()
        if self.autoscaler is not None:
            self.autoscaler.step(len(self.inflight) - self.pool.backlog())

    def handle_now(self, batch: list[Event]) -> None:
        """Handle a batch of events in the calling thread: the main loop, or the prefork pool's
        collector thread, which thus finishes jobs without waking the main loop."""
        with self._lock:
            try:
                self._handle(batch)
            except Exception:
                # Work popped from ``inflight`` is no longer renewed: its leases run out and
                # the broker delivers it again. Nothing is lost; the worker goes on.
                logger.exception("handling %d event(s) failed; their leases will expire",
                                 len(batch))  # fmt: skip

    def _handle(self, batch: list[Event]) -> None:
        for event in batch:
            if event[0] == "fetched":
                self.leases.arrived(event[1])  # from here on, held only while in inflight
        finished: list[JobDone] = []
        for event in batch:
            kind = event[0]
            if kind == "fetched":
                self._accept(event[1])
            elif kind == "done":
                finished.append(event[1])
            elif kind == "lost":
                self._lost(event[1], event[2], event[3] if len(event) > 3 else None)
            elif kind == "timeout":
                self._timed_out(event[1])
            elif kind == "lost_held":  # a consuming pool's child died (celeriac.worker.consuming)
                self._end_lost(event[1], event[2], event[3])
            elif kind == "timeout_held":
                self._end_timed_out(event[1])
        if finished:
            self._finish(finished)
        self.limits.flush()  # slots of the tasks that ended in this batch
        self.leases.update(self.inflight.values())  # stop renewing what ended

    def _submit(self, job_id: int) -> None:
        """Hand a job to the pool, which starts it as soon as a slot is free."""
        item = self.inflight[job_id]
        task = self.app.tasks.get(item.message.task)
        if task is not None and task.acks_late is False:
            item.acked = self.app.broker.ack(item.delivery)
        delivery_info = {
            "routing_key": item.delivery.queue,
            "priority": item.delivery.priority,
            "redelivered": item.delivery.deliveries > 1,
            "delivery_count": item.delivery.deliveries,
        }
        hard, soft = time_limits(item.message, task, self.app)
        self.pool.submit(Job(job_id, item.message, item.body, delivery_info, hard, soft))

    # -- receiving ------------------------------------------------------------------------

    def _accept(self, deliveries: list[Delivery]) -> None:
        """Validate fetched messages; refuse the bad ones, hand the good ones to the pool."""
        log_received = logger.isEnabledFor(logging.INFO)
        for delivery in deliveries:
            if self.stopping.is_set():
                self.app.broker.release(delivery)  # fetched as we stopped: give it back
                self._release_budget(1)
                continue
            try:
                message = decode(delivery.body, self.accept)
            except MessageError as exc:
                self._refuse(delivery, exc.reason, exc.detail)
                continue
            if message.task not in self.app.tasks:
                signals.task_unknown.send(
                    sender=self, name=message.task, id=message.id, message=message,
                    exc=NotRegistered(message.task),
                )  # fmt: skip
                self._refuse(delivery, "unknown_task", f"no task named {message.task!r}")
                continue
            if message.is_expired():
                self._expire(delivery, message)
                continue
            if message.id in self.revoked:  # remote control: revoked before it arrived
                self._discard_revoked(delivery, message)
                continue
            admitted, slot = self._admit(delivery, message)
            if not admitted:  # rate or concurrency limit: it waits in the broker
                continue
            if log_received:
                logger.info("Received task: %s[%s]", message.task, message.id)
            if self.metrics is not None:
                self.metrics.received(message.task, delivery.deliveries)
            signals.task_received.send(sender=self, message=message)
            if self.task_events is not None:
                self.task_events.received(message)
            self._next_id += 1
            self.inflight[self._next_id] = Inflight(delivery, message, delivery.body, slot=slot)
            if slot is not None:
                self.leases.hold_slot(slot)  # renewed with the lease, from before it starts
            self._submit(self._next_id)

    def _admit(self, delivery: Delivery, message: Message) -> tuple[bool, Slot | None]:
        """Rate and concurrency limits: run now, or give the message back to wait its turn."""
        try:
            admitted, slot = self.limits.admit(delivery, message)
        except ConcurrencyKeyError as exc:  # the task's key function: fail this one task
            self._refuse(delivery, "concurrency_key_failed", str(exc))
            self._store_failure(message, exc)  # after: who sees the failure sees the letter
            return False, None
        except Exception:
            logger.exception("checking the limits of %s[%s] failed; its lease will expire",
                             message.task, message.id)  # fmt: skip
            admitted, slot = False, None
        if not admitted:
            self._release_budget(1)
        return admitted, slot

    def _release_budget(self, count: int) -> None:
        with self._held_lock:
            self._held -= count
            room = self.budget - self._held
        if self._worth_fetching(room):
            self._room.set()

    def _worth_fetching(self, room: int) -> bool:
        """Whether the fetcher should fetch now: while jobs still wait for a pool slot, only
        once half the prefetch budget is free, so that under load one broker call fetches
        several messages and one wakeup of the fetcher serves several finished jobs."""
        return room > 0 and (room >= self.refill or self.pool.backlog() == 0)

    def still_held(self, job_id: int) -> bool:
        """Whether a job about to start is still this worker's to run: its lease is fresh, or
        the broker renews it now. A worker that was frozen past its leases skips the jobs it
        had fetched and not started; the broker has given them to another worker."""
        item = self.inflight.get(job_id)
        if item is None or item.acked or self.leases.fresh(item.delivery):
            return True
        return self.leases.confirm(item.delivery)

    # -- stopping -------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop fetching; running jobs finish, buffered ones are handed back."""
        self.stopping.set()
        self._room.set()
        self.events.put(("stop",))  # wakes the main loop now (put may run in a signal handler)

    def _wind_down(self) -> None:
        # Unstarted work goes back at once, before a child that frees up can take it; then
        # again for what the fetcher handed out as it stopped.
        released = self._give_back_unstarted() + self.pool.hand_back()
        for thread in self._threads:  # the fetcher; the lease keeper runs until close()
            thread.join(2.0)
        released += self._give_back_unstarted()
        if released:
            logger.info("Handed back %d prefetched task(s) to the broker", released)
        self.handle_now(_drain(self.events))

    def _give_back_unstarted(self) -> int:
        """Hand back work that was fetched but never started, without counting a delivery;
        returns how many deliveries went back."""
        with self._lock:
            unstarted = self.pool.take_back()
            released = 0
            for job_id in unstarted:
                item = self.inflight.pop(job_id)
                self.limits.finished(item.slot)
                if not item.acked:
                    self.app.broker.release(item.delivery)
                    released += 1
            self._release_budget(len(unstarted))
            self.limits.flush()
            self.leases.update(self.inflight.values())  # stop renewing what went back
        return released

    def wait_running(self, timeout: float) -> None:
        """Finish jobs still running in the pool, up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        announced = 0.0
        while (self.inflight or self.pool.busy()) and time.monotonic() < deadline:
            if self.inflight and time.monotonic() - announced > 5:
                running = self.inflight.values()
                names = ", ".join(f"{i.message.task}[{i.message.id}]" for i in running)
                logger.info("Waiting for %d running task(s): %s", len(self.inflight), names)
                announced = time.monotonic()
            self.handle_now(_drain(self.events, timeout=0.2))
            self.pool.check()

    def close(self) -> None:
        """Write the last results and acknowledgements; call once the pool has stopped."""
        self.finisher.stop()
        self.leases.close()  # renewed through a graceful shutdown, until the last ack
        if self.control is not None:
            self.control.stop()  # worker-offline, and the last events

    def abandon_running(self, reason: str) -> None:
        """Give back jobs that were still running when the worker had to stop."""
        with self._lock:
            for item in list(self.inflight.values()):
                self.limits.finished(item.slot)
                if not item.acked:
                    self.app.broker.release(item.delivery, reason=reason)
            self.inflight.clear()
            self.limits.flush()
            self.leases.update(())
        self.pool.abandon(reason)

    def set_queues(self, queues: list[str]) -> None:
        """Fetch from ``queues`` from now on (the fetcher reads the list on every pass)."""
        self.queues = queues
        self.pool.forward(("queues", queues))

    def total_processed(self) -> int:
        """Jobs finished by this worker, here or in the pool's consuming processes."""
        return self.processed + self.pool.processed()

    def stats(self) -> dict[str, Any]:
        """Counters for logs and monitoring."""
        return {"processed": self.total_processed(), "inflight": len(self.inflight)}


def _drain(events: queue.SimpleQueue[Event], timeout: float = 0.0) -> list[Event]:
    batch: list[Event] = []
    try:
        batch.append(events.get(timeout=timeout) if timeout else events.get_nowait())
        while True:
            batch.append(events.get_nowait())
    except queue.Empty:
        pass
    return batch
