"""The scheduler in this process: several at once, restarts, missed runs, stores, bad entries.

Most tests drive schedulers with explicit times (``tick(now)`` returns how long to sleep, and
``simulate`` plays that out in virtual time), so they are exact and take no real time. The
thread tests run three schedulers for real on a clock that runs ten times faster. The
multi-scheduler tests run on every engine: memory, SQLite and Redis.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from helpers import sqlite_url, wait_until

from celeriac import Celeriac
from celeriac.entries import BrokerStore, ConfigStore
from celeriac.errors import ScheduleError
from celeriac.message import decode
from celeriac.scheduler import Scheduler, scheduler_timezone
from celeriac.schedules import crontab, schedule

pytestmark = pytest.mark.timeout(60)

TASK = "beat.ping"
QUEUE = "celeriac"
T0 = 1_699_999_980.0  # a whole minute (2023-11-14 22:13 UTC)
MakeApp = Callable[..., Celeriac]
Sent = list[tuple[str, float]]


def ping(*args: Any, **kwargs: Any) -> None:
    """The task every entry sends."""


@pytest.fixture(scope="module")
def redis_server_url() -> Iterator[str]:
    from redis_server import RedisServer

    with RedisServer() as server:
        yield server.url


@pytest.fixture(params=["memory", "sqlite", "redis"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path, no_celeriac_env: None) -> str:
    if request.param == "memory":
        return f"memory://beat-{uuid.uuid4().hex}"
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "broker.sqlite3")
    url: str = request.getfixturevalue("redis_server_url")
    import redis

    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url


@pytest.fixture
def memory_broker(no_celeriac_env: None) -> str:
    return f"memory://beat-{uuid.uuid4().hex}"


@pytest.fixture
def make_app() -> Iterator[MakeApp]:
    """``make_app(url, **settings)``: an app with the task ``beat.ping``; closed at teardown."""
    made: list[Celeriac] = []

    def make(url: str, **settings: Any) -> Celeriac:
        app = Celeriac("beat-test", broker=url, set_as_current=False, **settings)
        app.task(name=TASK)(ping)
        made.append(app)
        return app

    yield make
    for app in made:
        app.close()


def schedulers_for(
    make_app: MakeApp,
    url: str,
    entries: dict[str, Any],
    count: int = 3,
    settings: dict[str, Any] | None = None,
    **options: Any,
) -> list[Scheduler]:
    """``count`` schedulers, each with an app of its own, reading ``entries`` from config."""
    made = []
    for _ in range(count):
        app = make_app(url, beat_schedule=entries, **(settings or {}))
        made.append(Scheduler(app, stores=[ConfigStore(app)], **options))
    for scheduler in made:
        scheduler.validate()
    return made


def drain(app: Celeriac) -> Sent:
    """Take every message off the queue: ``(entry name, due as epoch seconds)`` for each."""
    sent: Sent = []
    while deliveries := app.broker.fetch([QUEUE], limit=100):
        for delivery in deliveries:
            headers = decode(delivery.body).headers
            due = datetime.fromisoformat(headers["periodic_task_due"]).timestamp()
            sent.append((headers["periodic_task_name"], due))
            app.broker.ack(delivery)
    return sent


def simulate(schedulers: list[Scheduler], start: float, end: float) -> None:
    """Play the schedulers' loops in virtual time: each passes, then sleeps what it asked."""
    wakes = dict.fromkeys(range(len(schedulers)), start)
    for _ in range(100_000):
        index, now = min(wakes.items(), key=lambda item: (item[1], item[0]))
        if now > end:
            return
        wakes[index] = now + schedulers[index].tick(now)
    raise AssertionError("the schedulers never got past the end")  # pragma: no cover


def dues(sent: Sent, name: str | None = None) -> list[float]:
    return sorted(due for entry, due in sent if name is None or entry == name)


def every(start: float, stop: float, step: float = 1.0) -> list[float]:
    return [start + i * step for i in range(round((stop - start) / step) + 1)]


EVERY_SECOND = {"tick": {"task": TASK, "schedule": 1.0}}


