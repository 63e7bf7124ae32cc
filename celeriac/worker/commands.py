"""The control commands a worker answers: ``ping``, ``inspect`` questions, pool and queue
changes, ``revoke`` and ``shutdown``.

Each is a function of the worker's ``WorkerControl`` and the request's arguments; what it
returns is the reply, and a ``CommandError`` it raises is the error reply.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import signal
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celeriac import __version__
from celeriac.control import signal_number
from celeriac.errors import LimitError
from celeriac.limits import parse_rate
from celeriac.worker.heartbeat import load_average

if TYPE_CHECKING:
    from celeriac.worker.control import WorkerControl
    from celeriac.worker.endings import Inflight

logger = logging.getLogger("celeriac.worker")


class CommandError(Exception):
    """A command that cannot be carried out: its message is the error reply."""


Command = Callable[..., Any]
COMMANDS: dict[str, Command] = {}


def command(fn: Command) -> Command:
    """Register ``fn`` as the command named after it (without the ``cmd_`` in front)."""
    COMMANDS[fn.__name__.removeprefix("cmd_")] = fn
    return fn


@command
def cmd_ping(control: WorkerControl) -> Any:
    """Answer that this worker is alive."""
    return {"ok": "pong"}


@command
def cmd_active(control: WorkerControl) -> Any:
    """The tasks running now."""
    return [task_info(control, item, at) for _, item, at in control.running()]


@command
def cmd_reserved(control: WorkerControl) -> Any:
    """The tasks held and not started yet."""
    children = control.consumer.pool.held()
    if children is not None:  # a consuming pool: its children hold them
        return [task_info(control, item, None) for _, item, at in children if at is None]
    started = {job_id for job_id, _, _ in control.running()}
    held = dict(control.consumer.inflight)
    return [task_info(control, item, None) for j, item in held.items() if j not in started]


@command
def cmd_scheduled(control: WorkerControl) -> Any:
    """Tasks held for a later time: none, as the broker holds delayed work."""
    return []


@command
def cmd_registered(control: WorkerControl) -> Any:
    """The names of the tasks this worker can run."""
    return sorted(name for name in control.app.tasks if not name.startswith("celeriac."))


@command
def cmd_active_queues(control: WorkerControl) -> Any:
    """The queues this worker takes tasks from."""
    return [{"name": queue, "routing_key": queue} for queue in control.consumer.queues]


@command
def cmd_revoked(control: WorkerControl) -> Any:
    """The task ids this worker holds as revoked."""
    return sorted(control.revoked)


@command
def cmd_conf(control: WorkerControl, with_defaults: bool = False) -> Any:
    """This worker's settings (changed ones, or all), passwords masked."""
    rows = control.app.conf.table(with_defaults=bool(with_defaults), censored=True)
    return {name: value for name, value, _ in rows}


@command
def cmd_stats(control: WorkerControl) -> Any:
    """Counters, the pool, the broker and resource use."""
    consumer, pool = control.consumer, control.consumer.pool
    usage = resource.getrusage(resource.RUSAGE_SELF)
    pids = getattr(pool, "pids", None)
    return {
        "hostname": control.hostname, "pid": os.getpid(), "sw_ver": __version__,
        "uptime": round(time.time() - control.since, 3),
        "pool": {"implementation": pool.name, "max-concurrency": pool.concurrency,
                 "processes": pids() if callable(pids) else []},
        "prefetch_count": consumer.budget, "processed": consumer.total_processed(),
        "active": len(control.running()), "held": _held(control),
        "queues": list(consumer.queues), "revoked": len(control.revoked),
        "broker": {"url": masked_url(control.app.broker_url)},
        "loadavg": load_average(),
        "rusage": {"utime": usage.ru_utime, "stime": usage.ru_stime, "maxrss": usage.ru_maxrss},
    }  # fmt: skip


def _held(control: WorkerControl) -> int:
    children = control.consumer.pool.held()
    return len(control.consumer.inflight) if children is None else len(children)


@command
def cmd_shutdown(control: WorkerControl) -> Any:
    """Stop the worker gracefully, as SIGTERM does."""
    logger.warning("Shutting down gracefully: asked to by remote control")
    control.consumer.stop()
    return {"ok": "shutting down"}


