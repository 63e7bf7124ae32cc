"""``celeriac queues`` (how many messages each queue holds) and ``celeriac dlq`` (list, show,
redrive and purge dead letters)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from celeriac.cli import UsageError
from celeriac.errors import MessageError
from celeriac.message import decode
from celeriac.monitor.text import clock, flat, table

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.transports.base import DeadLetter

#: Dead letters counted before the count is shown as "at least".
DLQ_COUNT_LIMIT = 10_000


def cmd_queues(app: Celeriac, args: argparse.Namespace) -> int:
    """The depth of every known queue, and of the dead-letter queue."""
    consumers = _queue_consumers(app, args.timeout)
    names = sorted({app.conf.task_default_queue, *_routed_queues(app.conf.task_routes),
                    *consumers})  # fmt: skip
    sizes = {name: app.broker.size(name) for name in names}
    dead = app.broker.dead_letter_count()
    if args.json:
        listing = {n: {"messages": sizes[n], "workers": consumers.get(n, [])} for n in names}
        print(json.dumps({"queues": listing, "dead_letters": dead}, indent=2, sort_keys=True))
        return 0
    rows: list[tuple[str, Any, str]] = [
        (n, sizes[n], ", ".join(consumers.get(n, [])) or "-") for n in names
    ]
    rows.append(("(dead letters)", dead, "-"))
    print(table(("QUEUE", "MESSAGES", "WORKERS"), rows))
    return 0


def _queue_consumers(app: Celeriac, timeout: float) -> dict[str, list[str]]:
    """Queue name -> the workers that said they take from it."""
    answers = app.control.inspect(timeout=timeout).active_queues() or {}
    consumers: dict[str, list[str]] = {}
    for worker, queues in answers.items():
        for queue in queues if isinstance(queues, list) else []:
            if isinstance(queue, dict) and isinstance(queue.get("name"), str):
                consumers.setdefault(queue["name"], []).append(worker)
    return consumers


def _routed_queues(routes: Any) -> set[str]:
    """The queue names written in ``task_routes`` dicts (a router function names none ahead)."""
    found: set[str] = set()
    for route in routes if isinstance(routes, list | tuple) else [routes]:
        if isinstance(route, dict):
            for target in route.values():
                queue = target.get("queue") if isinstance(target, dict) else target
                if isinstance(queue, str):
                    found.add(queue)
    return found


def cmd_dlq(app: Celeriac, args: argparse.Namespace) -> int:
    """List, show, redrive or purge dead letters."""
    if args.action == "list":
        return _dlq_list(app, args)
    if args.action == "show":
        return _dlq_show(app, args)
    if args.action == "redrive":
        return _dlq_redrive(app, args)
    return _dlq_purge(app, args)


def _describe(app: Celeriac, letter: DeadLetter) -> dict[str, Any]:
    """A dead letter as a dict, with the task it carries when the body can be read."""
    try:
        message = decode(letter.body, app.conf.accept_content)
        task: dict[str, Any] = {"task": message.task, "task_id": message.id,
                                "args": message.argsrepr, "kwargs": message.kwargsrepr}  # fmt: skip
    except MessageError as exc:
        task = {"task": None, "task_id": None, "body_error": f"{exc.reason}: {exc.detail}"}
    return {
        "id": letter.message_id, "queue": letter.queue, "reason": letter.reason,
        "deliveries": letter.deliveries, "dead_at": letter.dead_at, **task,
        "history": letter.history, "body_bytes": len(letter.body),
    }  # fmt: skip


def _dlq_list(app: Celeriac, args: argparse.Namespace) -> int:
    letters = [_describe(app, letter) for letter in app.broker.dead_letters(limit=args.limit)]
    if args.json:
        print(json.dumps(letters, indent=2, default=str))
        return 0
    if not letters:
        print("The dead-letter queue is empty.")
        return 0
    rows = [(d["id"], d["queue"], d["task"] or "?", d["task_id"] or "?", d["reason"],
             d["deliveries"], clock(d["dead_at"])) for d in letters]  # fmt: skip
    print(table(("ID", "QUEUE", "TASK", "TASK ID", "REASON", "DELIVERIES", "DEAD AT"), rows))
    return 0


def _find(app: Celeriac, wanted: str) -> DeadLetter:
    for letter in app.broker.dead_letters(limit=DLQ_COUNT_LIMIT):
        if letter.message_id == wanted:
            return letter
        if wanted in letter.body.decode("utf-8", "replace"):
            described = _describe(app, letter)
            if described["task_id"] == wanted:
                return letter
    raise _NotFound(f"no dead letter with id {wanted!r} (see: celeriac dlq list)")


class _NotFound(Exception):
    pass


def _dlq_show(app: Celeriac, args: argparse.Namespace) -> int:
    try:
        letter = _describe(app, _find(app, args.id))
    except _NotFound as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(letter, indent=2, default=str))
        return 0
    history = letter.pop("history")
    for key, value in letter.items():
        print(f"{key}: {clock(value) if key == 'dead_at' else value}")
    print("history:")
    for entry in history:
        detail = f": {flat(entry['detail'])}" if entry.get("detail") else ""
        print(f"  {clock(entry.get('at'))} {entry.get('event')} ({entry.get('reason')}), "
              f"delivery {entry.get('deliveries')}{detail}")  # fmt: skip
    return 0


def _dlq_redrive(app: Celeriac, args: argparse.Namespace) -> int:
    if bool(args.id) == bool(args.all):
        raise UsageError("dlq redrive takes a dead letter's id, or --all")
    if args.all:
        letters = app.broker.dead_letters(limit=DLQ_COUNT_LIMIT)
    else:
        try:
            letters = [_find(app, args.id)]
        except _NotFound as exc:
            print(f"Error: {exc}", file=sys.stderr)
            return 1
    moved = [letter for letter in letters if app.broker.redrive(letter.message_id)]
    for letter in moved:
        print(f"Redrove {letter.message_id} to queue {letter.queue}.")
    if not args.all and not moved:
        print(f"Error: {args.id} is no longer in the dead-letter queue", file=sys.stderr)
        return 1
    if args.all:
        print(f"{len(moved)} dead letter(s) put back on their queues.")
    return 0


def _dlq_purge(app: Celeriac, args: argparse.Namespace) -> int:
    if not args.force:
        if not sys.stdin.isatty():
            raise UsageError("dlq purge asks for confirmation; pass -f/--force to skip it")
        if input("Delete every dead letter? [y/N] ").strip().lower() not in ("y", "yes"):
            print("Nothing purged.")
            return 1
    print(f"Purged {app.broker.purge_dead_letters()} dead letter(s).")
    return 0
