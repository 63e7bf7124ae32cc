"""When periodic work runs: ``crontab`` and ``schedule`` (every N seconds), as pure functions.

A schedule answers one question, ``next_after(t)``: the first run strictly after the aware
datetime ``t``. Nothing here reads a clock, so every scheduler that asks the same question gets
the same answer; that is what lets several schedulers agree on which run is due.

- ``schedule(run_every)`` runs every ``run_every`` (seconds or a ``timedelta``) in absolute
  time, on the grid ``anchor + k * run_every``; the anchor defaults to the Unix epoch, so
  ``schedule(60)`` runs at the top of every minute and ``timedelta(hours=1)`` on the UTC hour.
- ``crontab(minute, hour, day_of_week, day_of_month, month_of_year)`` runs at wall-clock
  times, with Celery's field syntax: ``*``, ``*/15``, ``5``, ``1-5``, ``1-30/5``, ``3/10``
  (from 3, every 10), lists ``0,30``, names ``mon-fri`` and ``jan,jul``; Sunday is 0 (or 7).
  As in Celery, a day must match both ``day_of_week`` and ``day_of_month``. Wall-clock times
  are read in ``tz`` when given, else in the time zone of ``t``. Daylight saving: a time that
  does not exist (the spring gap) runs once, at the first moment after the gap; a time that
  happens twice (the autumn repeat) runs once, at its first occurrence.

A malformed field raises ``ValueError`` naming the field and the bad value. ``as_schedule``
turns what a beat entry may hold (a schedule, seconds, a ``timedelta``, a cron line such as
``"0 2 * * mon-fri"``, or the JSON form from ``to_spec``) into a schedule. ``solar`` is not
provided (no well-kept astronomy library makes it cheap).
"""

from __future__ import annotations

import abc
import bisect
import calendar
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["Schedule", "as_schedule", "crontab", "schedule"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MINUTE = timedelta(minutes=1)
#: Days a crontab search may look ahead: 29 February on a given weekday can be 40 years away.
_SEARCH_DAYS = 366 * 401
#: Wall-clock candidates to try past a repeated (autumn) hour before giving up.
_REPEAT_STEPS = 2 * 24 * 60


class Schedule(abc.ABC):
    """When an entry runs. Subclasses answer ``next_after``; the rest follows from it."""

    @abc.abstractmethod
    def next_after(self, t: datetime) -> datetime:
        """The first run strictly after the aware datetime ``t``."""

    def shortest_period(self) -> timedelta | None:
        """The least time between two runs, where known (checked against a scheduler's
        resolution); ``None`` for a schedule that cannot say."""
        return None

    def to_spec(self) -> dict[str, Any]:
        """The JSON form of this schedule, which ``as_schedule`` reads back."""
        raise TypeError(f"{self!r} has no JSON form; only crontab and schedule can be stored")

    def runs_between(self, after: datetime, until: datetime, limit: int = 1000) -> list[datetime]:
        """The runs in ``(after, until]``, at most ``limit`` of them, earliest first."""
        runs: list[datetime] = []
        end = _aware(until, "runs_between").astimezone(UTC)  # in UTC: fold counts
        run = self.next_after(after)
        while run.astimezone(UTC) <= end and len(runs) < limit:
            runs.append(run)
            run = self.next_after(run)
        return runs

    def is_due(self, last_run_at: datetime, now: datetime) -> tuple[bool, float]:
        """Celery's question: ``(a run fell due after last_run_at by now, seconds from now to
        the next run after now)``."""
        now = _aware(now, "is_due")
        due = self.next_after(last_run_at).timestamp() <= now.timestamp()
        return due, self.next_after(now).timestamp() - now.timestamp()


class schedule(Schedule):
    """Every ``run_every`` (seconds or a timedelta), at ``anchor + k * run_every``."""

    def __init__(self, run_every: float | timedelta, *, anchor: datetime | None = None) -> None:
        if isinstance(run_every, bool) or not isinstance(run_every, int | float | timedelta):
            raise TypeError(
                f"schedule run_every: expected seconds or a timedelta, not {run_every!r}"
            )
        if not isinstance(run_every, timedelta):
            if not math.isfinite(run_every):
                raise ValueError(f"schedule run_every: {run_every!r} is not a finite number")
            run_every = timedelta(seconds=run_every)
        if run_every <= timedelta(0):
            raise ValueError(f"schedule run_every: {run_every} is not a positive duration")
        anchor = EPOCH if anchor is None else _aware(anchor, "schedule anchor")
        self.run_every = run_every
        self.anchor = anchor.astimezone(UTC)

    def next_after(self, t: datetime) -> datetime:
        t = _aware(t)
        periods = (t.astimezone(UTC) - self.anchor) // self.run_every
        return (self.anchor + (periods + 1) * self.run_every).astimezone(t.tzinfo)

    def shortest_period(self) -> timedelta:
        return self.run_every

    def to_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"every": self.run_every.total_seconds()}
        if self.anchor != EPOCH:
            spec["anchor"] = self.anchor.isoformat()
        return spec

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, schedule):
            return NotImplemented
        return (self.run_every, self.anchor) == (other.run_every, other.anchor)

    def __hash__(self) -> int:
        return hash((self.run_every, self.anchor))

    def __repr__(self) -> str:
        seconds = self.run_every.total_seconds()
        anchor = "" if self.anchor == EPOCH else f", anchor={self.anchor.isoformat()}"
        return f"<freq: {seconds:g} second{'' if seconds == 1 else 's'}{anchor}>"


