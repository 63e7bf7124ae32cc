"""Rate limits, concurrency limits and unique tasks: the options, read and checked.

The options of ``@app.task(...)``:

- ``rate_limit``: ``"10/s"``, ``"100/m"``, ``"1000/h"`` or a number of tasks per second
  (Celery's forms); ``None`` or ``0`` for none. Tasks that set none take the
  ``task_default_rate_limit`` setting. A rate of ``n/s`` starts one task every ``1/n``
  seconds, as Celery's token bucket of capacity one does: no bursts.
- ``rate_limit_scope``: ``"cluster"`` (the default, from ``task_default_rate_limit_scope``):
  the limit holds for every worker together, its turns handed out by the broker; or
  ``"worker"``: each worker on its own runs the task at most that often (Celery's meaning;
  a message held back by one worker may come back to another, which asks its own limit, so
  several workers together may run it less often than the limit times the workers).
  A task starts at its turn or a little after (the time for a worker to fetch it), so the
  rate holds over time, and a one-second window can count a task or two more.
- ``concurrency_limit``: at most this many runs at once, cluster-wide, per value of
  ``concurrency_key``, a function called with the task's arguments (``lambda customer_id,
  **_: customer_id``) that returns a str or int, or None for "no limit on this call". Without
  a key function the limit is for the task as a whole.

And of ``apply_async``: ``unique=True`` with an explicit ``task_id`` publishes nothing while a
message with that id is queued or running (see ``Transport.publish_unique``).

The worker's side is ``celeriac.worker.limits``; the broker's is the limits section of the
transport contract (``celeriac.transports.base``). Remote control changes a rate limit for
the whole cluster by storing it in the broker under ``RATE_LIMIT_KEY + task name``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from celeriac.errors import ConcurrencyKeyError, LimitError

#: Where remote control stores a task's rate limit for every worker (the value: the rate text).
RATE_LIMIT_KEY = "celeriac-rate-limit-"
SCOPES = ("cluster", "worker")
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"(\d+(?:\.\d+)?)(?:/([smh]))?")
_EXPECTED = "a rate such as '10/s', '100/m' or '1000/h', a number of tasks per second, or None"


def parse_rate(value: Any, where: str = "") -> float | None:
    """Tasks per second for a rate limit; None when there is no limit (None, 0, '0/s').

    Raises LimitError, naming the value (``where``: " for <task>") and the forms expected.
    """
    if value is None:
        return None
    match = _RATE.fullmatch(value.replace(" ", "")) if isinstance(value, str) else None
    if match is not None:
        per_second = float(match.group(1)) / UNITS[match.group(2) or "s"]
    elif isinstance(value, int | float) and not isinstance(value, bool):
        per_second = float(value)
    else:
        per_second = -1.0
    if not 0 <= per_second < math.inf:
        raise LimitError(f"bad rate limit {value!r}{where}: expected {_EXPECTED}")
    return per_second or None


def parse_scope(value: Any, where: str = "") -> str:
    """``cluster`` or ``worker``."""
    if isinstance(value, str) and value.strip().lower() in SCOPES:
        return value.strip().lower()
    raise LimitError(f"bad rate_limit_scope {value!r}{where}: expected 'cluster' or 'worker'")


def check_task_limits(options: Mapping[str, Any], name: str = "a task") -> None:
    """Refuse limit options that cannot work, when the task is declared (not when it runs)."""
    where = f" for {name}"
    parse_rate(options.get("rate_limit"), where)
    if options.get("rate_limit_scope") is not None:
        parse_scope(options["rate_limit_scope"], where)
    key, limit = options.get("concurrency_key"), options.get("concurrency_limit")
    if key is not None and not callable(key):
        raise LimitError(f"concurrency_key must be a function of the task's arguments{where}")
    if limit is None:
        if key is not None:
            raise LimitError(f"concurrency_key needs concurrency_limit (a whole number){where}")
        return
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise LimitError(
            f"concurrency_limit must be a whole number of at least 1, not {limit!r}{where}"
        )


def concurrency_key(
    fn: Callable[..., Any] | None, name: str, args: Any, kwargs: Mapping[str, Any]
) -> str | None:
    """The slot key of one call: ``fn(*args, **kwargs)`` as text, or None for no limit.

    Raises ConcurrencyKeyError when the function raises or returns something else than a
    str, an int or None.
    """
    if fn is None:
        return ""
    try:
        value = fn(*args, **kwargs)
    except Exception as exc:
        raise ConcurrencyKeyError(
            f"concurrency_key of {name} raised {type(exc).__name__}: {exc}"
        ) from exc
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ConcurrencyKeyError(
            f"concurrency_key of {name} must return a str, an int or None, "
            f"not {type(value).__name__}"
        )
    return str(value)


def rate_bucket(task_name: str, scope: str, hostname: str) -> str:
    """The broker key of a task's rate limit: one for the cluster, or one per worker."""
    return f"rate:{task_name}" if scope == "cluster" else f"rate:{task_name}@{hostname}"


def slot_key(task_name: str, key: str) -> str:
    """The broker key of a task's concurrency slots for one key value."""
    return f"concurrency:{task_name}:{key}" if key else f"concurrency:{task_name}"


def check_unique(options: Mapping[str, Any]) -> str | None:
    """The id a ``unique=True`` call is unique by, or None; LimitError without a task_id."""
    if not options.get("unique"):
        return None
    task_id = options.get("task_id")
    if not isinstance(task_id, str) or not task_id:
        raise LimitError(
            "unique=True needs an explicit task_id: apply_async(args, task_id='...', unique=True)"
        )
    return task_id
