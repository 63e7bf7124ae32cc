"""The ``celeriac`` command: ``celeriac -A proj worker|beat|call|result|purge``, and the
monitoring and control commands (``inspect|control|status|events|queues|dlq``, in
``celeriac.monitor.commands``).

Usage errors (a bad option, an app that cannot be found) print one clear line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from celeriac import __version__
from celeriac.app import Celeriac
from celeriac.errors import CeleriacError, ScheduleError

if TYPE_CHECKING:
    from celeriac.scheduler import Scheduler

EXIT_USAGE = 2


class UsageError(Exception):
    """A command-line mistake: printed as one line, exit code 2."""


# -- finding the app ---------------------------------------------------------------------


def find_app(spec: str) -> Celeriac:
    """Load the app named by ``-A``: ``module:attribute``, ``proj``, or ``proj.celeriac``."""
    if not spec or spec.startswith(".") or ".." in spec:
        raise UsageError(f"-A/--app needs a module path such as 'proj', not {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    module_name, _, attribute = spec.partition(":")
    module = _import(module_name)
    if attribute:
        found = getattr(module, attribute, None)
        if not isinstance(found, Celeriac):
            raise UsageError(f"{spec!r}: {module_name} has no Celeriac app named {attribute!r}")
        return found
    app = _app_in(module)
    if app is None and not module_name.endswith(".celeriac"):
        submodule = _import(f"{module_name}.celeriac", optional=True)
        app = _app_in(submodule) if submodule is not None else None
    if app is None:
        raise UsageError(
            f"no Celeriac app found in module {module_name!r}: define `app = Celeriac(...)` "
            f"in {module_name} or {module_name}.celeriac, or pass -A module:attribute"
        )
    return app


def _import(name: str, optional: bool = False) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            if optional:
                return None
            raise UsageError(
                f"Unable to load celeriac application: the module {name!r} was not found "
                f"(searched from {os.getcwd()})"
            ) from None
        raise UsageError(f"Unable to load celeriac application {name!r}: {exc}") from None
    except Exception as exc:
        raise UsageError(
            f"Unable to load celeriac application {name!r}: {type(exc).__name__}: {exc}"
        ) from None


def _app_in(module: Any) -> Celeriac | None:
    for attribute in ("app", "celeriac", "celeriac_app"):
        candidate = getattr(module, attribute, None)
        if isinstance(candidate, Celeriac):
            return candidate
    found = [value for value in vars(module).values() if isinstance(value, Celeriac)]
    return found[0] if len(set(map(id, found))) == 1 else None


# -- commands ----------------------------------------------------------------------------


def cmd_worker(app: Celeriac, args: argparse.Namespace) -> int:
    """Run a worker until SIGTERM or Ctrl-C."""
    from celeriac.worker import Worker

    if args.autoscale and (args.pool or app.conf.worker_pool) not in ("prefork", "threads"):
        raise UsageError("--autoscale works with the prefork and threads pools")
    if args.events:
        app.conf.worker_send_task_events = True
    if args.max_tasks_per_child is not None:
        app.conf.worker_max_tasks_per_child = args.max_tasks_per_child
    if args.max_memory_per_child is not None:
        app.conf.worker_max_memory_per_child = args.max_memory_per_child
    if args.prefetch_multiplier is not None:
        app.conf.worker_prefetch_multiplier = args.prefetch_multiplier
    beat = _checked_scheduler(app, None) if args.beat else None
    worker = Worker(
        app,
        beat=beat,
        concurrency=args.concurrency,
        pool=args.pool,
        queues=args.queues,
        hostname=args.hostname,
        loglevel=args.loglevel,
        logfile=args.logfile,
        pidfile=args.pidfile,
        shutdown_timeout=args.shutdown_timeout,
        health_file=args.health_file,
        autoscale=args.autoscale,
        metrics_port=args.metrics_port,
        metrics_address=args.metrics_address,
    )
    return worker.start()


def cmd_beat(app: Celeriac, args: argparse.Namespace) -> int:
    """Run the periodic-task scheduler until SIGTERM or Ctrl-C (safe to run several)."""
    from celeriac.worker.worker import setup_logging

    setup_logging(args.loglevel, args.logfile, app.conf.worker_hijack_root_logger)
    return _checked_scheduler(app, args.max_interval).serve()


def _checked_scheduler(app: Celeriac, max_interval: float | None) -> Scheduler:
    """A scheduler whose entries were checked; a bad entry is a usage error (exit 2)."""
    from celeriac.scheduler import Scheduler

    scheduler = Scheduler(app, max_interval=max_interval)
    try:
        scheduler.validate()
    except ScheduleError as exc:
        raise UsageError(str(exc)) from None
    return scheduler


def cmd_call(app: Celeriac, args: argparse.Namespace) -> int:
    """Send a task by name and print its id."""
    call_args = _json_arg(args.args, list, "--args")
    call_kwargs = _json_arg(args.kwargs, dict, "--kwargs")
    options: dict[str, Any] = {}
    if args.countdown is not None:
        options["countdown"] = args.countdown
    if args.queue:
        options["queue"] = args.queue
    result = app.send_task(args.name, call_args, call_kwargs, **options)
    print(result.id)
    return 0


def cmd_result(app: Celeriac, args: argparse.Namespace) -> int:
    """Print a task's state and result (``--follow``: watch it finish, with a progress bar)."""
    if args.follow:
        from celeriac.monitor.follow import cmd_follow

        return cmd_follow(app, args)
    result = app.AsyncResult(args.task_id)
    if args.wait is not None:
        result.get(timeout=args.wait, propagate=False)
    print(f"{result.state}: {result.result!r}" if args.verbose else repr(result.result))
    if args.traceback and result.traceback:
        print(result.traceback)
    return 0


