"""crontab and schedule: field syntax, month ends, leap days, daylight saving, bad input.

Everything here is pure: no clock, no broker. Daylight-saving cases use zoneinfo's
Europe/Berlin (clocks go 02:00 -> 03:00 on 2024-03-31 and 03:00 -> 02:00 on 2024-10-27) and
America/New_York (02:00 -> 03:00 on 2024-03-10, 02:00 -> 01:00 on 2024-11-03).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celeriac.schedules import Schedule, as_schedule, crontab, schedule

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def at(*fields: int, tz: tzinfo = UTC, fold: int = 0) -> datetime:
    return datetime(*fields, tzinfo=tz, fold=fold)  # type: ignore[misc]


def runs(cron: Schedule, start: datetime, count: int) -> list[datetime]:
    found, t = [], start
    for _ in range(count):
        t = cron.next_after(t)
        found.append(t)
    return found


def utc(moments: list[datetime]) -> list[datetime]:
    return [m.astimezone(UTC) for m in moments]


# -- field syntax -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "spec", "expected"),
    [
        ("minute", "*", set(range(60))),
        ("minute", "*/15", {0, 15, 30, 45}),
        ("minute", "5", {5}),
        ("minute", 5, {5}),
        ("minute", "0,30", {0, 30}),
        ("minute", [0, 30], {0, 30}),
        ("minute", "1-30/5", {1, 6, 11, 16, 21, 26}),
        ("minute", "3/20", {3, 23, 43}),
        ("minute", "55-5", {55, 56, 57, 58, 59, 0, 1, 2, 3, 4, 5}),
        ("minute", " 1 , 2 ", {1, 2}),
        ("hour", "9-17/2", {9, 11, 13, 15, 17}),
        ("hour", "22-2", {22, 23, 0, 1, 2}),
        ("day_of_week", "mon-fri", {1, 2, 3, 4, 5}),
        ("day_of_week", "MON-Fri", {1, 2, 3, 4, 5}),
        ("day_of_week", "sat,sun", {6, 0}),
        ("day_of_week", "monday,friday", {1, 5}),
        ("day_of_week", "7", {0}),
        ("day_of_week", "5-7", {5, 6, 0}),
        ("day_of_week", "fri-mon", {5, 6, 0, 1}),
        ("day_of_week", "*/2", {0, 2, 4, 6}),
        ("day_of_month", "1-7,15-21", set(range(1, 8)) | set(range(15, 22))),
        ("day_of_month", "*/10", {1, 11, 21, 31}),
        ("month_of_year", "jan,jul", {1, 7}),
        ("month_of_year", "March-may", {3, 4, 5}),
        ("month_of_year", "*/3", {1, 4, 7, 10}),
    ],
)
def test_field_syntax(field: str, spec: Any, expected: set[int]) -> None:
    assert getattr(crontab(**{field: spec}), field) == expected


def test_from_string_reads_cron_order() -> None:
    cron = crontab.from_string("0 2 1,15 jan mon-fri")
    assert cron == crontab(
        minute=0, hour=2, day_of_month="1,15", month_of_year="jan", day_of_week="mon-fri"
    )
    assert str(cron) == "0 2 1,15 jan mon-fri"
    assert repr(cron) == "<crontab: 0 2 1,15 jan mon-fri (m/h/dM/MY/d)>"
    assert crontab.from_string("@daily") == crontab(minute=0, hour=0)
    assert crontab.from_string("@hourly") == crontab(minute=0)
    assert crontab.from_string("@weekly") == crontab(0, 0, day_of_week="sun")


def test_equal_crontabs_are_equal_whatever_their_spelling() -> None:
    assert crontab(day_of_week="mon-fri") == crontab(day_of_week="1,2,3,4,5")
    assert hash(crontab(minute="*/30")) == hash(crontab(minute=[0, 30]))
    assert crontab(minute=0) != crontab(minute=0, tz="Europe/Berlin")
    assert schedule(30) == schedule(timedelta(seconds=30))
    assert schedule(30) != schedule(31)


# -- next_after in UTC: minutes, days, month ends, leap days -------------------------------


def test_every_minute_and_every_quarter_hour() -> None:
    start = at(2024, 5, 1, 10, 7, 30)
    assert crontab().next_after(start) == at(2024, 5, 1, 10, 8)
    assert runs(crontab(minute="*/15"), start, 3) == [
        at(2024, 5, 1, 10, 15),
        at(2024, 5, 1, 10, 30),
        at(2024, 5, 1, 10, 45),
    ]


def test_next_after_is_strictly_after() -> None:
    cron = crontab(minute=0, hour=2)
    assert cron.next_after(at(2024, 5, 1, 2, 0)) == at(2024, 5, 2, 2, 0)
    assert cron.next_after(at(2024, 5, 1, 1, 59, 59)) == at(2024, 5, 1, 2, 0)


def test_rolls_over_the_day_month_and_year() -> None:
    assert crontab(minute=0, hour=0).next_after(at(2024, 12, 31, 23, 59)) == at(2025, 1, 1)
    assert crontab(0, 0, day_of_month=1).next_after(at(2024, 1, 31, 12)) == at(2024, 2, 1)


def test_day_31_skips_the_shorter_months() -> None:
    cron = crontab(0, 0, day_of_month=31)
    assert runs(cron, at(2024, 1, 31, 1), 4) == [
        at(2024, 3, 31),
        at(2024, 5, 31),
        at(2024, 7, 31),
        at(2024, 8, 31),
    ]


def test_day_30_never_falls_in_february() -> None:
    assert crontab(0, 0, day_of_month=30).next_after(at(2024, 1, 30, 1)) == at(2024, 3, 30)


def test_leap_days() -> None:
    cron = crontab(0, 0, day_of_month=29, month_of_year=2)
    assert runs(cron, at(2023, 1, 1), 3) == [at(2024, 2, 29), at(2028, 2, 29), at(2032, 2, 29)]
    # 2100 is not a leap year: the next one after 2096 is 2104.
    assert cron.next_after(at(2096, 3, 1)) == at(2104, 2, 29)
    # 29 February that is also a Monday (a day must match both fields, as in Celery).
    assert crontab(0, 0, "mon", 29, 2).next_after(at(2025, 1, 1)) == at(2044, 2, 29)


def test_day_of_week_and_day_of_month_must_both_match() -> None:
    first_monday = crontab(0, 9, day_of_week="mon", day_of_month="1-7")
    assert runs(first_monday, at(2024, 1, 1, 12), 3) == [
        at(2024, 2, 5, 9),
        at(2024, 3, 4, 9),
        at(2024, 4, 1, 9),
    ]


def test_weekdays_skip_the_weekend() -> None:
    cron = crontab(minute=30, hour=8, day_of_week="mon-fri")
    friday = at(2024, 5, 3, 9)
    assert cron.next_after(friday) == at(2024, 5, 6, 8, 30)


def test_the_answer_is_in_the_schedules_zone_or_that_of_t() -> None:
    cron = crontab(minute=0, hour=9, tz="Europe/Berlin")
    found = cron.next_after(at(2024, 6, 1, 12))
    assert found.tzinfo is BERLIN and found == at(2024, 6, 2, 9, tz=BERLIN)
    plain = crontab(minute=0, hour=9).next_after(at(2024, 6, 1, 12, tz=NEW_YORK))
    assert plain == at(2024, 6, 2, 9, tz=NEW_YORK)


# -- daylight saving ----------------------------------------------------------------------


def test_berlin_spring_a_time_in_the_gap_runs_once_when_the_gap_ends() -> None:
    cron = crontab(minute=30, hour=2)
    found = runs(cron, at(2024, 3, 29, 12, tz=BERLIN), 3)
    assert utc(found) == [at(2024, 3, 30, 1, 30), at(2024, 3, 31, 1, 0), at(2024, 4, 1, 0, 30)]
    assert found[1] == at(2024, 3, 31, 3, 0, tz=BERLIN)


def test_berlin_spring_quarter_hours_in_the_gap_collapse_into_one_run() -> None:
    found = runs(crontab(minute="*/15"), at(2024, 3, 31, 1, 40, tz=BERLIN), 3)
    assert [f.strftime("%H:%M %Z") for f in found] == ["01:45 CET", "03:00 CEST", "03:15 CEST"]
    assert utc(found) == [at(2024, 3, 31, 0, 45), at(2024, 3, 31, 1, 0), at(2024, 3, 31, 1, 15)]


def test_berlin_autumn_a_repeated_time_runs_once() -> None:
    cron = crontab(minute=30, hour=2)
    found = runs(cron, at(2024, 10, 26, 12, tz=BERLIN), 2)
    assert found[0].strftime("%H:%M %Z") == "02:30 CEST"
    assert utc(found) == [at(2024, 10, 27, 0, 30), at(2024, 10, 28, 1, 30)]


def test_berlin_autumn_from_inside_the_repeated_hour() -> None:
    second_0210 = at(2024, 10, 27, 2, 10, tz=BERLIN, fold=1)  # 02:10 CET, the second time
    assert second_0210.strftime("%Z") == "CET"
    found = crontab(minute="*/15").next_after(second_0210)
    assert found.astimezone(UTC) == at(2024, 10, 27, 2, 0)  # 03:00 CET: 02:15 already ran
    assert crontab(minute=30, hour=2).next_after(second_0210) == at(2024, 10, 28, 2, 30, tz=BERLIN)


def test_berlin_autumn_quarter_hours_run_once_per_wall_clock_time() -> None:
    found = runs(crontab(minute="*/15"), at(2024, 10, 27, 1, 50, tz=BERLIN), 6)
    shown = [f.strftime("%H:%M %Z") for f in found]
    assert shown == [
        "02:00 CEST",
        "02:15 CEST",
        "02:30 CEST",
        "02:45 CEST",
        "03:00 CET",
        "03:15 CET",
    ]


def test_new_york_spring_and_autumn() -> None:
    daily_0230 = crontab(minute=30, hour=2)
    spring = runs(daily_0230, at(2024, 3, 9, 12, tz=NEW_YORK), 3)
    assert [s.strftime("%d %H:%M %Z") for s in spring] == [
        "10 03:00 EDT",
        "11 02:30 EDT",
        "12 02:30 EDT",
    ]
    daily_0130 = crontab(minute=30, hour=1)
    autumn = runs(daily_0130, at(2024, 11, 2, 12, tz=NEW_YORK), 2)
    assert [a.strftime("%d %H:%M %Z") for a in autumn] == ["03 01:30 EDT", "04 01:30 EST"]


@pytest.mark.parametrize(
    ("zone", "day"),
    [
        (BERLIN, (2024, 3, 31)),
        (BERLIN, (2024, 10, 27)),
        (NEW_YORK, (2024, 3, 10)),
        (NEW_YORK, (2024, 11, 3)),
    ],
)
def test_through_a_transition_runs_move_forward_and_no_wall_time_runs_twice(
    zone: ZoneInfo, day: tuple[int, int, int]
) -> None:
    start = at(*day, tz=zone) - timedelta(hours=1)
    found = runs(crontab(minute="*/5"), start, 12 * 5)
    instants = utc(found)
    assert instants == sorted(set(instants))
    walls = [f.replace(tzinfo=None) for f in found]
    assert len(walls) == len(set(walls))


def test_an_interval_runs_in_absolute_time_across_a_transition() -> None:
    hourly = schedule(timedelta(hours=1))
    found = runs(hourly, at(2024, 10, 27, 1, 30, tz=BERLIN), 3)
    # In UTC: subtracting datetimes of one zone ignores which of a repeated hour each is in.
    instants = utc(found)
    assert [i - instants[0] for i in instants] == [timedelta(hours=h) for h in (0, 1, 2)]
    assert [f.strftime("%H:%M %Z") for f in found] == ["02:00 CEST", "02:00 CET", "03:00 CET"]


# -- schedule (every N seconds) -----------------------------------------------------------


def test_an_interval_is_on_a_grid_from_the_epoch() -> None:
    every_30 = schedule(30)
    assert every_30.next_after(at(2024, 5, 1, 10, 0, 10)) == at(2024, 5, 1, 10, 0, 30)
    assert every_30.next_after(at(2024, 5, 1, 10, 0, 30)) == at(2024, 5, 1, 10, 1, 0)
    assert schedule(timedelta(days=1)).next_after(at(2024, 5, 1, 10)) == at(2024, 5, 2)
    assert every_30.run_every == timedelta(seconds=30)


def test_an_interval_with_an_anchor() -> None:
    anchored = schedule(timedelta(hours=6), anchor=at(2024, 1, 1, 2, tz=BERLIN))
    assert anchored.next_after(at(2024, 5, 1, 12)) == at(2024, 5, 1, 13)  # 02:00 CET + 6 h
    assert anchored.next_after(at(2023, 12, 31, 20, 0)) == at(2024, 1, 1, 1)


def test_an_interval_answers_in_the_zone_of_t() -> None:
    found = schedule(60).next_after(at(2024, 5, 1, 10, 0, 1, tz=NEW_YORK))
    assert found.tzinfo is NEW_YORK and found == at(2024, 5, 1, 10, 1, tz=NEW_YORK)


def test_runs_between_and_is_due() -> None:
    every_10 = schedule(10)
    start = at(2024, 5, 1, 10, 0, 0)
    assert every_10.runs_between(start, start + timedelta(seconds=30)) == [
        start + timedelta(seconds=s) for s in (10, 20, 30)
    ]
    assert every_10.runs_between(start, start + timedelta(hours=1), limit=2) == [
        start + timedelta(seconds=10),
        start + timedelta(seconds=20),
    ]
    assert every_10.is_due(start, start + timedelta(seconds=12)) == (True, 8.0)
    assert every_10.is_due(start, start + timedelta(seconds=5)) == (False, 5.0)


# -- the JSON form ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        crontab(minute="*/15", hour="9-17", day_of_week="mon-fri"),
        crontab(minute=0, hour=2, tz="America/New_York"),
        schedule(30),
        schedule(timedelta(hours=1), anchor=at(2024, 1, 1, 0, 30)),
    ],
)
def test_to_spec_round_trips(value: Schedule) -> None:
    assert as_schedule(value.to_spec()) == value


def test_as_schedule_reads_what_an_entry_may_hold() -> None:
    assert as_schedule(30) == schedule(30)
    assert as_schedule(2.5) == schedule(2.5)
    assert as_schedule(timedelta(minutes=1)) == schedule(60)
    assert as_schedule("*/5 * * * *") == crontab(minute="*/5")
    assert as_schedule({"every": 10}) == schedule(10)
    cron = crontab()
    assert as_schedule(cron) is cron


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "fragments"),
    [
        ({"minute": "60"}, ["minute", "'60'", "out of range 0-59"]),
        ({"minute": -1}, ["minute", "'-1'"]),
        ({"hour": "24"}, ["hour", "'24'", "0-23"]),
        ({"hour": "*/0"}, ["hour", "'*/0'", "step"]),
        ({"hour": "1-"}, ["hour", "'1-'"]),
        ({"minute": "5/x"}, ["minute", "'5/x'", "step 'x'"]),
        ({"minute": ""}, ["minute", "empty"]),
        ({"minute": "1,,2"}, ["minute", "'1,,2'"]),
        ({"day_of_week": "8"}, ["day_of_week", "'8'", "0-7"]),
        ({"day_of_week": "mon-fry"}, ["day_of_week", "'mon-fry'", "'fry'"]),
        ({"day_of_month": "0"}, ["day_of_month", "'0'", "1-31"]),
        ({"day_of_month": "32"}, ["day_of_month", "'32'"]),
        ({"month_of_year": "13"}, ["month_of_year", "'13'", "1-12"]),
        ({"month_of_year": "foo"}, ["month_of_year", "'foo'"]),
        ({"minute": 1.5}, ["minute", "1.5"]),
        ({"minute": True}, ["minute", "True"]),
        ({"minute": None}, ["minute", "None"]),
        ({"minute": []}, ["minute", "[]"]),
        ({"day_of_month": 31, "month_of_year": "feb,apr"}, ["day_of_month", "never run"]),
    ],
)
def test_a_malformed_field_names_the_field_and_the_value(
    fields: dict[str, Any], fragments: list[str]
) -> None:
    with pytest.raises(ValueError) as raised:
        crontab(**fields)
    for fragment in fragments:
        assert fragment in str(raised.value)


def test_a_cron_line_with_the_wrong_number_of_fields() -> None:
    with pytest.raises(ValueError, match="expected 5 fields"):
        crontab.from_string("0 2 * *")


def test_an_unknown_time_zone() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus_Mons'"):
        crontab(tz="Mars/Olympus_Mons")
    with pytest.raises(ValueError, match="unknown time zone"):
        as_schedule({"crontab": "0 2 * * *", "timezone": "Nowhere/Land"})


@pytest.mark.parametrize("run_every", [0, -1, timedelta(0), math.nan, math.inf])
def test_an_interval_must_be_positive_and_finite(run_every: Any) -> None:
    with pytest.raises(ValueError, match="run_every"):
        schedule(run_every)


@pytest.mark.parametrize("value", [None, True, [1], b"* * * * *", object()])
def test_as_schedule_refuses_what_is_not_a_schedule(value: Any) -> None:
    with pytest.raises(TypeError, match="a schedule must be"):
        as_schedule(value)


def test_a_spec_of_unknown_shape() -> None:
    with pytest.raises(ValueError, match="a schedule as data"):
        as_schedule({"cron": "* * * * *"})


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        crontab().next_after(datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="naive"):
        schedule(10).next_after(datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="naive"):
        schedule(10, anchor=datetime(2024, 1, 1))


# -- properties, against a brute-force search ---------------------------------------------

subsets = st.frozensets
minutes = subsets(st.integers(0, 59), min_size=1, max_size=6)
hours = subsets(st.integers(0, 23), min_size=1, max_size=4)
weekdays = subsets(st.integers(0, 6), min_size=1, max_size=7)
moments = st.datetimes(datetime(2020, 1, 1), datetime(2030, 1, 1)).map(
    lambda d: d.replace(tzinfo=UTC)
)


def brute_force(
    minute: frozenset[int], hour: frozenset[int], dow: frozenset[int], after: datetime
) -> datetime:
    """The first matching minute after ``after``, found by walking minute by minute."""
    t = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    while not (t.minute in minute and t.hour in hour and t.isoweekday() % 7 in dow):
        t += timedelta(minutes=1)
    return t


@settings(max_examples=60, deadline=None)
@given(minute=minutes, hour=hours, dow=weekdays, after=moments)
def test_next_after_matches_a_brute_force_search(
    minute: frozenset[int], hour: frozenset[int], dow: frozenset[int], after: datetime
) -> None:
    cron = crontab(minute=sorted(minute), hour=sorted(hour), day_of_week=sorted(dow))
    assert cron.next_after(after) == brute_force(minute, hour, dow, after)


@settings(max_examples=60, deadline=None)
@given(
    minute=minutes,
    hour=hours,
    fraction=st.floats(0, 1),
    after=st.datetimes(datetime(2024, 3, 25), datetime(2024, 11, 5)),
)
def test_in_a_zone_with_daylight_saving_runs_are_consistent(
    minute: frozenset[int], hour: frozenset[int], fraction: float, after: datetime
) -> None:
    cron = crontab(minute=sorted(minute), hour=sorted(hour), tz=BERLIN)
    start = after.replace(tzinfo=BERLIN)
    found = cron.next_after(start)
    assert found.astimezone(UTC) > start.astimezone(UTC)
    # Any moment between start and the run has that same run next.
    between = start.astimezone(UTC) + (found.astimezone(UTC) - start.astimezone(UTC)) * fraction
    if between < found:
        assert cron.next_after(between) == found
    # A run is at a matching wall-clock time, or at the end of a daylight-saving gap.
    matches = found.minute in minute and found.hour in hour
    at_gap_end = found.utcoffset() != (found - timedelta(seconds=1)).astimezone(BERLIN).utcoffset()
    assert matches or at_gap_end
