"""What each page shows, as plain dicts and lists read from the monitor (and the broker).

Every function here takes the monitor's lock only while it copies, so a page never sees a
task half-updated, and the event thread waits no longer than one scan.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

from celeriac import states
from celeriac.dashboard.masking import mask_repr, mask_value, parameter_names
from celeriac.dashboard.monitor import DEAD_COUNT_LIMIT
from celeriac.errors import MessageError
from celeriac.limits import RATE_LIMIT_KEY
from celeriac.message import decode
from celeriac.monitor.state import TaskInfo

if TYPE_CHECKING:
    from celeriac.dashboard.monitor import Monitor
    from celeriac.transports.base import DeadLetter

CHART_SECONDS = 120
#: Task names whose stored rate limit the workers page looks up (one broker read each).
LIMITS_SHOWN = 500
PER_PAGE = 50
TREE_NODES = 200


def percentile(ordered: list[float], fraction: float) -> float | None:
    """The value below which ``fraction`` of ``ordered`` lies (nearest rank)."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def overview(monitor: Monitor) -> dict[str, Any]:
    """Counters, the chart's series, queue depths and runtime percentiles."""
    now = time.time()
    with monitor.lock:
        state, samples = monitor.state, monitor.samples
        alive = sum(1 for w in state.workers.values() if w.alive(now))
        counts = monitor.task_counts()
        start = int(now) - CHART_SECONDS
        series = [[s, *monitor.per_second.get(s, (0, 0))] for s in range(start, int(now) + 1)]
        runtimes = sorted(monitor.runtimes)
        depth_history = [[round(t, 1), dict(d)] for t, d in list(samples.history)[-60:]]
        depths, dead = dict(samples.depths), samples.dead
        events = state.event_count
    return {
        "now": now, "workers_online": alive, "workers_offline": len(state.workers) - alive,
        "counts": counts, "tasks": sum(counts.values()), "events": events,
        "succeeded": counts.get(states.SUCCESS, 0), "failed": counts.get(states.FAILURE, 0),
        "series": series, "depths": depths, "depth_history": depth_history,
        "dead": dead, "dead_more": dead == DEAD_COUNT_LIMIT and not _counts_dead(monitor),
        "runtime": {name: percentile(runtimes, q) for name, q in
                    (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))},
    }  # fmt: skip


def workers(monitor: Monitor) -> list[dict[str, Any]]:
    """Every worker the events named, online first, with what it answered about itself."""
    now = time.time()
    with monitor.lock:
        rows = []
        for worker in monitor.state.workers.values():
            details = monitor.samples.details.get(worker.hostname, {})
            stats = details.get("stats") or {}
            pool = stats.get("pool") or {}
            rows.append({
                "hostname": worker.hostname, "status": worker.status(now),
                "pool": pool.get("implementation"), "concurrency": worker.pool_size,
                "active": worker.active, "processed": worker.processed,
                "loadavg": [round(x, 2) for x in worker.loadavg],
                "heartbeat_ago": None if worker.last_heartbeat is None
                else max(0.0, now - worker.last_heartbeat),
                "registered": list(details.get("registered") or []),
                "queues": [q.get("name") for q in details.get("queues") or []],
                "pid": worker.pid, "version": worker.sw_ver,
            })  # fmt: skip
    rows.sort(key=lambda row: (row["status"] != "online", row["hostname"]))
    return rows


def registered(monitor: Monitor) -> list[str]:
    """The names of the tasks that the workers asked so far can run."""
    with monitor.lock:
        details = list(monitor.samples.details.values())
    return sorted({str(name) for found in details for name in found.get("registered") or []})


def rate_limits(monitor: Monitor) -> list[dict[str, str]]:
    """The cluster-wide rate limits stored by remote control, for the registered tasks."""
    broker = monitor.app.broker
    found = ((name, broker.get(RATE_LIMIT_KEY + name)) for name in registered(monitor))
    return [{"task": name, "rate": rate.decode(errors="replace")}
            for name, rate in islice(found, LIMITS_SHOWN) if rate is not None]  # fmt: skip