def cmd_purge(app: Celeriac, args: argparse.Namespace) -> int:
    """Delete the waiting messages of queues."""
    queues = args.queues or [app.conf.task_default_queue]
    if not args.force:
        if not sys.stdin.isatty():
            raise UsageError("purge asks for confirmation; pass -f/--force to skip it")
        answer = input(f"Delete every waiting message in {', '.join(queues)}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing purged.")
            return 1
    total = sum(app.broker.purge(queue) for queue in queues)
    print(f"Purged {total} message(s) from {', '.join(queues)}.")
    return 0


def _json_arg(text: str | None, kind: type, flag: str) -> Any:
    if text is None:
        return kind()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{flag} is not valid JSON: {exc}") from None
    if not isinstance(value, kind):
        raise UsageError(f"{flag} must be a JSON {'array' if kind is list else 'object'}")
    return value


# -- the parser --------------------------------------------------------------------------


def positive_int(text: str) -> int:
    """A whole number of at least 1 (an argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    if text.strip() == "0":
        return 0
    return positive_int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"expected a non-negative number of seconds, got {text}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {value}")
    return value


def _queues(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected queue names separated by commas")
    return names


def _autoscale(text: str) -> tuple[int, int]:
    parts = text.split(",")
    if len(parts) > 2:
        raise argparse.ArgumentTypeError(f"expected MAX,MIN such as 10,3, got {text!r}")
    maximum = positive_int(parts[0])
    minimum = positive_int(parts[1]) if len(parts) == 2 else 1
    if minimum > maximum:
        raise argparse.ArgumentTypeError(f"MIN ({minimum}) is larger than MAX ({maximum})")
    return maximum, minimum


LOG_LEVELS = ("debug", "info", "warning", "error", "critical", "fatal")


def _loglevel(text: str) -> str:
    if text.lower() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return "CRITICAL" if text.lower() == "fatal" else text.upper()


def _app_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("-A", "--app", default=default, help="the app: proj, or module:attr")
    parser.add_argument("-b", "--broker", default=default, help="broker URL (overrides config)")
    parser.add_argument("--result-backend", default=default, help="result store URL")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command."""
    parser = argparse.ArgumentParser(prog="celeriac", description="celeriac task queue")
    parser.add_argument("--version", action="version", version=f"celeriac {__version__}")
    _app_options(parser, None)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    _worker_parser(commands)
    beat = _command(commands, "beat", cmd_beat, "run the periodic-task scheduler")
    beat.add_argument("-l", "--loglevel", type=_loglevel, default="WARNING")
    beat.add_argument("-f", "--logfile")
    beat.add_argument("--max-interval", type=_seconds, help="most seconds between passes")
    call = _command(commands, "call", cmd_call, "send a task by name")
    call.add_argument("name")
    call.add_argument("-a", "--args", help="positional arguments, a JSON array")
    call.add_argument("-k", "--kwargs", help="keyword arguments, a JSON object")
    call.add_argument("--countdown", type=_seconds)
    call.add_argument("-Q", "--queue")
    result = _command(commands, "result", cmd_result, "show a task's result")
    result.add_argument("task_id")
    result.add_argument("--traceback", action="store_true")
    result.add_argument("-v", "--verbose", action="store_true", help="show the state too")
    result.add_argument("--wait", type=_seconds, help="wait up to this many seconds")
    result.add_argument("--follow", action="store_true",
                        help="show progress until the task ends; exit 0 only if it succeeded")
    purge = _command(commands, "purge", cmd_purge, "delete waiting messages")
    purge.add_argument("-Q", "--queues", type=_queues)
    purge.add_argument("-f", "--force", action="store_true")
    # monitoring and control: inspect, control, status, events, queues, dlq
    from celeriac.monitor.commands import add_commands

    add_commands(commands, _command)
    from celeriac.dashboard.command import add_command as add_dashboard

    add_dashboard(commands, _command)  # the web dashboard (its libraries load when it runs)
    return parser