# -- crontab --------------------------------------------------------------------------------

_WEEKDAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
_MONTHS = (
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
)  # fmt: skip


def _names(words: Iterable[str], first: int) -> dict[str, int]:
    """Full and three-letter names, lower case, mapped to their numbers."""
    names: dict[str, int] = {}
    for number, word in enumerate(words, first):
        names[word] = names[word[:3]] = number
    return names


#: field -> (lowest, highest accepted, highest of the cycle, names mapped to numbers)
_FIELDS: dict[str, tuple[int, int, int, dict[str, int]]] = {
    "minute": (0, 59, 59, {}),
    "hour": (0, 23, 23, {}),
    "day_of_week": (0, 7, 6, _names(_WEEKDAYS, 0)),
    "day_of_month": (1, 31, 31, {}),
    "month_of_year": (1, 12, 12, _names(_MONTHS, 1)),
}

#: Cron's shorthands, in crontab's argument order: minute, hour, dow, dom, month.
_SHORTHANDS = {
    "@yearly": ("0", "0", "*", "1", "1"),
    "@annually": ("0", "0", "*", "1", "1"),
    "@monthly": ("0", "0", "*", "1", "*"),
    "@weekly": ("0", "0", "0", "*", "*"),
    "@daily": ("0", "0", "*", "*", "*"),
    "@midnight": ("0", "0", "*", "*", "*"),
    "@hourly": ("0", "*", "*", "*", "*"),
}


