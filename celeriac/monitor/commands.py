"""The monitoring and control commands: ``inspect``, ``control``, ``status``, ``events``,
``queues`` and ``dlq``.

Human-readable tables by default, ``--json`` for programs. Exit codes: 0 when every asked
worker answered, 1 when none did (or one refused), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celeriac.cli import UsageError
from celeriac.cli import positive_int as count_type
from celeriac.control import DEFAULT_TIMEOUT, Replies, signal_number
from celeriac.errors import LimitError
from celeriac.limits import parse_rate
from celeriac.monitor.queues import cmd_dlq, cmd_queues
from celeriac.monitor.screen import cmd_events
from celeriac.monitor.text import ago, flat, indent, short, table

if TYPE_CHECKING:
    from celeriac.app import Celeriac

MakeCommand = Callable[..., argparse.ArgumentParser]

INSPECT_METHODS = (
    "ping", "active", "reserved", "scheduled", "registered", "stats", "revoked",
    "active_queues", "conf",
)  # fmt: skip


# -- option types ------------------------------------------------------------------------


def timeout_type(text: str) -> float:
    """A positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value


def destination_type(text: str) -> list[str]:
    """Worker names separated by commas."""
    names = [name.strip() for name in text.split(",")]
    if not text.strip() or not all(names):
        raise argparse.ArgumentTypeError(
            f"expected worker names separated by commas (w1@host,w2@host), got {text!r}"
        )
    return names