def _command(
    commands: Any, name: str, handler: Callable[..., int], help_text: str
) -> argparse.ArgumentParser:
    sub: argparse.ArgumentParser = commands.add_parser(name, help=help_text)
    _app_options(sub, argparse.SUPPRESS)
    sub.set_defaults(handler=handler)
    return sub


def _worker_parser(commands: Any) -> None:
    worker = _command(commands, "worker", cmd_worker, "run a worker")
    worker.add_argument("-l", "--loglevel", type=_loglevel, default="WARNING")
    worker.add_argument("-c", "--concurrency", type=positive_int)
    worker.add_argument("-P", "--pool", choices=("prefork", "threads", "asyncio", "solo"))
    worker.add_argument("-Q", "--queues", type=_queues)
    worker.add_argument("-n", "--hostname", help="node name, e.g. w1@%%h")
    worker.add_argument("-E", "--task-events", dest="events", action="store_true")
    worker.add_argument("-B", "--beat", action="store_true", help="also run the scheduler")
    worker.add_argument("--pidfile")
    worker.add_argument("-f", "--logfile")
    worker.add_argument("--shutdown-timeout", type=_seconds)
    worker.add_argument("--health-file", help="touched every 2 s while the worker is healthy")
    worker.add_argument("--autoscale", type=_autoscale, metavar="MAX,MIN")
    worker.add_argument("--max-tasks-per-child", type=positive_int)
    worker.add_argument("--max-memory-per-child", type=positive_int, help="KiB")
    worker.add_argument("--prefetch-multiplier", type=_non_negative_int)
    worker.add_argument("--metrics-port", type=_port, metavar="PORT",
                        help="serve Prometheus metrics at :PORT/metrics (0: any free port)")
    worker.add_argument("--metrics-address", default="0.0.0.0", metavar="ADDRESS",
                        help="where the metrics listen (default 0.0.0.0: every interface)")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        app = _load_app(args)
        code: int = args.handler(app, args)
        return code
    except UsageError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CeleriacError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _load_app(args: argparse.Namespace) -> Celeriac:
    if args.app:
        app = find_app(args.app)
    else:
        from celeriac.app import current_app

        app = current_app()
    if args.broker:
        app.conf.broker_url = args.broker
    if args.result_backend:
        app.conf.result_backend = args.result_backend
    return app
