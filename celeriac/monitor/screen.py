"""``celeriac events``: raw events as JSON lines, or a view of workers and tasks redrawn in
place, until --limit events, --timeout seconds, or Ctrl-C."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from typing import TYPE_CHECKING, Any

from celeriac.events import EventReceiver
from celeriac.monitor.state import State
from celeriac.monitor.text import ago, clock, short, table

if TYPE_CHECKING:
    from celeriac.app import Celeriac


def cmd_events(app: Celeriac, args: argparse.Namespace) -> int:
    """Print raw events (--dump), or a view of workers and tasks redrawn in place."""
    receiver = EventReceiver(app, history=not args.no_history)
    state = State()
    live = sys.stdout.isatty() and not args.dump
    drawn = 0.0
    try:
        for event in _events(receiver, args):
            if args.dump:
                if event:
                    print(json.dumps(event, sort_keys=True, default=str), flush=True)
                continue
            if event:
                state.event(event)
            if live and time.monotonic() - drawn >= args.refresh:
                sys.stdout.write("\x1b[H\x1b[J" + render(state) + "\n")
                sys.stdout.flush()
                drawn = time.monotonic()
    except KeyboardInterrupt:
        pass
    finally:
        receiver.close()
    if not args.dump:
        print(("\x1b[H\x1b[J" if live else "") + render(state))
    return 0


def _events(receiver: EventReceiver, args: argparse.Namespace) -> Any:
    """Events until --limit or --timeout; an empty dict now and then, so the view redraws."""
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    count = 0
    while args.limit is None or count < args.limit:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return
        events = receiver.get(min(args.refresh, left) if left is not None else args.refresh)
        for event in events[: None if args.limit is None else args.limit - count]:
            count += 1
            yield event
        yield {}


def render(state: State, height: int | None = None) -> str:
    """The view: workers, then the most recent tasks, fitted to the terminal."""
    now = time.time()
    height = height or shutil.get_terminal_size((120, 40)).lines
    counts = ", ".join(f"{k} {v}" for k, v in sorted(state.task_counts().items())) or "none"
    alive = len(state.alive_workers(now))
    lines = [f"celeriac events: {alive} worker(s) online, {state.event_count} event(s); "
             f"tasks: {counts}. Ctrl-C to quit.", ""]  # fmt: skip
    workers = [
        (w.hostname, w.status(now), w.active, w.processed,
         " ".join(f"{x:.2f}" for x in w.loadavg) or "-",
         ago(w.last_heartbeat, now) if w.last_heartbeat else "-")
        for w in state.workers.values()
    ]  # fmt: skip
    if workers:
        headers = ("WORKER", "STATUS", "ACTIVE", "PROCESSED", "LOAD", "LAST HEARTBEAT")
        lines += [table(headers, workers), ""]
    else:
        lines += ["No workers seen (a worker sends a heartbeat every 2 s).", ""]
    room = max(3, height - len(lines) - 3)
    tasks = [
        (t.uuid, short(t.name or "?", 30), t.state, t.worker or "-", clock(t.received),
         f"{t.runtime:.4f}s" if t.runtime is not None else "-")
        for t in state.tasks_by_time(room)
    ]  # fmt: skip
    if tasks:
        lines.append(table(("TASK ID", "NAME", "STATE", "WORKER", "RECEIVED", "RUNTIME"), tasks))
    else:
        lines.append("No task events (start workers with -E to send them).")
    return "\n".join(lines)
