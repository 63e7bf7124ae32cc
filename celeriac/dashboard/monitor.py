"""The dashboard's live picture: events folded into a ``State``, and what the charts need.

Two daemon threads, started on first use (a dashboard mounted in another ASGI app gets no
lifespan events): one reads events (the broker's kept history first, then live) and folds
them in; one samples what events do not carry (queue depths, dead letters, and what workers
answer about themselves) every few seconds. Readers take ``lock`` while they look.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celeriac.events import EventReceiver
from celeriac.monitor.queues import _routed_queues
from celeriac.monitor.state import State

if TYPE_CHECKING:
    from celeriac.app import Celeriac

logger = logging.getLogger("celeriac.dashboard")

#: Seconds of per-second task counts kept for the chart, and of queue-depth samples.
SERIES_SECONDS = 600
SAMPLE_INTERVAL = 2.0
DETAILS_INTERVAL = 10.0
#: Dead letters counted before the count is shown as "at least".
DEAD_COUNT_LIMIT = 1000
#: Runtimes kept for the percentiles; tasks whose events are kept for their timeline.
RUNTIMES_KEPT = 10_000
TIMELINES_KEPT = 5_000
TIMELINE_LENGTH = 50
#: Distinct names, workers and queues offered as filters.
FACETS_KEPT = 1_000


@dataclass
class Samples:
    """What the sampler last saw, and the depths over time."""

    depths: dict[str, int] = field(default_factory=dict)
    dead: int = 0
    history: deque[tuple[float, dict[str, int]]] = field(
        default_factory=lambda: deque(maxlen=int(SERIES_SECONDS / SAMPLE_INTERVAL))
    )
    details: dict[str, dict[str, Any]] = field(default_factory=dict)  #: worker -> stats etc.
    at: float = 0.0


class Monitor:
    """Events and samples for one app, shared by every request of one dashboard."""

    def __init__(self, app: Celeriac, max_tasks: int = 100_000) -> None:
        self.app = app
        self.state = State(max_tasks=max_tasks)
        self.lock = threading.RLock()
        self.samples = Samples()
        self.per_second: dict[int, list[int]] = {}  #: second -> [succeeded, failed]
        self.runtimes: deque[float] = deque(maxlen=RUNTIMES_KEPT)
        self.timelines: OrderedDict[str, list[tuple[str, float, str]]] = OrderedDict()
        self.children: dict[str, set[str]] = {}
        self.facets: dict[str, set[str]] = {"name": set(), "worker": set(), "queue": set()}
        self.version = 0  #: raised with every batch of events folded in
        self._counts: tuple[int, float, dict[str, int]] = (-1, 0.0, {})
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._start_lock = threading.Lock()

    # -- running -----------------------------------------------------------------------------

    def start(self) -> Monitor:
        """Start the threads once (later calls do nothing)."""
        with self._start_lock:
            if not self._threads:
                for target, name in ((self._read, "events"), (self._sample, "sampler")):
                    thread = threading.Thread(target=target, name=f"dashboard-{name}",
                                              daemon=True)  # fmt: skip
                    self._threads.append(thread)
                    thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(3.0)

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                with EventReceiver(self.app) as receiver:
                    while not self._stop.is_set():
                        events = receiver.get(0.5)
                        if events:
                            self.fold(events)
            except Exception:
                logger.exception("reading events failed; trying again in 1 s")
                self._stop.wait(1.0)

    def _sample(self) -> None:
        details_at = 0.0
        while not self._stop.is_set():
            try:
                self.sample_queues()
                if time.monotonic() - details_at > DETAILS_INTERVAL or self._undetailed():
                    details_at = time.monotonic()
                    self.sample_workers()
            except Exception:
                logger.exception("sampling queues and workers failed")
            self._stop.wait(SAMPLE_INTERVAL)

    # -- folding events ----------------------------------------------------------------------

    def fold(self, events: list[dict[str, Any]]) -> None:
        """Fold events into the state, the chart's counts and the tasks' timelines."""
        with self.lock:
            for event in events:
                self.state.event(event)
                kind = str(event.get("type", ""))
                if kind.startswith("task-") and isinstance(event.get("uuid"), str):
                    self._task_event(kind, event)
            self._prune()
            self.version += 1

    def _task_event(self, kind: str, event: dict[str, Any]) -> None:
        uuid, stamp = event["uuid"], float(event.get("timestamp") or 0.0)
        if kind in ("task-succeeded", "task-failed"):
            counts = self.per_second.setdefault(int(stamp), [0, 0])
            counts[kind == "task-failed"] += 1
            if isinstance(event.get("runtime"), int | float):
                self.runtimes.append(float(event["runtime"]))
        timeline = self.timelines.get(uuid)
        if timeline is None:
            timeline = self.timelines[uuid] = []
        if len(timeline) < TIMELINE_LENGTH:
            timeline.append((kind.removeprefix("task-"), stamp, str(event.get("hostname") or "")))
        parent = event.get("parent_id")
        if isinstance(parent, str) and parent != uuid:
            self.children.setdefault(parent, set()).add(uuid)
        task = self.state.tasks.get(uuid)
        if task is not None:
            for facet, value in (("name", task.name), ("worker", task.worker),
                                 ("queue", task.queue)):  # fmt: skip
                found = self.facets[facet]
                if value and value not in found and len(found) < FACETS_KEPT:
                    found.add(value)

    def _prune(self) -> None:
        while len(self.timelines) > TIMELINES_KEPT:
            self.timelines.popitem(last=False)
        oldest = int(time.time()) - SERIES_SECONDS
        for second in [s for s in self.per_second if s < oldest]:
            del self.per_second[second]
        if len(self.children) > self.state.max_tasks:
            tasks = self.state.tasks
            self.children = {p: c for p, c in self.children.items() if p in tasks}

    # -- sampling ----------------------------------------------------------------------------

    def known_queues(self) -> list[str]:
        """The default queue, routed queues, queues seen in events and those workers take."""
        names = {self.app.conf.task_default_queue, *_routed_queues(self.app.conf.task_routes)}
        with self.lock:
            names.update(self.facets["queue"])
            for details in self.samples.details.values():
                names.update(q.get("name", "") for q in details.get("queues", []))
        return sorted(name for name in names if name)

    def sample_queues(self) -> None:
        """Queue depths and the dead-letter count, now."""
        broker = self.app.broker
        depths = {name: broker.size(name) for name in self.known_queues()}
        count = getattr(broker, "dead_letter_count", None)  # newer transports count cheaply
        dead = int(count()) if callable(count) else len(broker.dead_letters(DEAD_COUNT_LIMIT))
        with self.lock:
            self.samples.depths, self.samples.dead = depths, dead
            self.samples.history.append((time.time(), depths))
            self.samples.at = time.time()

    def _undetailed(self) -> bool:
        """Whether a worker online has not been asked about itself yet."""
        with self.lock:
            known = self.samples.details
            return any(w.hostname not in known for w in self.state.alive_workers())

    def sample_workers(self) -> None:
        """Ask the workers online for their stats, registered tasks and queues."""
        with self.lock:
            alive = len(self.state.alive_workers())
        if not alive:
            return
        answers: dict[str, dict[str, Any]] = {}
        for command in ("stats", "registered", "active_queues"):
            replies = self.app.control.broadcast(command, {}, reply=True, timeout=1.0,
                                                 limit=alive) or []  # fmt: skip
            for reply in replies:
                for host, value in reply.items():
                    if not (isinstance(value, dict) and "error" in value):
                        key = "queues" if command == "active_queues" else command
                        answers.setdefault(host, {})[key] = value
        with self.lock:
            self.samples.details.update(answers)

    def task_counts(self) -> dict[str, int]:
        """How many tasks are in each state (counted at most once a second: it reads them all)."""
        with self.lock:
            version, at, counts = self._counts
            if version != self.version and time.monotonic() - at > 1.0:
                counts = self.state.task_counts()
                self._counts = (self.version, time.monotonic(), counts)
            return dict(counts)
