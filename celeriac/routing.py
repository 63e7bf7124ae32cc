"""Where a task goes and what its message carries: routes, defaults and call options."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from difflib import get_close_matches
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.task import Request, Task

#: Options accepted by ``apply_async`` / ``send_task`` besides args and kwargs.
CALL_OPTIONS = frozenset({
    "countdown", "eta", "expires", "queue", "routing_key", "priority", "task_id", "headers",
    "ignore_result", "serializer", "time_limit", "soft_time_limit", "link", "link_error",
    "root_id", "parent_id", "group_id", "group_index", "shadow", "retries", "reply_to",
    "exchange", "retry", "retry_policy", "add_to_parent", "compression", "throw", "chain",
    "chord", "unique",
})  # fmt: skip

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:@\-]{1,200}$")


def check_call_arguments(name: Any, args: Any, kwargs: Any) -> None:
    """TypeError unless a call names a task and has args a list or tuple, kwargs a dict."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"a task name must be a non-empty string, not {name!r}")
    if args is not None and (isinstance(args, str | bytes | dict) or not iterable(args)):
        raise TypeError(f"args must be a list or tuple, not {type(args).__name__}")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TypeError(f"kwargs must be a dict, not {type(kwargs).__name__}")


def iterable(value: Any) -> bool:
    """Whether ``iter(value)`` works."""
    try:
        iter(value)
    except TypeError:
        return False
    return True


def route_queue(
    app: Celeriac,
    name: str,
    task: Task[Any, Any] | None,
    args: Iterable[Any] | None,
    kwargs: dict[str, Any] | None,
    options: dict[str, Any],
) -> str:
    """The queue for a call: the call's option, the task's, task_routes, then the default."""
    queue = options.get("queue") or options.get("routing_key") or (task and task.queue)
    if not queue:
        queue = _from_routes(app.conf.task_routes, name, args, kwargs, options, task)
    queue = queue or app.conf.task_default_queue
    if not isinstance(queue, str) or not _QUEUE_NAME.match(queue):
        raise ValueError(f"bad queue name {queue!r}: use letters, digits and _.:@- only")
    return queue


def _from_routes(
    routes: Any,
    name: str,
    args: Iterable[Any] | None,
    kwargs: dict[str, Any] | None,
    options: dict[str, Any],
    task: Task[Any, Any] | None,
) -> str | None:
    """Look a task name up in ``task_routes`` (a dict, a function, or a list of them)."""
    if not routes:
        return None
    for route in routes if isinstance(routes, list | tuple) else [routes]:
        found = _match_route(route, name, args, kwargs, options, task)
        if found:
            return found
    return None


def _match_route(
    route: dict[str, Any] | Callable[..., Any],
    name: str,
    args: Iterable[Any] | None,
    kwargs: dict[str, Any] | None,
    options: dict[str, Any],
    task: Task[Any, Any] | None,
) -> str | None:
    if callable(route):
        return _queue_of(route(name, list(args or ()), dict(kwargs or {}), options, task=task))
    if name in route:
        return _queue_of(route[name])
    for pattern, target in route.items():
        if any(ch in pattern for ch in "*?[") and fnmatch.fnmatchcase(name, pattern):
            return _queue_of(target)
    return None


def _queue_of(target: Any) -> str | None:
    if target is None or isinstance(target, str):
        return target
    if isinstance(target, dict):
        queue = target.get("queue") or target.get("routing_key")
        return str(queue) if queue else None
    raise TypeError(f"a route must give a queue name or {{'queue': name}}, not {target!r}")


def build_message_fields(
    app: Celeriac,
    task: Task[Any, Any] | None,
    options: dict[str, Any],
    parent: Request | None,
) -> dict[str, Any]:
    """The Message fields for a call, from its options, the task's and the app's defaults."""
    _check_options(options)
    conf = app.conf
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "queue": options["queue"],
        "priority": _priority(options.get("priority"), task, conf.task_default_priority),
        "eta": _eta(options.get("eta"), options.get("countdown"), now),
        "expires": _expires(_first(options.get("expires"), task and task.expires), now),
        "retries": int(options.get("retries") or 0),
        "timelimit": (
            _first(options.get("time_limit"), task and task.time_limit, conf.task_time_limit),
            _first(
                options.get("soft_time_limit"),
                task and task.soft_time_limit,
                conf.task_soft_time_limit,
            ),
        ),
        "ignore_result": bool(
            _first(
                options.get("ignore_result"),
                task and task.ignore_result,
                conf.task_ignore_result,
            )
        ),
        "headers": dict(options.get("headers") or {}),
        "group": options.get("group_id"),
        "group_index": options.get("group_index"),
        "shadow": options.get("shadow"),
        "reply_to": options.get("reply_to"),
        "callbacks": _signatures(options.get("link"), "link"),
        "errbacks": _signatures(options.get("link_error"), "link_error"),
        "chain": options.get("chain") or None,  # checked by Message: it can be long
        "chord": options.get("chord"),
    }
    if options.get("task_id") is not None:
        fields["id"] = options["task_id"]
    if parent is not None and parent.id:
        fields["parent_id"] = parent.id
        fields["root_id"] = parent.root_id or parent.id
    for key in ("root_id", "parent_id"):
        if options.get(key):
            fields[key] = options[key]
    return fields


def _check_options(options: dict[str, Any]) -> None:
    unknown = set(options) - CALL_OPTIONS
    if unknown:
        hints = []
        for key in sorted(unknown):
            close = get_close_matches(key, CALL_OPTIONS, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise TypeError(f"unknown option(s) for apply_async: {', '.join(hints)}")


def _signatures(value: Any, option: str) -> list[dict[str, Any]] | None:
    """A signature, or a list of them, as the list a message carries (None for none)."""
    if not value:
        return None
    items = [value] if isinstance(value, Mapping) else value
    if not isinstance(items, list | tuple) or not all(
        isinstance(item, Mapping) and isinstance(item.get("task"), str) for item in items
    ):
        raise TypeError(f"{option} takes a signature or a list of signatures, not {value!r}")
    return [item if isinstance(item, dict) else dict(item) for item in items]


def _first(*values: Any) -> Any:
    for value in values:
        if value is not None:
            return value
    return None


def _priority(value: Any, task: Task[Any, Any] | None, default: Any) -> int:
    priority = _first(value, task and task.priority, default, 0)
    if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 9:
        raise ValueError(f"priority must be an integer from 0 to 9, not {priority!r}")
    return priority


def _eta(eta: Any, countdown: Any, now: datetime) -> datetime | None:
    if eta is not None and countdown is not None:
        raise TypeError("give either eta or countdown, not both")
    if countdown is not None:
        if isinstance(countdown, timedelta):
            countdown = countdown.total_seconds()
        if not isinstance(countdown, int | float) or isinstance(countdown, bool):
            raise TypeError(f"countdown must be a number of seconds, not {countdown!r}")
        return now + timedelta(seconds=countdown) if countdown > 0 else None
    if eta is None:
        return None
    if not isinstance(eta, datetime):
        raise TypeError(f"eta must be a datetime, not {eta!r}")
    return eta if eta.tzinfo else eta.replace(tzinfo=UTC)


def _expires(expires: Any, now: datetime) -> datetime | None:
    if expires is None:
        return None
    if isinstance(expires, timedelta):
        return now + expires
    if isinstance(expires, datetime):
        return expires if expires.tzinfo else expires.replace(tzinfo=UTC)
    if isinstance(expires, int | float) and not isinstance(expires, bool):
        return now + timedelta(seconds=expires)
    raise TypeError(f"expires must be seconds, a timedelta or a datetime, not {expires!r}")