# -- tasks -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskQuery:
    """A filter of the task list: each set field must match; ``search`` is a substring."""

    state: str = ""
    name: str = ""
    worker: str = ""
    queue: str = ""
    search: str = ""
    page: int = 1

    @property
    def empty(self) -> bool:
        return not (self.state or self.name or self.worker or self.queue or self.search)

    def matches(self, task: TaskInfo) -> bool:
        if self.state and task.state != self.state:
            return False
        if self.name and task.name != self.name:
            return False
        if self.worker and task.worker != self.worker:
            return False
        if self.queue and task.queue != self.queue:
            return False
        if self.search:
            needle = self.search.lower()
            text = f"{task.uuid} {task.name} {task.args} {task.kwargs} {task.result}"
            return needle in text.lower()
        return True


def task_page(monitor: Monitor, query: TaskQuery) -> dict[str, Any]:
    """One page of the tasks that match ``query``, the most recently seen first."""
    start = (query.page - 1) * PER_PAGE
    with monitor.lock:
        tasks = monitor.state.tasks
        if query.empty:
            total = len(tasks)
            found = list(islice(reversed(tasks.values()), start, start + PER_PAGE))
        else:
            total, found = 0, []
            for task in reversed(tasks.values()):
                if query.matches(task):
                    if start <= total < start + PER_PAGE:
                        found.append(task)
                    total += 1
        rows = [_row(monitor, task) for task in found]
        facets = {key: sorted(values) for key, values in monitor.facets.items()}
    pages = max(1, -(-total // PER_PAGE))
    return {"rows": rows, "total": total, "page": query.page, "pages": pages, "facets": facets}


def _counts_dead(monitor: Monitor) -> bool:
    return callable(getattr(monitor.app.broker, "dead_letter_count", None))


def _row(monitor: Monitor, task: TaskInfo) -> dict[str, Any]:
    """A task as the list shows it (arguments masked)."""
    names = parameter_names(monitor.app.tasks.get(task.name or ""))
    finished = task.succeeded or task.failed or task.revoked or task.rejected
    return {
        "uuid": task.uuid, "name": task.name, "state": task.state, "worker": task.worker,
        "queue": task.queue, "args": mask_repr(task.args, names),
        "kwargs": mask_repr(task.kwargs), "received": task.received or task.sent,
        "started": task.started, "finished": finished, "runtime": task.runtime,
        "retries": task.retries, "progress": progress(task.meta, task.state),
    }  # fmt: skip


def progress(meta: Any, state: str) -> float | None:
    """A fraction 0..1 from progress meta (current/total, done/total, percent or progress)."""
    if state == states.SUCCESS and isinstance(meta, dict):
        return 1.0
    if not isinstance(meta, dict):
        return None
    try:
        total = meta.get("total")
        for key in ("current", "done", "completed"):
            if key in meta and total:
                return max(0.0, min(1.0, float(meta[key]) / float(total)))
        if "percent" in meta:
            return max(0.0, min(1.0, float(meta["percent"]) / 100.0))
        if "progress" in meta:
            value = float(meta["progress"])
            return max(0.0, min(1.0, value / 100.0 if value > 1 else value))
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return None


def task_detail(monitor: Monitor, task_id: str) -> dict[str, Any] | None:
    """Everything about one task: events, the result store's record, its workflow tree."""
    with monitor.lock:
        seen = monitor.state.tasks.get(task_id)
        task = seen if seen is not None else TaskInfo(task_id)
        info = {**task.as_dict(), **_row(monitor, task)}
        info["meta"] = mask_value(task.meta)
        info["result"] = mask_repr(task.result)
        info["timeline"] = _timeline(monitor, task)
        info["tree"] = _tree(monitor, task.root_id or task.uuid) if seen else None
        info["children"] = sorted(monitor.children.get(task_id, ()))
    stored = _stored(monitor, task_id)
    if seen is None:
        if stored is None:
            return None
        info["state"] = stored["state"]
    info["stored"] = stored
    info["revoke_requested"] = monitor.app.control.is_revoked(task_id)
    return info


def _timeline(monitor: Monitor, task: TaskInfo) -> list[dict[str, Any]]:
    kept = monitor.timelines.get(task.uuid)
    if kept:
        entries = [(kind, stamp, host) for kind, stamp, host in kept]
    else:
        stamps = ("sent", "received", "started", "retried", "succeeded", "failed", "rejected",
                  "revoked")  # fmt: skip
        entries = [(s, getattr(task, s), "") for s in stamps if getattr(task, s)]
    entries.sort(key=lambda entry: entry[1])
    first = entries[0][1] if entries else 0.0
    return [{"event": kind, "at": stamp, "offset": stamp - first, "host": host}
            for kind, stamp, host in entries]  # fmt: skip


def _tree(monitor: Monitor, root_id: str) -> dict[str, Any]:
    """The workflow under ``root_id`` as nested dicts (at most ``TREE_NODES`` nodes)."""
    tasks, budget = monitor.state.tasks, [TREE_NODES]

    def node(task_id: str, depth: int) -> dict[str, Any]:
        budget[0] -= 1
        task = tasks.get(task_id)
        kids = sorted(monitor.children.get(task_id, ()))
        children = [node(kid, depth + 1) for kid in kids if budget[0] > 0 and depth < 20]
        return {"uuid": task_id, "name": task.name if task else None,
                "state": task.state if task else "?", "children": children}  # fmt: skip

    return node(root_id, 0)


def _stored(monitor: Monitor, task_id: str) -> dict[str, Any] | None:
    """The result store's record of a task (state, result, traceback), masked."""
    try:
        meta = monitor.app.results.get_meta(task_id)
    except Exception as exc:
        return {"state": "?", "error": f"{type(exc).__name__}: {exc}"}
    if not meta or (meta.get("status", states.PENDING) == states.PENDING and not meta.get("name")):
        return None
    result = meta.get("result")
    if meta.get("status") in states.EXCEPTION_STATES and isinstance(result, dict):
        text = f"{result.get('exc_type')}: {result.get('exc_message')}"
    else:
        text = repr(mask_value(result))
    return {
        "state": meta.get("status"), "result": text,
        "traceback": meta.get("traceback"), "date_done": str(meta.get("date_done") or ""),
        "args": repr(mask_value(meta["args"])) if meta.get("args") is not None else None,
        "kwargs": repr(mask_value(meta["kwargs"])) if meta.get("kwargs") is not None else None,
    }  # fmt: skip


# -- queues and dead letters ------------------------------------------------------------------


def queues(monitor: Monitor) -> list[dict[str, Any]]:
    """Each known queue's depth and the workers that take from it."""
    with monitor.lock:
        depths = dict(monitor.samples.depths)
        consumers: dict[str, list[str]] = {}
        for host, details in monitor.samples.details.items():
            for queue in details.get("queues") or []:
                consumers.setdefault(str(queue.get("name")), []).append(host)
    return [{"name": name, "depth": depth, "workers": sorted(consumers.get(name, []))}
            for name, depth in sorted(depths.items())]  # fmt: skip


def dead_letters(monitor: Monitor, limit: int = 100) -> list[dict[str, Any]]:
    """The most recent dead letters with their reasons, history and task (masked)."""
    return [describe(monitor, letter) for letter in monitor.app.broker.dead_letters(limit=limit)]


def describe(monitor: Monitor, letter: DeadLetter) -> dict[str, Any]:
    """A dead letter as a dict, with the task it carries when its body can be read."""
    task: dict[str, Any] = {"task": None, "task_id": None, "args": None, "kwargs": None,
                            "body_error": None}  # fmt: skip
    try:
        message = decode(letter.body, monitor.app.conf.accept_content)
    except MessageError as exc:
        task["body_error"] = f"{exc.reason}: {exc.detail}"
    else:
        names = parameter_names(monitor.app.tasks.get(message.task))
        task.update(task=message.task, task_id=message.id, kwargs=mask_repr(message.kwargsrepr),
                    args=mask_repr(message.argsrepr, names))  # fmt: skip
    return {"id": letter.message_id, "queue": letter.queue, "reason": letter.reason,
            "deliveries": letter.deliveries, "dead_at": letter.dead_at,
            "history": letter.history, **task}  # fmt: skip