def signal_type(text: str) -> str:
    """A signal name such as SIGKILL."""
    try:
        signal_number(text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def rate_type(text: str) -> str:
    """A rate limit ('10/s', '100/m', '1000/h', tasks per second), or 'default'."""
    if text != "default":
        try:
            parse_rate(text)
        except LimitError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _target_options(parser: argparse.ArgumentParser, timeout: float = DEFAULT_TIMEOUT) -> None:
    parser.add_argument("-d", "--destination", type=destination_type,
                        help="only these workers (names separated by commas)")  # fmt: skip
    parser.add_argument("-t", "--timeout", type=timeout_type, default=timeout,
                        help=f"seconds to wait for replies (default {timeout})")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON")


# -- the parsers -------------------------------------------------------------------------


def add_commands(commands: Any, make: MakeCommand) -> None:
    """Add the monitoring and control commands to the ``celeriac`` parser."""
    inspect = make(commands, "inspect", cmd_inspect, "ask workers what they do")
    inspect.add_argument("method", choices=INSPECT_METHODS)
    _target_options(inspect)
    _control_parser(make(commands, "control", cmd_control, "tell workers what to do"))
    status = make(commands, "status", cmd_status, "list the workers online")
    _target_options(status)
    events = make(commands, "events", cmd_events, "watch workers and tasks live")
    events.add_argument("--dump", action="store_true", help="print raw events as JSON lines")
    events.add_argument("--limit", type=count_type, help="stop after this many events")
    events.add_argument("--timeout", type=timeout_type, help="stop after this many seconds")
    events.add_argument("--refresh", type=timeout_type, default=1.0, help="seconds per redraw")
    events.add_argument("--no-history", action="store_true", help="only events from now on")
    queues = make(commands, "queues", cmd_queues, "show how many messages each queue holds")
    queues.add_argument("-t", "--timeout", type=timeout_type, default=DEFAULT_TIMEOUT,
                        help="seconds to wait for workers to name their queues")  # fmt: skip
    queues.add_argument("--json", action="store_true", help="print JSON")
    _dlq_parser(make(commands, "dlq", cmd_dlq, "list, show, redrive or purge dead letters"))


def _control_parser(control: argparse.ArgumentParser) -> None:
    actions = control.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        """A control action with the options every action takes."""
        sub: argparse.ArgumentParser = actions.add_parser(name, help=help_text)
        _target_options(sub)
        return sub

    action("shutdown", "stop workers gracefully")
    for name, verb in (("pool_grow", "add"), ("pool_shrink", "remove idle")):
        action(name, f"{verb} pool processes").add_argument("n", nargs="?", type=count_type,
                                                            default=1)  # fmt: skip
    for name in ("add_consumer", "cancel_consumer"):
        action(name, f"{name.split('_')[0]} a queue").add_argument("queue")
    revoke = action("revoke", "do not run these tasks")
    revoke.add_argument("task_ids", nargs="+", metavar="TASK_ID")
    revoke.add_argument("--terminate", action="store_true", help="stop them if they run")
    revoke.add_argument("-s", "--signal", type=signal_type, default="SIGKILL")
    terminate = action("terminate", "revoke these tasks and stop them where they run")
    terminate.add_argument("task_ids", nargs="+", metavar="TASK_ID")
    terminate.add_argument("-s", "--signal", type=signal_type, default="SIGKILL")
    limits = action("time_limit", "set a task's time limits (a limit left out: the app's)")
    limits.add_argument("task_name", metavar="TASK")
    limits.add_argument("--soft", type=timeout_type, help="seconds: SoftTimeLimitExceeded")
    limits.add_argument("--hard", type=timeout_type, help="seconds: the task is stopped")
    rate = action("rate_limit", "change a task's rate limit (for every worker without -d)")
    rate.add_argument("task_name", metavar="TASK")
    rate.add_argument("rate", metavar="RATE", type=rate_type,
                      help="'10/s', '100/m', '1000/h' or tasks per second; 0: no limit; "
                           "'default': back to the task's own")  # fmt: skip
    custom = action("broadcast", "send any command by name")
    custom.add_argument("name")
    custom.add_argument("-a", "--arguments", help="the command's arguments, a JSON object")


def _dlq_parser(dlq: argparse.ArgumentParser) -> None:
    actions = dlq.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    listing = actions.add_parser("list", help="the most recent dead letters")
    listing.add_argument("--limit", type=count_type, default=50)
    listing.add_argument("--json", action="store_true")
    show = actions.add_parser("show", help="one dead letter, with its history")
    show.add_argument("id", help="the message id or the task id")
    show.add_argument("--json", action="store_true")
    redrive = actions.add_parser("redrive", help="put dead letters back on their queues")
    redrive.add_argument("id", nargs="?", help="the message id or the task id")
    redrive.add_argument("--all", action="store_true", help="every dead letter")
    purge = actions.add_parser("purge", help="delete every dead letter")
    purge.add_argument("-f", "--force", action="store_true", help="do not ask")


# -- inspect, control, status ------------------------------------------------------------


def cmd_inspect(app: Celeriac, args: argparse.Namespace) -> int:
    """Ask workers one question and print their answers."""
    arguments = {"with_defaults": False} if args.method == "conf" else {}
    replies = app.control.broadcast(
        args.method, arguments, args.destination, reply=True, timeout=args.timeout
    )
    return _print_replies(replies or [], args, INSPECT_FORMATS.get(args.method, _format_any))


def cmd_control(app: Celeriac, args: argparse.Namespace) -> int:
    """Send a command to workers and print their answers."""
    control = app.control
    target = {"destination": args.destination, "reply": True, "timeout": args.timeout}
    if args.action in ("revoke", "terminate"):
        terminate = args.action == "terminate" or args.terminate
        replies = control.revoke(args.task_ids, terminate=terminate, signal=args.signal, **target)
        if not replies and not args.json:
            ids = ", ".join(args.task_ids)
            print(f"Revoked {ids}: stored in the broker, so workers that receive these tasks "
                  "later refuse them too. No worker replied in time.")  # fmt: skip
            return 0
        return _print_replies(replies or [], args, _format_ok)
    if args.action == "rate_limit":
        return _rate_limit(app, args, target)
    if args.action == "broadcast":
        name, arguments = args.name, _json_object(args.arguments, "--arguments")
    else:
        name, arguments = args.action, _control_arguments(args)
    replies = control.broadcast(name, arguments, **target)
    fmt = _format_any if args.action == "broadcast" else _format_ok
    return _print_replies(replies or [], args, fmt)


def _rate_limit(app: Celeriac, args: argparse.Namespace, target: dict[str, Any]) -> int:
    """``control rate_limit TASK RATE``: stored in the broker unless workers are named."""
    rate = None if args.rate == "default" else args.rate
    replies = app.control.rate_limit(args.task_name, rate, **target)
    if not replies and not args.json and args.destination is None:
        print(f"Rate limit of {args.task_name} stored in the broker: every worker honours it, "
              "those started later too. No worker replied in time.")  # fmt: skip
        return 0
    return _print_replies(replies or [], args, _format_ok)


def _control_arguments(args: argparse.Namespace) -> dict[str, Any]:
    if args.action in ("pool_grow", "pool_shrink"):
        return {"n": args.n}
    if args.action in ("add_consumer", "cancel_consumer"):
        return {"queue": args.queue}
    if args.action == "time_limit":
        if args.soft is not None and args.hard is not None and args.soft > args.hard:
            raise UsageError(f"--soft ({args.soft:g}) is longer than --hard ({args.hard:g})")
        return {"task_name": args.task_name, "soft": args.soft, "hard": args.hard}
    return {}


def _json_object(text: str | None, flag: str) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{flag} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{flag} must be a JSON object, such as '{{\"n\": 2}}'")
    return value


def cmd_status(app: Celeriac, args: argparse.Namespace) -> int:
    """List the workers that answer a ping."""
    replies = app.control.ping(args.destination, timeout=args.timeout)
    answers = {name: value for reply in replies for name, value in reply.items()}
    refused = {n: v["error"] for n, v in answers.items() if isinstance(v, dict) and "error" in v}
    names = sorted(name for name in answers if name not in refused)
    if args.json:
        print(json.dumps(names))
    for name in [] if args.json else names:
        print(f"{name}: OK")
    for name, error in sorted(refused.items()):  # e.g. a ping refused for its signature
        print(f"Error: {name}: {error}", file=sys.stderr)
    if refused:
        return 1
    if not names:
        return _no_reply(args)
    if not args.json:
        print(f"\n{len(names)} node{'s' if len(names) != 1 else ''} online.")
    return _missing(args, names)


def _print_replies(replies: Replies, args: argparse.Namespace, fmt: Formatter) -> int:
    """Print each worker's answer; the exit code says whether all answered without error."""
    merged: dict[str, Any] = {}
    for reply in replies:
        merged.update(reply)
    if args.json:
        print(json.dumps(merged, indent=2, sort_keys=True, default=str))
    else:
        for name in sorted(merged):
            print(fmt(name, merged[name]))
    if not merged:
        return _no_reply(args)
    failed = [n for n, value in merged.items() if isinstance(value, dict) and "error" in value]
    return 1 if failed else _missing(args, list(merged))


def _no_reply(args: argparse.Namespace) -> int:
    wanted = f" ({', '.join(args.destination)})" if args.destination else ""
    print(f"Error: no worker{wanted} replied within {args.timeout:g} s", file=sys.stderr)
    return 1


def _missing(args: argparse.Namespace, answered: list[str]) -> int:
    missing = [name for name in args.destination or [] if name not in answered]
    if missing:
        print(f"Error: no reply from {', '.join(missing)} within {args.timeout:g} s",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


# -- how answers read ----------------------------------------------------------------------

Formatter = Callable[[str, Any], str]


def _error(name: str, value: Any) -> str | None:
    if isinstance(value, dict) and "error" in value:
        return f"{name}: ERROR {value['error']}"
    return None


def _format_ok(name: str, value: Any) -> str:
    if (error := _error(name, value)) is not None:
        return error
    text = value.get("ok", value) if isinstance(value, dict) else value
    return f"{name}: OK {text}"


def _format_any(name: str, value: Any) -> str:
    if (error := _error(name, value)) is not None:
        return error
    body = json.dumps(value, indent=2, sort_keys=True, default=str)
    return f"{name}:\n" + "\n".join("  " + line for line in body.splitlines())


def _format_tasks(name: str, value: Any) -> str:
    if (error := _error(name, value)) is not None or not isinstance(value, list):
        return error or _format_any(name, value)
    if not value:
        return f"{name}: none"
    now = time.time()
    rows = [
        (t.get("id", ""), t.get("name", ""), short(f"{t.get('args')} {t.get('kwargs')}", 40),
         ago(t["time_start"], now) if t.get("time_start") else "waiting")
        for t in value
    ]  # fmt: skip
    return f"{name}: {len(value)}\n" + indent(table(("ID", "NAME", "ARGS", "STARTED"), rows))


def _format_names(name: str, value: Any) -> str:
    if (error := _error(name, value)) is not None or not isinstance(value, list):
        return error or _format_any(name, value)
    if not value:
        return f"{name}: none"
    shown = [item.get("name", item) if isinstance(item, dict) else item for item in value]
    return f"{name}: {len(shown)}\n" + "\n".join(f"  . {item}" for item in shown)


def _format_mapping(name: str, value: Any) -> str:
    if (error := _error(name, value)) is not None or not isinstance(value, dict):
        return error or _format_any(name, value)
    lines = [f"  {key}: {flat(item)}" for key, item in sorted(value.items())]
    return f"{name}:\n" + "\n".join(lines or ["  (nothing changed from the defaults)"])


INSPECT_FORMATS: dict[str, Formatter] = {
    "ping": _format_ok, "active": _format_tasks, "reserved": _format_tasks,
    "scheduled": _format_tasks, "registered": _format_names, "revoked": _format_names,
    "active_queues": _format_names, "stats": _format_mapping, "conf": _format_mapping,
}  # fmt: skip
