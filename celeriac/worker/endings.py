"""How the consumer ends a delivery: the outcome stored first, then the message acknowledged,
retried, given back or dead-lettered, so that a result is never lost behind an ack.

``Endings`` is the part of ``celeriac.worker.consumer.Consumer`` that does this, kept apart so
that each file reads as one concern: the consumer fetches, validates and hands work to the pool;
these methods end what it received, refused, expired, revoked, finished, lost or timed out.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeriac import signals, states
from celeriac.backend import meta_key
from celeriac.errors import TimeLimitExceeded, TransportError, WorkerLostError
from celeriac.message import Message
from celeriac.trace import Outcome
from celeriac.transports.base import Delivery, KeyWrite
from celeriac.worker.execute import JobDone
from celeriac.workflow import after_outcome

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.metrics import WorkerMetrics
    from celeriac.worker.control import RevokedSet
    from celeriac.worker.finisher import Finisher
    from celeriac.worker.limits import Limits, Slot
    from celeriac.worker.task_events import TaskEvents

logger = logging.getLogger("celeriac.worker")


@dataclass(slots=True)
class Inflight:
    """A delivery this worker holds: waiting for a pool slot, or running."""

    delivery: Delivery
    message: Message
    body: bytes
    acked: bool = False
    #: the concurrency slot it holds while it runs (celeriac.worker.limits)
    slot: Slot | None = None


class Endings:
    """The consumer's methods that end deliveries (``Consumer`` inherits them)."""

    app: Celeriac
    hostname: str
    inflight: dict[int, Inflight]
    processed: int
    limits: Limits
    finisher: Finisher
    revoked: RevokedSet
    metrics: WorkerMetrics | None
    task_events: TaskEvents | None
    #: write results in the thread that finishes the jobs, never in the finisher's thread
    write_inline: bool = False
    _held: int
    _held_lock: threading.Lock
    _room: threading.Event

    # -- what the consumer refuses or drops on receipt ------------------------------------

    def _refuse(self, delivery: Delivery, reason: str, detail: str) -> None:
        """Dead-letter a message this worker cannot run; one log line, then go on."""
        logger.error(
            "Dead-lettered message %s from queue %s: %s (%s)",
            delivery.message_id, delivery.queue, reason, detail,
        )  # fmt: skip
        self.app.broker.dead_letter(delivery, reason)
        if self.metrics is not None:
            self.metrics.finished("-", states.REJECTED)  # "-": no trusted task name
        signals.task_rejected.send(sender=self, delivery=delivery, reason=reason)
        if self.task_events is not None:
            self.task_events.rejected(delivery, reason)
        self._release_budget(1)

    def _expire(self, delivery: Delivery, message: Message) -> None:
        logger.info("Discarding expired task: %s[%s]", message.task, message.id)
        self.app.results.store(
            message.id, states.REVOKED, {"exc_type": "TaskRevokedError", "exc_message": "expired"},
            name=message.task,
        )  # fmt: skip
        self.app.broker.ack(delivery)
        if self.metrics is not None:
            self.metrics.finished(message.task, states.REVOKED)
        signals.task_revoked.send(sender=self, request=message, expired=True)
        if self.task_events is not None:
            self.task_events.revoked(message, expired=True)
        self._release_budget(1)

    def _discard_revoked(
        self, delivery: Delivery, message: Message, acked: bool = False, terminated: bool = False
    ) -> None:
        """Store REVOKED for a task revoked by remote control and end its delivery."""
        logger.info("Discarding revoked task: %s[%s]", message.task, message.id)
        why = "terminated" if terminated else "revoked"
        self.app.results.store(
            message.id, states.REVOKED, {"exc_type": "TaskRevokedError", "exc_message": why},
            name=message.task, worker=self.hostname,
        )  # fmt: skip
        if not acked:
            self.app.broker.ack(delivery)
        if self.metrics is not None:
            self.metrics.finished(message.task, states.REVOKED)
        signals.task_revoked.send(sender=self, request=message, terminated=terminated)
        if self.task_events is not None:
            self.task_events.revoked(message, terminated=terminated)
        self._release_budget(1)

    # -- finishing ------------------------------------------------------------------------

    def _finish(self, batch: list[JobDone]) -> None:
        """Store results, then acknowledge: a result is never lost behind an ack."""
        to_complete: list[tuple[Delivery, KeyWrite | None]] = []
        settled = 0
        log_successes = logger.isEnabledFor(logging.INFO)
        results = self.app.results
        for done in batch:
            item = self.inflight.pop(done.job_id, None)
            if item is None:
                continue
            self.limits.finished(item.slot)
            if done.skipped:  # not ours any more: nothing to store or acknowledge
                settled += 1
                continue
            if log_successes or done.state != states.SUCCESS:
                self._log_outcome(item.message, done)
            if self.metrics is not None:
                self.metrics.finished(item.message.task, done.state, done.runtime)
            if self.task_events is not None:
                self.task_events.finished(item.message, done)
            write = None
            if done.meta is not None:
                write = (meta_key(item.message.id), done.meta, results.expires)
            if self._settle(item, done, write):
                settled += 1
            else:
                to_complete.append((item.delivery, write))
        if to_complete:
            self.finisher.submit(to_complete, now=self.write_inline or not self.inflight)
        self.processed += len(batch)
        # Prefetch bounds work not yet done: a finished job frees its slot at once, while
        # the finisher writes its result, so fetching overlaps with writing.
        self._release_budget(settled + len(to_complete))

    def _settle(self, item: Inflight, done: JobDone, write: KeyWrite | None) -> bool:
        """End deliveries that are not simply completed: retries, rejections, early acks.

        Returns False when the delivery is left for ``_complete`` (ack + store, atomically).
        """
        if done.redeliver and not item.acked:
            self._redeliver(item)
            return True
        retrying = done.state == states.RETRY and done.retry_body is not None
        rejected = done.state == states.REJECTED
        if not (item.acked or retrying or rejected):
            return False
        broker = self.app.broker
        if write is not None:
            self.app.results.transport.put(*write)
        if item.acked:
            if retrying:
                broker.publish(
                    item.delivery.queue, done.retry_body or b"", due=done.retry_due,
                    priority=item.delivery.priority,
                )  # fmt: skip
        elif retrying:
            broker.retry(item.delivery, done.retry_due, done.retry_body)
        elif done.requeue:
            broker.release(item.delivery)
        else:
            broker.dead_letter(item.delivery, done.reason or "rejected")
        return True

    def _redeliver(self, item: Inflight) -> None:
        """What follows the task could not be sent (broker error): run it again, later."""
        message, delivery = item.message, item.delivery
        logger.error("Task %s[%s]: what follows it could not be sent; it will run again",
                     message.task, message.id)  # fmt: skip
        self.app.broker.release(delivery, reason="follow_up_failed")
        if delivery.deliveries >= self.app.broker.max_deliveries:  # dead-lettered now
            error = TransportError("what follows the task could not be sent (broker error)")
            self._store_failure(message, error)

    def _lost(self, job_id: int, how: str, process: dict[str, Any] | None = None) -> None:
        """The process running a job died: count a failed delivery (dead-letter at budget)."""
        item = self.inflight.pop(job_id, None)
        if item is None:
            return
        self.limits.finished(item.slot)
        revoked = item.message.id in self.revoked  # then _discard_revoked frees the budget
        self._end_lost(item, how, process)
        if not revoked:
            self._release_budget(1)

    def _end_lost(self, item: Inflight, how: str, process: dict[str, Any] | None) -> None:
        """End the delivery of a job whose process died (held here or by a prefork child)."""
        if item.message.id in self.revoked:  # remote control: stopped by revoke(terminate)
            self._discard_revoked(item.delivery, item.message, item.acked, terminated=True)
            return
        message, delivery = item.message, item.delivery
        logger.error("Process running %s[%s] died (%s)", message.task, message.id, how)
        if self.metrics is not None:
            self.metrics.finished(message.task, "LOST")
        if self.task_events is not None:
            self.task_events.failed(message, f"WorkerLostError(worker process died ({how}))")
        if not item.acked:
            detail = _lost_detail(how, process, self.hostname)
            self.app.broker.release(delivery, reason="worker_lost", detail=detail)
        # After the release, so a client that sees the failure also sees the dead letter.
        if delivery.deliveries >= self.app.broker.max_deliveries:
            self._store_failure(message, WorkerLostError(f"worker process died ({how})"))

    def _timed_out(self, job_id: int) -> None:
        """A job passed its hard time limit: record the failure; it is not redelivered."""
        item = self.inflight.pop(job_id, None)
        if item is None:
            return
        self.limits.finished(item.slot)
        self._end_timed_out(item)
        self._release_budget(1)

    def _end_timed_out(self, item: Inflight) -> None:
        """End the delivery of a job stopped at its hard time limit (held here or by a child)."""
        limit = time_limits(item.message, self.app.tasks.get(item.message.task), self.app)[0]
        logger.error(
            "Hard time limit (%ss) exceeded for %s[%s]", limit, item.message.task, item.message.id
        )
        self._store_failure(item.message, TimeLimitExceeded(f"hard time limit ({limit}s)"))
        if self.metrics is not None:
            self.metrics.finished(item.message.task, states.FAILURE)
        if self.task_events is not None:
            self.task_events.failed(item.message, f"TimeLimitExceeded(hard time limit ({limit}s))")
        if not item.acked:
            self.app.broker.ack(item.delivery)

    def _store_failure(self, message: Message, exc: Exception) -> None:
        self.app.results.store(
            message.id, states.FAILURE, exc, name=message.task, worker=self.hostname
        )
        if message.callbacks or message.errbacks or message.chain or message.chord:
            # canvas: errbacks, the rest of the chain, the chord see this failure too
            after_outcome(self.app, message, self.hostname, Outcome(states.FAILURE, exc))

    def _release_budget(self, count: int) -> None:
        with self._held_lock:
            self._held -= count
        self._room.set()

    def _log_outcome(self, message: Message, done: JobDone) -> None:
        name, task_id = message.task, message.id
        if done.state == states.SUCCESS:
            logger.info(
                "Task %s[%s] succeeded in %ss: %s", name, task_id, done.runtime, done.summary
            )
        elif done.state == states.FAILURE:
            logger.error("Task %s[%s] raised unexpected: %s", name, task_id, done.summary)
        elif done.state == states.RETRY:
            logger.info("Task %s[%s] retry: %s", name, task_id, done.summary)
        elif done.state == states.REJECTED:
            logger.warning("Task %s[%s] rejected: %s", name, task_id, done.reason)


def _lost_detail(how: str, process: dict[str, Any] | None, hostname: str) -> dict[str, Any]:
    """What a worker_lost failure records: how the process ended, its pid, and the worker's."""
    detail: dict[str, Any] = {"cause": how}
    if process is not None:
        code = process.get("exitcode")
        if isinstance(code, int) and code < 0:
            detail.update(cause=f"signal {-code} ({_signal_name(-code)})", signal=-code)
        else:
            detail.update(cause=f"exit code {code}", exitcode=code)
        detail["pid"] = process.get("pid")
    detail.update(worker_pid=os.getpid(), hostname=hostname)
    return detail


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "unknown signal"


def time_limits(message: Message, task: Any, app: Celeriac) -> tuple[float | None, float | None]:
    """The hard and soft time limits in force: the message's, the task's, then the app's."""
    hard, soft = message.timelimit
    if hard is None:
        hard = getattr(task, "time_limit", None) or app.conf.task_time_limit
    if soft is None:
        soft = getattr(task, "soft_time_limit", None) or app.conf.task_soft_time_limit
    return hard, soft
