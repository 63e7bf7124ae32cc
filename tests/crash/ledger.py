"""A ledger of task runs, kept outside the system under test.

The crash tests' tasks write it; the tests read it back and hold it against what they enqueued
and the faults they caused. Every process that runs tasks appends to a file of its own,
``<process group>-<pid>.ledger``, one line per event, each line one ``write`` to a file opened
with ``O_APPEND``, so a SIGKILL can cut a run short but never garble or lose a line written::

    <kind> <task id> <pid> <delivery count> <time>

``start`` and ``finish`` bracket a task's body; ``spawn`` (task id ``-``) says a pool process
came to life. Times are ``time.time()``, comparable with the times the test takes.

The worker side needs only ``record``, and this module only the standard library, because the
tests copy it next to the task module that the workers import.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

#: Seconds between a task's ``finish`` line and its acknowledgement: a process killed within
#: this window may not have acknowledged the task yet, so the task was still in flight. The
#: kill storm sees a few milliseconds; the rest is room for a loaded machine.
ACK_WINDOW = 0.5

_files: dict[tuple[int, str], int] = {}


def record(directory: str, kind: str, task_id: str, deliveries: int) -> None:
    """Append one event to this process's ledger file (opened once per process)."""
    pid = os.getpid()
    fd = _files.get((pid, directory))
    if fd is None:
        path = os.path.join(directory, f"{os.getpgid(0)}-{pid}.ledger")
        fd = _files[(pid, directory)] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.write(fd, f"{kind} {task_id} {pid} {deliveries} {time.time():.6f}\n".encode())


@dataclass(frozen=True, slots=True)
class Event:
    """One line of the ledger, and the process group of the file it came from."""

    kind: str
    task_id: str
    pid: int
    pgid: int
    deliveries: int
    at: float


@dataclass(frozen=True, slots=True)
class Run:
    """One execution of a task: its start, and its finish unless the process died first."""

    task_id: str
    pid: int
    pgid: int
    deliveries: int
    started: float
    finished: float | None


@dataclass(frozen=True, slots=True)
class Fault:
    """Something the test did to a worker's process group: ``kill`` or ``freeze``, at a time."""

    pgid: int
    at: float
    kind: str = "kill"

    def interrupted(self, run: Run) -> bool:
        """Whether ``run`` was in flight (started, not yet acknowledged) when this happened."""
        if run.pgid != self.pgid or run.started >= self.at:
            return False
        return run.finished is None or run.finished > self.at - ACK_WINDOW


class Ledger:
    """Every event of every ledger file in a directory, grouped into runs per task id."""

    def __init__(self, events: Iterable[Event]) -> None:
        self.events = sorted(events, key=lambda e: e.at)
        self.runs: dict[str, list[Run]] = _pair(self.events)

    @classmethod
    def read(cls, directory: Path) -> Ledger:
        """Parse every ``*.ledger`` file in ``directory``; a malformed line is an error."""
        events: list[Event] = []
        for path in sorted(directory.glob("*.ledger")):
            pgid = int(path.stem.split("-")[0])
            for line in path.read_text().splitlines():
                kind, task_id, pid, deliveries, at = line.split(" ")
                events.append(Event(kind, task_id, int(pid), pgid, int(deliveries), float(at)))
        return cls(events)

    def finished(self) -> set[str]:
        """Task ids with at least one finished run."""
        return {tid for tid, runs in self.runs.items() if any(r.finished for r in runs)}

    def lost(self, enqueued: Iterable[str], dead: Iterable[str] = ()) -> set[str]:
        """Enqueued - finished - dead-lettered: what must be empty."""
        return set(enqueued) - self.finished() - set(dead)

    def duplicates(self) -> dict[str, list[Run]]:
        """Task ids started more than once, with their runs."""
        return {tid: runs for tid, runs in self.runs.items() if len(runs) > 1}

    def unexplained(self, faults: Iterable[Fault]) -> dict[str, list[Run]]:
        """Duplicates not explained by faults: every run but one must have been interrupted."""
        faults = list(faults)
        return {
            tid: runs
            for tid, runs in self.duplicates().items()
            if len(runs) - 1 > sum(any(f.interrupted(r) for f in faults) for r in runs)
        }

    def interrupted(self, faults: Iterable[Fault]) -> list[tuple[Run, Fault]]:
        """The runs in flight at a fault, each with the fault that hit it."""
        faults = list(faults)
        return [
            (run, fault)
            for runs in self.runs.values()
            for run in runs
            for fault in faults
            if fault.interrupted(run)
        ]

    def rerun_after(self, run: Run, fault: Fault) -> Run | None:
        """The first run of the same task started after ``fault``, outside its process group."""
        later = [r for r in self.runs[run.task_id] if r.started > fault.at and r.pgid != fault.pgid]
        return min(later, key=lambda r: r.started, default=None)

    def delivery_counts(self) -> set[int]:
        """Every delivery count seen at a start."""
        return {run.deliveries for runs in self.runs.values() for run in runs}

    def spawns(self, pgid: int) -> list[float]:
        """When the pool processes of one worker came to life."""
        return [e.at for e in self.events if e.kind == "spawn" and e.pgid == pgid]


def _pair(events: list[Event]) -> dict[str, list[Run]]:
    """Match each ``finish`` with the open ``start`` of the same task in the same process."""
    runs: dict[str, list[Run]] = defaultdict(list)
    open_runs: dict[tuple[str, int], Event] = {}
    for event in events:
        key = (event.task_id, event.pid)
        if event.kind == "start":
            if key in open_runs:  # the same process started it again without finishing
                runs[event.task_id].append(_run(open_runs.pop(key), None))
            open_runs[key] = event
        elif event.kind == "finish":
            start = open_runs.pop(key, None)
            if start is None:
                raise ValueError(f"finish without start in the ledger: {event}")
            runs[event.task_id].append(_run(start, event.at))
    for start in open_runs.values():
        runs[start.task_id].append(_run(start, None))
    for task_runs in runs.values():
        task_runs.sort(key=lambda r: r.started)
    return dict(runs)


def _run(start: Event, finished: float | None) -> Run:
    return Run(start.task_id, start.pid, start.pgid, start.deliveries, start.at, finished)