# -- several schedulers at once -----------------------------------------------------------


def test_three_schedulers_send_each_run_once(make_app: MakeApp, broker_url: str) -> None:
    schedulers = schedulers_for(make_app, broker_url, EVERY_SECOND)
    simulate(schedulers, T0, T0 + 20.5)
    assert dues(drain(schedulers[0].app)) == every(T0 + 1, T0 + 20)


def test_when_one_of_three_dies_the_others_carry_on(make_app: MakeApp, broker_url: str) -> None:
    schedulers = schedulers_for(make_app, broker_url, EVERY_SECOND)
    simulate(schedulers, T0, T0 + 10.5)
    simulate(schedulers[1:], T0 + 10.5, T0 + 20.5)
    assert dues(drain(schedulers[0].app)) == every(T0 + 1, T0 + 20)


def test_restarting_every_scheduler_neither_repeats_nor_skips(
    make_app: MakeApp, broker_url: str
) -> None:
    first = schedulers_for(make_app, broker_url, EVERY_SECOND)
    simulate(first, T0, T0 + 10.0)  # the last run, at T0 + 10, was just sent
    second = schedulers_for(make_app, broker_url, EVERY_SECOND)
    simulate(second, T0 + 10.0, T0 + 12.5)  # restarted at once: nothing repeated
    third = schedulers_for(make_app, broker_url, EVERY_SECOND)
    simulate(third, T0 + 16.2, T0 + 20.5)  # down for 3.7 s (< grace): late, none skipped
    assert dues(drain(first[0].app)) == every(T0 + 1, T0 + 20)


def test_three_schedulers_in_threads_on_a_fast_clock(make_app: MakeApp, broker_url: str) -> None:
    """Real threads, real sleeps, a clock ten times faster: count the runs, stop one midway."""
    clock = FastClock(speed=10.0, start=math.floor(time.time()))
    schedulers = schedulers_for(make_app, broker_url, EVERY_SECOND, clock=clock)
    observer = schedulers[0].app
    started = clock.now()
    for scheduler in schedulers:
        scheduler.start()
    sent: Sent = []
    try:
        wait_until(lambda: sent.extend(drain(observer)) or len(sent) >= 10, 10, "10 runs")
        schedulers[0].stop()
        wait_until(lambda: sent.extend(drain(observer)) or len(sent) >= 20, 10, "20 runs")
    finally:
        for scheduler in schedulers:
            scheduler.stop()
    sent.extend(drain(observer))
    found = dues(sent)
    assert len(found) == len(set(found)), "a run was sent twice"
    assert found == every(found[0], found[-1]), "a run was missed"
    assert found[0] <= math.ceil(started) + 1


class FastClock:
    """A clock that runs ``speed`` times faster than real time, from ``start``."""

    def __init__(self, speed: float, start: float) -> None:
        self.speed, self.start, self.origin = speed, start, time.monotonic()

    def now(self) -> float:
        return self.start + (time.monotonic() - self.origin) * self.speed

    def sleep(self, seconds: float, stop: threading.Event) -> None:
        stop.wait(seconds / self.speed)


# -- runs missed while no scheduler was alive ---------------------------------------------


def test_missed_runs_are_sent_once_on_recovery(make_app: MakeApp, broker_url: str) -> None:
    entries = {"tick": {"task": TASK, "schedule": 1.0}}  # missed="run_once" is the default
    simulate(schedulers_for(make_app, broker_url, entries), T0, T0 + 5.5)
    recovered = schedulers_for(make_app, broker_url, entries)
    simulate(recovered, T0 + 100.0, T0 + 102.5)
    # T0 + 6 .. T0 + 100 fell due with no scheduler alive: one run (due T0 + 6) stands for all.
    assert dues(drain(recovered[0].app)) == [*every(T0 + 1, T0 + 6), T0 + 101, T0 + 102]


