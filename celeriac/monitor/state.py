"""The current picture of workers and tasks, folded from events (the CLI and dashboard use it).

    state = State()
    with EventReceiver(app) as receiver:
        for event in receiver.iter(timeout=5):
            state.event(event)
    state.alive_workers(), state.tasks_by_time()

Events from several hosts can arrive out of order; a task's state moves by event time, and
an event older than the state it would replace only fills in missing fields. The task table
is bounded (``max_tasks``, oldest forgotten first).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from celeriac import states
from celeriac.events import HEARTBEAT_INTERVAL, MISSED_BEATS

#: The state each task event moves a task to (task-progress: the custom state it carries).
EVENT_STATES = {
    "task-sent": states.PENDING,
    "task-received": states.RECEIVED,
    "task-started": states.STARTED,
    "task-succeeded": states.SUCCESS,
    "task-failed": states.FAILURE,
    "task-retried": states.RETRY,
    "task-rejected": states.REJECTED,
    "task-revoked": states.REVOKED,
}
#: Where a state stands in a task's life, for events that arrive out of order.
PRECEDENCE = {
    states.PENDING: 0, states.RECEIVED: 1, states.STARTED: 2, states.RETRY: 3,
    states.SUCCESS: 4, states.FAILURE: 4, states.REJECTED: 4, states.REVOKED: 4,
}  # fmt: skip
#: The fields a task takes from its events, as the events name them.
TASK_FIELDS = (
    "name", "args", "kwargs", "result", "exception", "traceback", "runtime", "retries",
    "eta", "expires", "queue", "root_id", "parent_id", "meta",
)  # fmt: skip


@dataclass(slots=True)
class WorkerInfo:
    """What the events say about one worker."""

    hostname: str
    pid: int | None = None
    freq: float = HEARTBEAT_INTERVAL
    last_heartbeat: float | None = None
    active: int = 0
    processed: int = 0
    loadavg: list[float] = field(default_factory=list)
    pool_size: int | None = None
    sw_ver: str | None = None
    offline: bool = False

    def alive(self, now: float | None = None) -> bool:
        """Online, and no more than ``MISSED_BEATS`` heartbeats missed."""
        if self.offline or self.last_heartbeat is None:
            return False
        now = time.time() if now is None else now
        return now - self.last_heartbeat < self.freq * MISSED_BEATS

    def status(self, now: float | None = None) -> str:
        """'online' or 'offline'."""
        return "online" if self.alive(now) else "offline"


@dataclass(slots=True)
class TaskInfo:
    """What the events say about one task."""

    uuid: str
    state: str = states.PENDING
    name: str | None = None
    args: str | None = None
    kwargs: str | None = None
    result: str | None = None
    exception: str | None = None
    traceback: str | None = None
    runtime: float | None = None
    retries: int = 0
    eta: str | None = None
    expires: str | None = None
    queue: str | None = None
    root_id: str | None = None
    parent_id: str | None = None
    meta: Any = None
    worker: str | None = None
    timestamp: float = 0.0  #: time of the event that set ``state``
    sent: float | None = None
    received: float | None = None
    started: float | None = None
    succeeded: float | None = None
    failed: float | None = None
    retried: float | None = None
    rejected: float | None = None
    revoked: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for JSON)."""
        return {name: getattr(self, name) for name in self.__slots__}