@command
def cmd_pool_grow(control: WorkerControl, n: int = 1) -> Any:
    """Add ``n`` processes or threads to the pool."""
    pool = _resizable(control, n)
    try:
        pool.grow(n)
    except NotImplementedError as exc:
        raise CommandError(str(exc)) from None
    _fit_prefetch(control)
    logger.info("Pool grown by %d to %d (remote control)", n, pool.concurrency)
    return {"ok": f"pool grown to {pool.concurrency}"}


@command
def cmd_pool_shrink(control: WorkerControl, n: int = 1) -> Any:
    """Let ``n`` idle processes or threads leave the pool (at least one stays)."""
    pool = _resizable(control, n)
    if pool.concurrency - n < 1:
        raise CommandError(f"the pool has {pool.concurrency}; it cannot shrink by {n}")
    try:
        pool.shrink(n)
    except NotImplementedError as exc:
        raise CommandError(str(exc)) from None
    _fit_prefetch(control)
    logger.info("Pool shrunk to %d (remote control)", pool.concurrency)
    return {"ok": f"pool shrunk to {pool.concurrency}"}


def _resizable(control: WorkerControl, n: Any) -> Any:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise CommandError(f"n must be a whole number of at least 1, not {n!r}")
    if control.consumer.autoscaler is not None:
        raise CommandError("the pool is autoscaled (--autoscale); it sizes itself")
    return control.consumer.pool


def _fit_prefetch(control: WorkerControl) -> None:
    """Prefetch follows the pool's size, as it does at start."""
    consumer = control.consumer
    multiplier = max(1, control.app.conf.worker_prefetch_multiplier)
    consumer.budget = consumer.pool.concurrency * multiplier


@command
def cmd_add_consumer(control: WorkerControl, queue: str) -> Any:
    """Take tasks from ``queue`` too."""
    if not isinstance(queue, str) or not queue.strip():
        raise CommandError(f"a queue is a non-empty name, not {queue!r}")
    consumer = control.consumer
    if queue in consumer.queues:
        return {"ok": f"already consuming from {queue}"}
    consumer.set_queues([*consumer.queues, queue])
    logger.info("Consuming from queue %s (remote control)", queue)
    return {"ok": f"now consuming from {queue}"}


@command
def cmd_cancel_consumer(control: WorkerControl, queue: str) -> Any:
    """Stop taking tasks from ``queue`` (the last queue stays: use shutdown instead)."""
    consumer = control.consumer
    if queue not in consumer.queues:
        raise CommandError(f"not consuming from {queue!r}")
    if len(consumer.queues) == 1:
        raise CommandError(f"{queue!r} is this worker's only queue; use shutdown to stop it")
    consumer.set_queues([name for name in consumer.queues if name != queue])
    logger.info("No longer consuming from queue %s (remote control)", queue)
    return {"ok": f"no longer consuming from {queue}"}


@command
def cmd_time_limit(
    control: WorkerControl, task_name: str, soft: float | None = None, hard: float | None = None
) -> Any:
    """Set a task's soft and hard time limits (None: the app's) for the runs that start next."""
    task = control.app.tasks.get(task_name) if isinstance(task_name, str) else None
    if task is None:
        raise CommandError(f"unknown task {task_name!r}; see: inspect registered")
    soft, hard = _seconds_or_none("soft", soft), _seconds_or_none("hard", hard)
    if soft is not None and hard is not None and soft > hard:
        raise CommandError(f"the soft limit ({soft:g} s) is longer than the hard one ({hard:g} s)")
    task.soft_time_limit, task.time_limit = soft, hard
    control.consumer.pool.forward(("time_limit", task_name, soft, hard))
    conf = control.app.conf
    text = (f"time limits of {task_name}: soft {_limit_text(soft, conf.task_soft_time_limit)}, "
            f"hard {_limit_text(hard, conf.task_time_limit)}")  # fmt: skip
    logger.info("New %s (remote control)", text)
    return {"ok": text}