def test_missed_runs_are_skipped_when_the_entry_says_so(make_app: MakeApp, broker_url: str) -> None:
    entries = {"tick": {"task": TASK, "schedule": 1.0, "missed": "skip"}}
    simulate(schedulers_for(make_app, broker_url, entries), T0, T0 + 5.5)
    recovered = schedulers_for(make_app, broker_url, entries)
    simulate(recovered, T0 + 100.0, T0 + 102.5)
    assert dues(drain(recovered[0].app)) == [*every(T0 + 1, T0 + 5), T0 + 101, T0 + 102]


def test_a_daily_run_missed_overnight_is_sent_in_the_morning(
    make_app: MakeApp, memory_broker: str
) -> None:
    entries = {"nightly": {"task": TASK, "schedule": crontab(minute=0, hour=2)}}
    evening = datetime(2024, 5, 1, 22, tzinfo=UTC).timestamp()
    simulate(schedulers_for(make_app, memory_broker, entries), evening, evening + 60)
    morning = schedulers_for(make_app, memory_broker, entries)
    simulate(morning, evening + 10 * 3600, evening + 10 * 3600 + 60)
    assert dues(drain(morning[0].app)) == [datetime(2024, 5, 2, 2, tzinfo=UTC).timestamp()]


def test_a_run_a_moment_late_is_not_missed(make_app: MakeApp, memory_broker: str) -> None:
    entries = {"nightly": {"task": TASK, "schedule": crontab(minute=0, hour=2), "missed": "skip"}}
    night = datetime(2024, 5, 2, 1, 59, tzinfo=UTC).timestamp()
    (scheduler,) = schedulers_for(make_app, memory_broker, entries, count=1)
    scheduler.tick(night)
    scheduler.tick(night + 60 + 8)  # eight seconds late: within grace, so sent
    assert dues(drain(scheduler.app)) == [night + 60]


# -- time zones ---------------------------------------------------------------------------


@pytest.mark.parametrize("day", [(2024, 3, 31), (2024, 10, 27)])
def test_schedulers_follow_the_apps_time_zone_through_daylight_saving(
    make_app: MakeApp, memory_broker: str, day: tuple[int, int, int]
) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    entries = {
        "quarter": {"task": TASK, "schedule": crontab(minute="*/15")},
        "half-past-two": {"task": TASK, "schedule": crontab(minute=30, hour=2)},
    }
    schedulers = schedulers_for(
        make_app, memory_broker, entries, settings={"timezone": "Europe/Berlin"}
    )
    start = datetime(*day, 0, 55, tzinfo=berlin)
    simulate(schedulers, start.timestamp(), start.timestamp() + 4 * 3600)
    sent = drain(schedulers[0].app)
    expected, t = [], start
    while (t := crontab(minute="*/15").next_after(t)).timestamp() <= start.timestamp() + 4 * 3600:
        expected.append(t.timestamp())
    assert dues(sent, "quarter") == expected
    assert len(dues(sent, "half-past-two")) == 1  # the skipped or repeated 02:30: once