class State:
    """Workers and the most recent ``max_tasks`` tasks, as events describe them."""

    def __init__(self, max_tasks: int = 100_000, max_workers: int = 5_000) -> None:
        self.max_tasks = max_tasks
        self.max_workers = max_workers
        self.workers: OrderedDict[str, WorkerInfo] = OrderedDict()
        self.tasks: OrderedDict[str, TaskInfo] = OrderedDict()
        self.event_count = 0

    def event(self, event: dict[str, Any]) -> None:
        """Fold one event into the picture; events of unknown types are counted and skipped."""
        self.event_count += 1
        kind = str(event.get("type", ""))
        if kind.startswith("worker-"):
            self._worker_event(kind, event)
        elif kind.startswith("task-") and isinstance(event.get("uuid"), str):
            self._task_event(kind, event)

    def _worker_event(self, kind: str, event: dict[str, Any]) -> None:
        worker = self.worker(str(event.get("hostname")))
        stamp = float(event.get("timestamp") or 0.0)
        if worker.last_heartbeat is not None and stamp < worker.last_heartbeat:
            return  # an older event than what we know
        worker.last_heartbeat = stamp
        worker.offline = kind == "worker-offline"
        worker.pid = event.get("pid", worker.pid)
        worker.freq = float(event.get("freq") or worker.freq)
        worker.active = int(event.get("active", worker.active) or 0)
        worker.processed = int(event.get("processed", worker.processed) or 0)
        worker.loadavg = list(event.get("loadavg") or worker.loadavg)
        worker.pool_size = event.get("pool_size", worker.pool_size)
        worker.sw_ver = event.get("sw_ver", worker.sw_ver)

    def _task_event(self, kind: str, event: dict[str, Any]) -> None:
        task = self.task(str(event["uuid"]))
        stamp = float(event.get("timestamp") or 0.0)
        stamp_name = kind.removeprefix("task-")
        if stamp_name in _STAMPS:
            setattr(task, stamp_name, stamp)
        for name in TASK_FIELDS:
            if event.get(name) is not None:
                setattr(task, name, event[name])
        if kind != "task-sent" and event.get("hostname"):
            task.worker = str(event["hostname"])
        new_state = EVENT_STATES.get(kind) or (
            str(event["state"]) if kind == "task-progress" and event.get("state") else None
        )
        if new_state is not None and _moves(task, new_state, stamp):
            task.state, task.timestamp = new_state, stamp

    def worker(self, hostname: str) -> WorkerInfo:
        """The worker named ``hostname`` (added when new)."""
        worker = self.workers.get(hostname)
        if worker is None:
            worker = self.workers[hostname] = WorkerInfo(hostname)
            while len(self.workers) > self.max_workers:
                self.workers.popitem(last=False)
        return worker

    def task(self, uuid: str) -> TaskInfo:
        """The task ``uuid`` (added when new, the oldest forgotten past ``max_tasks``)."""
        task = self.tasks.get(uuid)
        if task is None:
            task = self.tasks[uuid] = TaskInfo(uuid)
            while len(self.tasks) > self.max_tasks:
                self.tasks.popitem(last=False)
        return task

    # -- questions ---------------------------------------------------------------------------

    def alive_workers(self, now: float | None = None) -> list[WorkerInfo]:
        """The workers online now, by name."""
        return sorted((w for w in self.workers.values() if w.alive(now)), key=_hostname)

    def tasks_by_time(self, limit: int | None = None) -> list[TaskInfo]:
        """Tasks, the most recently changed first."""
        ordered = sorted(self.tasks.values(), key=lambda t: t.timestamp, reverse=True)
        return ordered if limit is None else ordered[:limit]

    def task_counts(self) -> dict[str, int]:
        """How many tasks are in each state."""
        counts: dict[str, int] = {}
        for task in self.tasks.values():
            counts[task.state] = counts.get(task.state, 0) + 1
        return counts


_STAMPS = frozenset(
    ("sent", "received", "started", "succeeded", "failed", "retried", "rejected", "revoked")
)


def _moves(task: TaskInfo, new_state: str, stamp: float) -> bool:
    """Whether an event of ``stamp`` moves ``task`` to ``new_state``.

    A newer event moves it (a retried task is received again); an older one only if it
    stands later in a task's life and the task is not finished (events from two hosts).
    Except ``task-sent``: a client stamps it after publishing, so a worker may have received,
    run and finished the task first; it only moves a task that is waiting or retrying.
    """
    if new_state == states.PENDING and task.state not in (states.PENDING, states.RETRY):
        return False
    if stamp >= task.timestamp:
        return True
    if task.state in states.READY_STATES:
        return False
    return PRECEDENCE.get(new_state, 2) > PRECEDENCE.get(task.state, 2)


def _hostname(worker: WorkerInfo) -> str:
    return worker.hostname
