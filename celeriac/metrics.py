"""Prometheus metrics, with the ``celeriac[metrics]`` extra (``prometheus_client``).

``celeriac -A proj worker --metrics-port N`` serves them at ``http://HOST:N/metrics``. They
are counted in the worker's main process, which sees every task's outcome whatever the pool
(prefork children report each result to it), so no multiprocess mode is needed. ``render``
gives the broker's part for any app (the dashboard serves it at its own ``/metrics``).

Counted as things happen::

    celeriac_tasks_total{task, state}            RECEIVED, then SUCCESS, FAILURE, RETRY,
                                                 REJECTED, REVOKED, or LOST (its process died)
    celeriac_task_runtime_seconds{task}          histogram of SUCCESS and FAILURE runs
    celeriac_task_redeliveries_total{task}       work received again: its lease ran out on a
                                                 dead or frozen worker, or its process died
    celeriac_lease_renewals_total                leases this worker renewed
    celeriac_leases_lost_total                   leases it found taken back by the broker

Read from the broker and the worker at scrape time::

    celeriac_broker_up                           1 when the broker answered this scrape
    celeriac_queue_messages{queue}               messages waiting, delayed or running
    celeriac_dead_letters                        messages in the dead-letter queue
    celeriac_worker_up{worker}                   1 while the worker serves metrics
    celeriac_worker_slots{worker}                pool processes or threads
    celeriac_worker_busy_slots{worker}           those running a task now
    process_*                                    the worker process's CPU, memory, files
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from celeriac.errors import ConfigurationError, MissingExtraError

try:
    from prometheus_client import (
        CollectorRegistry,
        Counter,
        Histogram,
        ProcessCollector,
        generate_latest,
        start_http_server,
    )
    from prometheus_client.core import GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:
    raise MissingExtraError(
        f"Prometheus metrics need prometheus_client ({exc}): pip install 'celeriac[metrics]'"
    ) from exc

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from celeriac.app import Celeriac
    from celeriac.transports.base import Transport
    from celeriac.worker.consumer import Consumer

logger = logging.getLogger("celeriac.worker")

#: The content type of what ``render`` returns (Prometheus' classic text format).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Runtime buckets, seconds: from a no-op task to a five-minute one.
RUNTIME_BUCKETS = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
#: The task label of messages refused before their task could be known.
NO_TASK = "-"


class BrokerCollector(Collector):
    """Queue depths and the dead-letter count, read from the broker at each scrape."""

    def __init__(self, broker: Transport, queues: Callable[[], Iterable[str]]) -> None:
        self.broker = broker
        self.queues = queues

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("celeriac_broker_up", "1 when the broker answered this scrape")
        try:
            sizes = {name: self.broker.size(name) for name in sorted(set(self.queues()))}
            dead = self.broker.dead_letter_count()
        except Exception as exc:  # a scrape must not fail because the broker is away
            logger.warning("metrics: the broker did not answer: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily(
            "celeriac_queue_messages", "Messages on a queue: waiting, delayed or running",
            labels=["queue"],
        )  # fmt: skip
        for name, size in sizes.items():
            depth.add_metric([name], size)
        yield depth
        yield GaugeMetricFamily(
            "celeriac_dead_letters", "Messages in the dead-letter queue", value=dead
        )


class WorkerCollector(Collector):
    """Whether the worker is up, and how many of its pool slots are busy."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer

    def collect(self) -> Iterator[Metric]:
        consumer, labels = self.consumer, [self.consumer.hostname]
        control = consumer.control
        busy = len(control.running()) if control is not None else 0
        for name, text, value in (
            ("celeriac_worker_up", "1 while the worker runs", 1),
            ("celeriac_worker_slots", "Pool processes or threads", consumer.pool.concurrency),
            ("celeriac_worker_busy_slots", "Pool slots running a task now", busy),
        ):
            gauge = GaugeMetricFamily(name, text, labels=["worker"])
            gauge.add_metric(labels, value)
            yield gauge


class WorkerMetrics:
    """The metrics of one worker: the consumer calls the counting methods as things happen."""

    def __init__(self, app: Celeriac, consumer: Consumer) -> None:
        self.registry = registry = CollectorRegistry()
        self.tasks = Counter(
            "celeriac_tasks", "Tasks by name and state", ["task", "state"], registry=registry
        )
        self.runtime = Histogram(
            "celeriac_task_runtime_seconds", "Seconds tasks ran (SUCCESS and FAILURE)",
            ["task"], buckets=RUNTIME_BUCKETS, registry=registry,
        )  # fmt: skip
        self.redeliveries = Counter(
            "celeriac_task_redeliveries",
            "Tasks received again after a lease ran out or a process died", ["task"],
            registry=registry,
        )  # fmt: skip
        self.renewals = Counter(
            "celeriac_lease_renewals", "Leases renewed by this worker", registry=registry
        )
        self.leases_lost = Counter(
            "celeriac_leases_lost", "Leases found taken back by the broker", registry=registry
        )
        registry.register(BrokerCollector(app.broker, lambda: consumer.queues))
        registry.register(WorkerCollector(consumer))
        ProcessCollector(registry=registry)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    # -- counting (called from the consumer's threads) -------------------------------------

    def received(self, task: str, deliveries: int) -> None:
        """A message passed its checks; a delivery count above 1 means it came back."""
        self.tasks.labels(task, "RECEIVED").inc()
        if deliveries > 1:
            self.redeliveries.labels(task).inc()

    def finished(self, task: str, state: str, runtime: float | None = None) -> None:
        """A task ended in ``state`` (LOST: its process died)."""
        self.tasks.labels(task, state).inc()
        if runtime is not None and state in ("SUCCESS", "FAILURE"):
            self.runtime.labels(task).observe(runtime)

    def leases(self, renewed: int, lost: int) -> None:
        """One round of lease renewals."""
        if renewed:
            self.renewals.inc(renewed)
        if lost:
            self.leases_lost.inc(lost)

    # -- serving ---------------------------------------------------------------------------

    def render(self) -> bytes:
        """The exposition text of every metric of this worker."""
        return generate_latest(self.registry)

    def serve(self, port: int, address: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on ``address:port`` in a thread; returns the port (0: any free)."""
        try:
            self._server, self._thread = start_http_server(port, address, self.registry)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve metrics on {address}:{port}: {exc.strerror or exc} "
                "(choose another --metrics-port)"
            ) from None
        # Pool processes forked later must not hold the port: a worker restarted while an
        # orphaned pool process lingers could not bind it again.
        os.register_at_fork(after_in_child=self._close_in_child)
        return int(self._server.server_port)

    def _close_in_child(self) -> None:
        if self._server is not None:
            self._server.socket.close()
            self._server = None

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def render(app: Celeriac, queues: Iterable[str] | None = None) -> bytes:
    """Broker metrics for ``app`` in Prometheus text format: queue depths and dead letters.

    ``queues`` defaults to the app's default queue; the dashboard passes every queue it knows.
    """
    names = list(queues) if queues is not None else [app.conf.task_default_queue]
    registry = CollectorRegistry()
    registry.register(BrokerCollector(app.broker, lambda: names))
    return generate_latest(registry)
