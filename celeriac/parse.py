"""How each setting's value is read: one parser per kind of value.

A parser returns the value to store, or raises ``ValueError("<what was expected>")``; the
setting (``celeriac.config.Setting.coerce``) turns that into a ``ConfigurationError`` that
names the setting and the value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

V = TypeVar("V")


_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True,
               "false": False, "no": False, "off": False, "0": False}
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_RATE = re.compile(r"\d+(\.\d+)?(/[smh])?")


def boolean(value: Any) -> bool:
    """A bool, or a word from an environment file such as 'yes' or 'off'."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.strip().lower()]
    raise ValueError("True or False (or 'yes'/'no', 'on'/'off', 'true'/'false', '1'/'0')")


def text(value: Any) -> str:
    """A non-empty string."""
    if isinstance(value, str) and value.strip():
        return value
    raise ValueError("a non-empty string")


def url(value: Any) -> str:
    """A URL with a scheme, such as 'redis://localhost:6379/0'."""
    if isinstance(value, str) and re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", value):
        return value
    raise ValueError("a URL such as 'redis://localhost:6379/0' or 'sqlite:///celeriac.sqlite3'")


def _as_number(value: Any) -> float | None:
    """A real number from an int, float or numeric string; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _as_int(value: Any) -> int | None:
    """An int from an int or a string of one; None for anything else (bools included)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def integer(minimum: int, maximum: int | None = None) -> Callable[[Any], int]:
    """An integer (or a string of one) from minimum to maximum."""
    if maximum is not None:
        expected = f"an integer from {minimum} to {maximum}"
    else:
        expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"

    def parse(value: Any) -> int:
        number = _as_int(value)
        if number is None or number < minimum or (maximum is not None and number > maximum):
            raise ValueError(expected)
        return number

    return parse


def seconds(*, zero: bool = False) -> Callable[[Any], float]:
    """A duration in seconds from a number, a numeric string or a timedelta."""
    expected = f"seconds {'>= 0' if zero else '> 0'} (a number or a datetime.timedelta)"

    def parse(value: Any) -> float:
        number = value.total_seconds() if isinstance(value, timedelta) else _as_number(value)
        if number is None or not math.isfinite(number) or number < 0 or (number == 0 and not zero):
            raise ValueError(expected)
        return number

    return parse


def optional(parse: Callable[[Any], V]) -> Callable[[Any], V | None]:
    """None, or whatever parse accepts."""

    def parse_optional(value: Any) -> V | None:
        if value is None:
            return None
        try:
            return parse(value)
        except ValueError as exc:
            raise ValueError(f"None or {exc}") from None

    return parse_optional


def choice(*options: str) -> Callable[[Any], str]:
    """One of the given words, in any case."""
    expected = "one of " + ", ".join(repr(option) for option in options)

    def parse(value: Any) -> str:
        if isinstance(value, str) and value.strip().lower() in options:
            return value.strip().lower()
        raise ValueError(expected)

    return parse


def str_list(value: Any) -> list[str]:
    """A list of strings, or one comma-separated string."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return list(value)
    raise ValueError("a list of strings or a comma-separated string")


def mapping(value: Any) -> dict[str, Any]:
    """A mapping, copied."""
    if isinstance(value, Mapping):
        return dict(value)
    raise ValueError("a dict")


def broker_options(defaults: Mapping[str, Any]) -> Callable[[Any], dict[str, Any]]:
    """Transport options, with ``defaults`` (lease_timeout, max_deliveries) filled in and
    checked."""
    checks = (("lease_timeout", seconds()), ("max_deliveries", integer(1)))

    def parse(value: Any) -> dict[str, Any]:
        options = {**defaults, **dict(value)}
        for key, check in checks:
            try:
                options[key] = check(options[key])
            except ValueError as exc:
                raise ValueError(f"a dict whose {key!r} is {exc}") from None
        return options

    return parse


def log_level(value: Any) -> str:
    """A logging level name."""
    if isinstance(value, str) and value.strip().upper() in _LOG_LEVELS:
        return value.strip().upper()
    raise ValueError("a log level name: " + ", ".join(_LOG_LEVELS))


def timezone(value: Any) -> str:
    """An IANA time zone name that zoneinfo knows."""
    if isinstance(value, ZoneInfo):
        return value.key
    if isinstance(value, str) and value:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
        else:
            return value
    raise ValueError("an IANA time zone name such as 'UTC' or 'Europe/Paris'")


def routes(value: Any) -> Any:
    """A router dict, a list of routers, a router's dotted path, or a callable; kept as is."""
    if value is None or isinstance(value, Mapping | list | tuple | str) or callable(value):
        return value
    raise ValueError("None, a dict, a list, a dotted path or a callable")


def task_annotations(value: Any) -> Any:
    """An annotations dict, a list of them, or an object with annotate(); kept as is."""
    if value is None or isinstance(value, Mapping | list | tuple) or hasattr(value, "annotate"):
        return value
    raise ValueError("None, a dict, a list, or an object with an annotate() method")


def rate_limit(value: Any) -> Any:
    """None, tasks per second, or '<n>/s', '<n>/m', '<n>/h'; kept as given."""
    if value is None:
        return None
    number = _as_number(value) if not isinstance(value, str) else None
    if (number is not None and number >= 0) or (
        isinstance(value, str) and _RATE.fullmatch(value.replace(" ", ""))
    ):
        return value
    raise ValueError("None, tasks per second, or a rate such as '10/s', '100/m', '1000/h'")


def beat_schedule(value: Any) -> dict[str, Any]:
    """Named entries, each a dict with at least 'task' and 'schedule'."""
    expected = "a dict of entries, each a dict with 'task' and 'schedule'"
    if not isinstance(value, Mapping):
        raise ValueError(expected)
    schedule = {}
    for name, entry in value.items():
        if not isinstance(entry, Mapping) or "task" not in entry or "schedule" not in entry:
            raise ValueError(f"{expected} (entry {name!r} is not)")
        schedule[name] = dict(entry)
    return schedule