def test_scheduler_time_zone_setting(
    make_app: MakeApp, memory_broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert scheduler_timezone(make_app(memory_broker).conf) == ZoneInfo("UTC")
    berlin = make_app(memory_broker, timezone="Europe/Berlin")
    assert scheduler_timezone(berlin.conf) == ZoneInfo("Europe/Berlin")
    monkeypatch.setenv("TZ", "America/New_York")
    local = make_app(memory_broker, enable_utc=False)  # no timezone: the machine's (TZ)
    assert scheduler_timezone(local.conf) == ZoneInfo("America/New_York")


# -- what a sent run carries --------------------------------------------------------------


def test_a_sent_run_carries_its_entry_and_options(make_app: MakeApp, memory_broker: str) -> None:
    entries = {"report": {
        "task": TASK, "schedule": 60, "args": (1, "two"), "kwargs": {"three": 3},
        "options": {"queue": "reports", "priority": 7, "headers": {"team": "ops"}},
    }}  # fmt: skip
    (scheduler,) = schedulers_for(make_app, memory_broker, entries, count=1)
    scheduler.tick(T0)
    scheduler.tick(T0 + 60)
    (delivery,) = scheduler.app.broker.fetch(["reports"])
    message = decode(delivery.body)
    assert (message.task, message.args, message.kwargs) == (TASK, (1, "two"), {"three": 3})
    assert message.priority == 7
    assert message.headers == {
        "team": "ops",
        "periodic_task_name": "report",
        "periodic_task_due": datetime.fromtimestamp(T0 + 60, UTC).isoformat(),
    }


def test_a_run_that_cannot_be_sent_is_given_back(
    make_app: MakeApp, memory_broker: str, caplog: pytest.LogCaptureFixture
) -> None:
    entries = {
        "bad-queue": {"task": TASK, "schedule": 10, "options": {"queue": "no spaces!"}},
        "fine": {"task": TASK, "schedule": 10},
    }
    (scheduler,) = schedulers_for(make_app, memory_broker, entries, count=1)
    scheduler.tick(T0)
    with caplog.at_level(logging.ERROR, "celeriac.beat"):
        scheduler.tick(T0 + 10)
    assert "entry bad-queue failed" in caplog.text
    assert dues(drain(scheduler.app)) == [T0 + 10]  # the other entry went out
    # The claim was released, so a scheduler may still send that run.
    assert scheduler.app.broker.incr(f"celeriac-beat:claim:bad-queue:{int(T0 + 10) * 1000}") == 1


# -- stores -------------------------------------------------------------------------------


def test_broker_store_changes_are_picked_up_without_a_restart(
    make_app: MakeApp, broker_url: str
) -> None:
    schedulers = [Scheduler(make_app(broker_url)) for _ in range(2)]  # config + broker stores
    store = BrokerStore(make_app(broker_url))
    assert schedulers[0].tick(T0) <= store.refresh_interval  # so a change is seen within 5 s
    store.set("poll", TASK, 2, kwargs={"n": 1})
    simulate(schedulers, T0 + 1, T0 + 6.5)  # added: runs at T0 + 2, 4, 6
    store.set("poll", TASK, crontab(minute="*"))  # changed: every minute from now on
    simulate(schedulers, T0 + 7, T0 + 130.5)  # runs at T0 + 60 and T0 + 120, nothing owed
    assert store.remove("poll") is True
    simulate(schedulers, T0 + 131, T0 + 250)  # removed: no more runs
    assert store.remove("poll") is False
    assert dues(drain(schedulers[0].app)) == [T0 + 2, T0 + 4, T0 + 6, T0 + 60, T0 + 120]


def test_a_broker_entry_replaces_a_config_entry_of_that_name(
    make_app: MakeApp, memory_broker: str
) -> None:
    app = make_app(memory_broker, beat_schedule={"tick": {"task": TASK, "schedule": 10}})
    BrokerStore(app).set("tick", TASK, 30)
    (entry,) = Scheduler(app).validate().values()
    assert entry.schedule == schedule(30)


def test_a_bad_entry_added_while_running_is_logged_and_skipped(
    make_app: MakeApp, memory_broker: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(memory_broker, beat_schedule=EVERY_SECOND)
    scheduler = Scheduler(app)
    scheduler.tick(T0)
    BrokerStore(app).set("typo", "beat.pnig", 5)  # a task this app does not have
    with caplog.at_level(logging.ERROR, "celeriac.beat"):
        simulate([scheduler], T0 + 0.5, T0 + 3.5)
    assert caplog.text.count("task 'beat.pnig' is not registered; did you mean 'beat.ping'") == 1
    assert dues(drain(app)) == [T0 + 1, T0 + 2, T0 + 3]


def test_broker_store_refuses_what_it_cannot_keep(make_app: MakeApp, memory_broker: str) -> None:
    store = BrokerStore(make_app(memory_broker))
    with pytest.raises(ScheduleError, match="beat entry 'x': crontab hour='25'"):
        store.set("x", TASK, "0 25 * * *")
    with pytest.raises(ScheduleError, match="beat entry 'y': cannot store it as JSON"):
        store.set("y", TASK, 10, args=[object()])
    assert store.entries() == {}


# -- add_periodic_task and on_after_configure ---------------------------------------------


def test_add_periodic_task_from_on_after_configure(make_app: MakeApp, memory_broker: str) -> None:
    app = make_app(memory_broker)

    @app.on_after_configure.connect
    def setup_periodic_tasks(sender: Celeriac, **kwargs: Any) -> None:
        sender.add_periodic_task(10.0, sender.tasks[TASK], args=(1, 2), name="add every 10")
        sender.add_periodic_task(crontab(minute="*/5"), TASK, kwargs={"x": 1}, queue="slow")
        sender.add_periodic_task(60, {"task": TASK, "args": [3]}, missed="skip")

    entries = Scheduler(app).validate()
    assert sorted(entries) == ["add every 10", "beat.ping(3)", "beat.ping(x=1)"]
    assert entries["add every 10"].args == (1, 2)
    assert entries["beat.ping(x=1)"].options == {"queue": "slow"}
    assert entries["beat.ping(3)"].missed == "skip"


def test_add_periodic_task_checks_its_arguments(make_app: MakeApp, memory_broker: str) -> None:
    app = make_app(memory_broker)
    with pytest.raises(ScheduleError, match="beat entry 'bad': crontab minute='99'"):
        app.add_periodic_task("99 * * * *", TASK, name="bad")
    with pytest.raises(TypeError, match="needs a task, a task name or a signature"):
        app.add_periodic_task(10, 42)


# -- bad entries at start-up --------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "fragments"),
    [
        ({"task": TASK, "schedule": "61 * * * *"}, ["crontab minute='61'", "out of range"]),
        (
            {"task": TASK, "schedule": {"crontab": "0 2 * * *", "timezone": "Mars/Olympus"}},
            ["unknown time zone 'Mars/Olympus'"],
        ),
        (
            {"task": "beat.pong", "schedule": 10},
            ["task 'beat.pong' is not registered", "did you mean 'beat.ping'"],
        ),
        ({"task": TASK, "schedule": 0.5}, ["every 0.5 s", "resolution of 1 s"]),
        ({"task": TASK, "schedule": timedelta(milliseconds=10)}, ["every 0.01 s"]),
        ({"task": TASK, "schedule": 10, "missed": "twice"}, ["'missed' must be one of"]),
        ({"task": TASK, "schedule": 10, "options": {"quue": "x"}}, ["unknown option(s) 'quue'"]),
        ({"task": TASK, "schedule": 10, "args": "abc"}, ["'args' must be a list or tuple"]),
        ({"task": TASK, "schedule": 10, "relative": True}, ["unknown key(s) 'relative'"]),
        ({"task": TASK, "schedule": [1]}, ["a schedule must be"]),
    ],
)
def test_a_bad_entry_is_an_error_at_start_up_naming_the_entry(
    make_app: MakeApp, memory_broker: str, entry: dict[str, Any], fragments: list[str]
) -> None:
    app = make_app(
        memory_broker, beat_schedule={"good": {"task": TASK, "schedule": 5}, "the-bad-one": entry}
    )
    with pytest.raises(ScheduleError) as raised:
        Scheduler(app).validate()
    message = str(raised.value)
    assert message.startswith("beat entry 'the-bad-one': ")
    for fragment in fragments:
        assert fragment in message
    assert "'good'" not in message


def test_every_bad_entry_is_reported_at_once(make_app: MakeApp, memory_broker: str) -> None:
    app = make_app(memory_broker, beat_schedule={
        "one": {"task": "nope.one", "schedule": 5},
        "two": {"task": TASK, "schedule": "* * *"},
    })  # fmt: skip
    with pytest.raises(ScheduleError, match=r"beat entry 'one'.*; beat entry 'two'"):
        Scheduler(app).validate()


def test_a_finer_resolution_allows_shorter_schedules(make_app: MakeApp, memory_broker: str) -> None:
    app = make_app(memory_broker, beat_schedule={"fast": {"task": TASK, "schedule": 0.5}})
    assert list(Scheduler(app, resolution=0.1).validate()) == ["fast"]