def _seconds_or_none(which: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise CommandError(f"the {which} limit must be a positive number of seconds, not {value!r}")
    return float(value)


def _limit_text(value: float | None, default: float | None) -> str:
    if value is not None:
        return f"{value:g} s"
    return "none" if default is None else f"{default:g} s (the app's default)"


@command
def cmd_rate_limit(
    control: WorkerControl, task_name: str, rate_limit: Any = None, stored: bool = False
) -> Any:
    """Change a task's rate limit: ``stored`` (for every worker) reads the one in the broker
    now; otherwise it is set for this worker alone (None: back to the task's own)."""
    task = control.app.tasks.get(task_name) if isinstance(task_name, str) else None
    if task is None:
        raise CommandError(f"unknown task {task_name!r}; see: inspect registered")
    try:
        rate = parse_rate(rate_limit)
    except LimitError as exc:
        raise CommandError(str(exc)) from None
    limits = control.consumer.limits
    if stored:
        limits.refresh(task_name)
    elif limits.scope(task) == "cluster":
        raise CommandError(
            f"{task_name} is rate-limited across the cluster: change it for every worker "
            "(no destination), or give the task rate_limit_scope='worker'"
        )
    elif rate_limit is None:
        limits.local.pop(task_name, None)
    else:
        limits.local[task_name] = rate
    control.consumer.pool.forward(("rate", task_name, rate_limit, not stored))
    where = "every worker" if stored else "this worker"
    logger.info("Rate limit of %s for %s: %s (remote control)", task_name, where, rate_limit)
    if rate_limit is None:
        return {"ok": f"rate limit of {task_name} back to the task's own ({where})"}
    if rate is None:
        return {"ok": f"rate limit of {task_name} disabled successfully ({where})"}
    return {"ok": f"new rate limit of {task_name} set successfully: {rate_limit} ({where})"}


@command
def cmd_revoke(
    control: WorkerControl,
    task_id: str | list[str],
    terminate: bool = False,
    signal: str | int = "SIGTERM",
) -> Any:
    """Refuse these tasks from now on; with ``terminate``, stop them where they run."""
    ids = [task_id] if isinstance(task_id, str) else [str(one) for one in task_id]
    control.revoked.add(ids)
    control.consumer.pool.forward(("revoke", ids))
    logger.info("Tasks revoked by remote control: %s", ", ".join(ids))
    if not terminate:
        return {"ok": f"tasks {', '.join(ids)} flagged as revoked"}
    stopped = _terminate(control, set(ids), _terminating_signal(signal))
    text = f"tasks {', '.join(ids)} flagged as revoked; terminated: {', '.join(stopped) or 'none'}"
    if not stopped and control.consumer.pool.name != "prefork":
        text += f" (the {control.consumer.pool.name} pool cannot stop a running task)"
    return {"ok": text}


def _terminating_signal(name: str | int) -> int:
    """The signal to stop a pool process with; SIGTERM and SIGINT, which they ignore, kill."""
    try:
        signum = signal_number(name)
    except (TypeError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    return int(signal.SIGKILL) if signum in (signal.SIGTERM, signal.SIGINT) else signum


def _terminate(control: WorkerControl, ids: set[str], signum: int) -> list[str]:
    """Signal the processes running ``ids``; returns the ids that were stopped."""
    stopped = []
    for job_id, item, _ in control.running():
        if item.message.id in ids and control.consumer.pool.terminate_job(job_id, signum):
            logger.warning("Terminating %s[%s] (signal %d)", item.message.task, item.message.id,
                           signum)  # fmt: skip
            stopped.append(item.message.id)
    return stopped


def masked_url(url: str) -> str:
    """``url`` with its password hidden."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username or ''}:****@{host}"))


def task_info(control: WorkerControl, item: Inflight, started: float | None) -> dict[str, Any]:
    """How ``inspect active`` and ``reserved`` describe a held task (Celery's fields)."""
    message, delivery = item.message, item.delivery
    return {
        "id": message.id, "name": message.task, "type": message.task,
        "args": message.argsrepr, "kwargs": message.kwargsrepr,
        "hostname": control.hostname, "time_start": started, "acknowledged": item.acked,
        "delivery_info": {"routing_key": delivery.queue, "priority": delivery.priority,
                          "redelivered": delivery.deliveries > 1},
    }  # fmt: skip