class crontab(Schedule):
    """Runs at the wall-clock times whose fields all match (see the module docstring)."""

    def __init__(
        self,
        minute: Any = "*",
        hour: Any = "*",
        day_of_week: Any = "*",
        day_of_month: Any = "*",
        month_of_year: Any = "*",
        *,
        tz: str | tzinfo | None = None,
    ) -> None:
        given = (minute, hour, day_of_week, day_of_month, month_of_year)
        pairs = zip(_FIELDS, given, strict=True)
        self._text = {name: _field_text(name, spec) for name, spec in pairs}
        parsed = {name: _parse_field(name, text) for name, text in self._text.items()}
        self.minute = parsed["minute"]
        self.hour = parsed["hour"]
        self.day_of_week = parsed["day_of_week"]
        self.day_of_month = parsed["day_of_month"]
        self.month_of_year = parsed["month_of_year"]
        self.tz = _zone(tz, "crontab tz") if tz is not None else None
        self._minutes = sorted(self.minute)
        self._hours = sorted(self.hour)
        self._check_some_day_exists()

    @classmethod
    def from_string(cls, line: str, *, tz: str | tzinfo | None = None) -> crontab:
        """A crontab from a cron line in cron's order: ``"minute hour dom month dow"``
        (``"0 2 * * mon-fri"``), or a shorthand such as ``"@daily"``."""
        if not isinstance(line, str):
            raise TypeError(f"crontab line: expected a str, not {line!r}")
        shorthand = _SHORTHANDS.get(line.strip().lower())
        if shorthand is not None:
            return cls(*shorthand, tz=tz)
        fields = line.split()
        if len(fields) != 5:
            raise ValueError(
                f"crontab line {line!r}: expected 5 fields "
                "(minute hour day_of_month month_of_year day_of_week)"
            )
        minute, hour, day_of_month, month_of_year, day_of_week = fields
        return cls(minute, hour, day_of_week, day_of_month, month_of_year, tz=tz)

    def _check_some_day_exists(self) -> None:
        longest = {month: calendar.monthrange(2024, month)[1] for month in range(1, 13)}
        if not any(min(self.day_of_month) <= longest[m] for m in self.month_of_year):
            raise ValueError(
                f"crontab day_of_month={self._text['day_of_month']!r}: no such day in "
                f"month_of_year={self._text['month_of_year']!r}, so it would never run"
            )

    # -- the answer

    def next_after(self, t: datetime) -> datetime:
        t = _aware(t)
        zone = self.tz or t.tzinfo
        assert zone is not None
        after = t.astimezone(UTC)
        wall = t.astimezone(zone).replace(tzinfo=None)
        for _ in range(_REPEAT_STEPS):
            wall = self._next_wall(wall)
            run = _moment(wall, zone)
            if run.astimezone(UTC) > after:  # in UTC: same-zone comparison ignores fold
                return run
        raise AssertionError(f"{self!r}: no run found after {t}")  # pragma: no cover

    def _next_wall(self, after: datetime) -> datetime:
        """The first matching naive wall-clock minute strictly after ``after``."""
        start = after.replace(second=0, microsecond=0) + _MINUTE
        day = start.date()
        for _ in range(_SEARCH_DAYS):
            if day.month not in self.month_of_year:
                day = _first_of_next_month(day)
                continue
            if day.day in self.day_of_month and day.isoweekday() % 7 in self.day_of_week:
                found = self._time_on_or_after(start.time() if day == start.date() else time())
                if found is not None:
                    return datetime.combine(day, found)
            day += timedelta(days=1)
        raise AssertionError(f"{self!r} never matches")  # pragma: no cover - checked at init

    def _time_on_or_after(self, earliest: time) -> time | None:
        """The first matching hour:minute of a day at or after ``earliest``."""
        for hour in self._hours[bisect.bisect_left(self._hours, earliest.hour) :]:
            first = earliest.minute if hour == earliest.hour else 0
            index = bisect.bisect_left(self._minutes, first)
            if index < len(self._minutes):
                return time(hour, self._minutes[index])
        return None

    def shortest_period(self) -> timedelta:
        return _MINUTE

    def to_spec(self) -> dict[str, Any]:
        return {"crontab": str(self), "timezone": _zone_name(self.tz)}

    def __str__(self) -> str:
        text = self._text
        return " ".join(
            text[name]
            for name in ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
        )

    def _key(self) -> tuple[Any, ...]:
        fields = (self.minute, self.hour, self.day_of_week, self.day_of_month)
        return (*fields, self.month_of_year, _zone_name(self.tz))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, crontab):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        zone = f" tz={_zone_name(self.tz)}" if self.tz is not None else ""
        return f"<crontab: {self} (m/h/dM/MY/d){zone}>"


def _field_text(name: str, spec: Any) -> str:
    """A field as text: ``"*/15"`` as is, ``5`` as ``"5"``, ``[0, 30]`` as ``"0,30"``."""
    if isinstance(spec, str):
        return spec.strip()
    if isinstance(spec, int) and not isinstance(spec, bool):
        return str(spec)
    if isinstance(spec, Iterable) and not isinstance(spec, bytes | Mapping):
        items = list(spec)
        if items and all(
            isinstance(i, str) or (isinstance(i, int) and not isinstance(i, bool)) for i in items
        ):
            return ",".join(str(item).strip() for item in items)
    raise ValueError(f"crontab {name}={spec!r}: expected text such as '*/15', a number or a list")


def _parse_field(name: str, text: str) -> frozenset[int]:
    """The numbers a field's text stands for."""
    if not text:
        raise ValueError(f"crontab {name}={text!r}: the field is empty")
    values: set[int] = set()
    for item in text.split(","):
        values.update(_parse_item(name, text, item.strip()))
    if name == "day_of_week" and 7 in values:
        values.discard(7)
        values.add(0)
    return frozenset(values)


def _parse_item(name: str, text: str, item: str) -> list[int]:
    """One comma-separated part: ``*``, ``*/n``, ``a``, ``a-b``, ``a-b/n`` or ``a/n``."""
    low, _high, cycle_high, _names = _FIELDS[name]
    body, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not step_text.isdigit() or int(step_text) < 1:
            raise ValueError(f"crontab {name}={text!r}: step {step_text!r} is not a number >= 1")
        step = int(step_text)
    if body == "*":
        first, last = low, cycle_high
    elif "-" in body:
        start_text, _, end_text = body.partition("-")
        first, last = _value(name, text, start_text), _value(name, text, end_text)
    else:
        first = _value(name, text, body)
        last = max(cycle_high, first) if slash else first
    if first <= last:
        values = list(range(first, last + 1))
    else:  # a range that wraps around, such as fri-mon or 22-2
        values = list(range(first, cycle_high + 1)) + list(range(low, last + 1))
    return values[::step]


def _value(name: str, text: str, token: str) -> int:
    """One number or name of a field, range-checked."""
    low, high, _cycle_high, names = _FIELDS[name]
    token = token.strip().lower()
    if token.isdigit():
        number = int(token)
    elif token in names:
        number = names[token]
    else:
        kind = "a number or a name" if names else "a number"
        raise ValueError(f"crontab {name}={text!r}: {token!r} is not {kind}")
    if not low <= number <= high:
        raise ValueError(f"crontab {name}={text!r}: {number} is out of range {low}-{high}")
    return number


def _first_of_next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def _moment(wall: datetime, zone: tzinfo) -> datetime:
    """The moment a wall-clock time names: its first occurrence when the clock repeats it,
    the end of the gap when the clock skips it."""
    first = wall.replace(tzinfo=zone, fold=0)
    if first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall:
        return first
    return _gap_end(wall, zone)


def _gap_end(wall: datetime, zone: tzinfo) -> datetime:
    """The first moment after the skipped wall-clock time ``wall`` (the clock change itself)."""
    # The two offsets around the change put ``wall`` before and after it; bisect in seconds.
    one = wall.replace(tzinfo=zone, fold=0).timestamp()
    other = wall.replace(tzinfo=zone, fold=1).timestamp()
    low, high = math.floor(min(one, other)), math.ceil(max(one, other))
    offset_after = datetime.fromtimestamp(high, zone).utcoffset()
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == offset_after:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, zone)


# -- helpers --------------------------------------------------------------------------------


def _aware(t: datetime, what: str = "next_after") -> datetime:
    if not isinstance(t, datetime):
        raise TypeError(f"{what}: expected a datetime, not {t!r}")
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{what}: {t!r} is naive; give an aware datetime (with tzinfo)")
    return t


def _zone(value: str | tzinfo, what: str) -> tzinfo:
    """A time zone from an IANA name or a tzinfo."""
    if isinstance(value, tzinfo):
        return value
    if isinstance(value, str) and value:
        try:
            return ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
    raise ValueError(
        f"{what}: unknown time zone {value!r} (expected an IANA name such as 'Europe/Berlin')"
    )


def _zone_name(zone: tzinfo | None) -> str | None:
    if zone is None:
        return None
    key = getattr(zone, "key", None)
    return key if isinstance(key, str) else str(zone)


def as_schedule(value: Any) -> Schedule:
    """A schedule from what a beat entry may hold: a Schedule, seconds, a timedelta, a cron
    line, or the JSON form ``{"every": 30}`` / ``{"crontab": "0 2 * * *", "timezone": ...}``."""
    if isinstance(value, Schedule):
        return value
    if isinstance(value, int | float | timedelta) and not isinstance(value, bool):
        return schedule(value)
    if isinstance(value, str):
        return crontab.from_string(value)
    if isinstance(value, Mapping):
        return _from_spec(value)
    raise TypeError(
        "a schedule must be a crontab, a schedule, seconds, a timedelta or a cron line, "
        f"not {value!r}"
    )


def _from_spec(spec: Mapping[str, Any]) -> Schedule:
    keys = set(spec)
    if "every" in spec and keys <= {"every", "anchor"}:
        anchor = spec.get("anchor")
        when = datetime.fromisoformat(anchor) if isinstance(anchor, str) else None
        return schedule(spec["every"], anchor=when)
    if "crontab" in spec and keys <= {"crontab", "timezone"}:
        zone = spec.get("timezone")
        return crontab.from_string(spec["crontab"], tz=_zone(zone, "timezone") if zone else None)
    raise ValueError(
        f"a schedule as data is {{'every': seconds}} or {{'crontab': line, 'timezone': name}}, "
        f"not {dict(spec)!r}"
    )
