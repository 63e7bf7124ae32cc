"""Rate limits, concurrency limits and unique tasks on the memory broker, with a worker in a
thread: the options and their errors, the worker's admission, ``control rate_limit``; also
the ``task_unknown`` signal and ``GroupResult.revoke``. Real worker processes on SQLite and
Redis: ``test_limits_process.py``; the broker primitives: ``transports/test_limits.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import wait_until

from celeriac import Celeriac, GroupResult, TaskError, shared_task, signals, states
from celeriac.errors import (
    ConcurrencyKeyError,
    ConfigurationError,
    LimitError,
    TaskRevokedError,
)
from celeriac.limits import RATE_LIMIT_KEY, parse_rate
from celeriac.task import Task
from celeriac.testing import WorkerThread, start_worker


@pytest.fixture
def worker(app: Celeriac) -> Iterator[WorkerThread]:
    with start_worker(app, concurrency=4) as thread:
        yield thread


def starts_per_second(times: list[float]) -> float:
    times = sorted(times)
    return (len(times) - 1) / (times[-1] - times[0])


# -- the options, checked where they are written ----------------------------------------------


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("10/s", 10.0), ("10", 10.0), ("120/m", 2.0), ("7200/h", 2.0), (" 1.5 / s ", 1.5),
     (4, 4.0), (0.5, 0.5), ("0", None), (0, None), (None, None)],
)  # fmt: skip
def test_rates_in_celery_forms(text: Any, per_second: float | None) -> None:
    assert parse_rate(text) == per_second


@pytest.mark.parametrize("bad", ["10/d", "ten/s", "/s", "-1/s", "10/s/s", "", -1, True, [10]])
def test_a_bad_rate_limit_fails_at_decoration(app: Celeriac, bad: Any) -> None:
    with pytest.raises(LimitError, match=r"bad rate limit .* expected a rate such as '10/s'"):

        @app.task(rate_limit=bad)
        def limited() -> None: ...

    assert not [name for name in app.tasks if name.endswith("limited")]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rate_limit": "1/s", "rate_limit_scope": "host"}, "bad rate_limit_scope 'host'"),
        ({"concurrency_key": lambda x: x}, "concurrency_key needs concurrency_limit"),
        ({"concurrency_key": "customer_id", "concurrency_limit": 2}, "must be a function"),
        ({"concurrency_limit": 0}, "at least 1, not 0"),
        ({"concurrency_limit": 1.5}, "at least 1, not 1.5"),
    ],
)
def test_bad_limit_options_fail_at_decoration(
    app: Celeriac, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(LimitError, match=message):
        app.task(name="t.bad", **options)(lambda x: x)


def test_a_bad_rate_on_a_base_class_or_a_shared_task_fails_at_decoration(app: Celeriac) -> None:
    class Throttled(Task[Any, Any]):
        rate_limit = "fast"

    with pytest.raises(LimitError, match=r"bad rate limit 'fast'.* for t.based"):
        app.task(name="t.based", base=Throttled)(lambda: None)
    with pytest.raises(LimitError, match="bad rate limit '5/week'"):
        shared_task(name="t.shared_bad", rate_limit="5/week")(lambda: None)


def test_a_bad_default_rate_limit_fails_where_it_is_set(app: Celeriac) -> None:
    with pytest.raises(ConfigurationError, match="task_default_rate_limit"):
        app.conf.task_default_rate_limit = "10/d"
    with pytest.raises(ConfigurationError, match="task_default_rate_limit_scope"):
        app.conf.task_default_rate_limit_scope = "planet"


# -- rate limits --------------------------------------------------------------------------------


def test_a_rate_limit_spaces_the_starts(app: Celeriac, worker: WorkerThread) -> None:
    starts: list[float] = []

    @app.task(rate_limit="25/s")
    def stamp(i: int) -> int:
        starts.append(time.time())
        return i

    results = [stamp.delay(i) for i in range(20)]
    assert [r.get(timeout=10) for r in results] == list(range(20))
    assert 25 * 0.8 < starts_per_second(starts) < 25 * 1.05


def test_the_default_rate_limit_applies_to_tasks_that_set_none(app: Celeriac) -> None:
    app.conf.task_default_rate_limit = "20/s"
    starts: list[float] = []

    @app.task
    def stamp() -> None:
        starts.append(time.time())

    with start_worker(app, concurrency=4) as thread:
        for _ in range(12):
            stamp.delay()
        thread.join()
    assert 20 * 0.8 < starts_per_second(starts) < 20 * 1.05


def test_held_back_work_waits_in_the_broker_not_in_the_worker(
    app: Celeriac, worker: WorkerThread
) -> None:
    @app.task(rate_limit="2/s")
    def slow_rate(i: int) -> int:
        return i

    results = [slow_rate.delay(i) for i in range(5)]
    results[0].get(timeout=5)
    wait_until(lambda: not worker.consumer.inflight, 5, "the worker to hold nothing")
    assert app.broker.size("celeriac") == 4  # the rest: delayed in the broker, turns reserved
    assert [r.get(timeout=10) for r in results] == list(range(5))
    assert app.broker.dead_letters() == []  # no delivery was counted against them


# -- concurrency limits ----------------------------------------------------------------------


def test_a_concurrency_limit_holds_per_key(app: Celeriac, worker: WorkerThread) -> None:
    running: dict[str, int] = {}
    peak: dict[str, int] = {}
    lock = threading.Lock()

    @app.task(concurrency_key=lambda customer_id, **_: customer_id, concurrency_limit=2)
    def visit(customer_id: str, seconds: float = 0.05) -> str:
        with lock:
            running[customer_id] = running.get(customer_id, 0) + 1
            peak[customer_id] = max(peak.get(customer_id, 0), running[customer_id])
        time.sleep(seconds)
        with lock:
            running[customer_id] -= 1
        return customer_id

    results = [visit.delay("acme") for _ in range(8)] + [visit.delay(customer_id=7)]
    assert [r.get(timeout=10) for r in results][-2:] == ["acme", 7]
    assert peak == {"acme": 2, 7: 1}


def test_a_failed_or_revoked_task_gives_its_slot_back(app: Celeriac, worker: WorkerThread) -> None:
    @app.task(concurrency_limit=1)
    def single(fail: bool) -> str:
        if fail:
            raise ValueError("no")
        return "ok"

    failing = [single.delay(True) for _ in range(3)]
    for result in failing:
        with pytest.raises(ValueError):
            result.get(timeout=5)
    assert single.delay(False).get(timeout=5) == "ok"


def test_a_concurrency_key_that_raises_fails_at_the_call(app: Celeriac) -> None:
    @app.task(concurrency_key=lambda customer: customer["id"], concurrency_limit=1)
    def keyed(customer: dict[str, Any]) -> None: ...

    with pytest.raises(ConcurrencyKeyError, match=r"concurrency_key of .*keyed raised KeyError"):
        keyed.delay({"name": "no id"})

    @app.task(concurrency_key=lambda customer: customer, concurrency_limit=1)
    def unkeyable(customer: Any) -> None: ...

    with pytest.raises(ConcurrencyKeyError, match="must return a str, an int or None, not list"):
        unkeyable.delay([1, 2])
    assert app.broker.size("celeriac") == 0


def test_a_concurrency_key_that_raises_on_the_worker_fails_that_task_only(
    app: Celeriac, worker: WorkerThread
) -> None:
    @app.task(name="t.keyed", concurrency_key=lambda n: 10 // n, concurrency_limit=1)
    def keyed(n: int) -> int:
        return n

    bad = app.send_task("t.keyed", (0,))  # by name: the call is not checked here
    good = app.send_task("t.keyed", (5,))
    with pytest.raises(TaskError, match="ZeroDivisionError") as caught:
        bad.get(timeout=5)
    assert caught.value.type_name == "ConcurrencyKeyError"
    assert good.get(timeout=5) == 5
    [letter] = app.broker.dead_letters()
    assert letter.reason == "concurrency_key_failed"


# -- unique tasks -------------------------------------------------------------------------------


def test_unique_needs_a_task_id(app: Celeriac) -> None:
    @app.task
    def job() -> None: ...

    with pytest.raises(LimitError, match="unique=True needs an explicit task_id"):
        job.apply_async(unique=True)
    app.conf.task_always_eager = True
    with pytest.raises(LimitError, match="needs an explicit task_id"):
        job.apply_async(unique=True)
    app.conf.task_always_eager = False
    with pytest.raises(LimitError, match="send_many does not publish unique tasks"):
        app.send_many([(job, (), {}, {"task_id": "x", "unique": True})])
    assert app.broker.size("celeriac") == 0


def test_a_unique_task_is_published_once(app: Celeriac) -> None:
    @app.task
    def job(i: int) -> int:
        return i

    first = job.apply_async((1,), task_id="nightly", unique=True)
    second = job.apply_async((2,), task_id="nightly", unique=True)
    assert second == first and second.id == "nightly"
    other = job.apply_async((3,), task_id="weekly", unique=True)
    assert app.broker.size("celeriac") == 2
    with start_worker(app) as thread:
        assert first.get(timeout=5) == 1 and other.get(timeout=5) == 3
        thread.join()
    assert job.apply_async((4,), task_id="nightly", unique=True).id == "nightly"
    assert app.broker.size("celeriac") == 1  # the first finished: queued again


# -- control rate_limit -------------------------------------------------------------------------


def test_control_rate_limit_stores_a_cluster_wide_limit(app: Celeriac) -> None:
    with pytest.raises(LimitError, match="bad rate limit '3/d'"):
        app.control.rate_limit("t.any", "3/d")
    assert app.broker.get(RATE_LIMIT_KEY + "t.any") is None
    app.control.rate_limit("t.any", "3/m")
    assert app.broker.get(RATE_LIMIT_KEY + "t.any") == b"3/m"
    app.control.rate_limit("t.any", None)
    assert app.broker.get(RATE_LIMIT_KEY + "t.any") is None


def test_control_rate_limit_for_named_workers(app: Celeriac, worker: WorkerThread) -> None:
    @app.task(name="t.shared_limit", rate_limit="1/s")
    def shared_limit() -> None: ...

    @app.task(name="t.own_limit", rate_limit="1/s", rate_limit_scope="worker")
    def own_limit() -> None: ...

    host = worker.consumer.hostname
    [reply] = app.control.rate_limit("t.shared_limit", "5/s", destination=host, reply=True) or []
    assert "rate-limited across the cluster" in reply[host]["error"]
    [reply] = app.control.rate_limit("t.own_limit", "0", destination=host, reply=True) or []
    assert reply[host] == {"ok": "rate limit of t.own_limit disabled successfully (this worker)"}
    assert worker.consumer.limits.local == {"t.own_limit": None}
    started = time.monotonic()
    for _ in range(10):
        own_limit.delay()
    worker.join()
    assert time.monotonic() - started < 3  # 10 at 1/s would take 9 s
    [reply] = app.control.rate_limit("t.nope", "1/s", destination=host, reply=True) or []
    assert "unknown task 't.nope'" in reply[host]["error"]


# -- task_unknown, GroupResult.revoke ------------------------------------------------------------


def test_task_unknown_is_sent_for_a_message_no_task_answers(
    app: Celeriac, worker: WorkerThread
) -> None:
    seen: list[dict[str, Any]] = []

    def note(sender: Any, **named: Any) -> None:
        seen.append(named)

    signals.task_unknown.connect(note)
    try:
        result = app.send_task("no.such.task", (1,))
        wait_until(lambda: seen, 5, "task_unknown")
    finally:
        signals.task_unknown.disconnect(note)
    [named] = seen
    assert named["name"] == "no.such.task" and named["id"] == result.id
    assert named["message"].args == (1,) and "no.such.task" in str(named["exc"])
    assert app.broker.dead_letters()[0].reason == "unknown_task"


def test_group_result_revoke_revokes_every_member(app: Celeriac) -> None:
    ran: list[int] = []

    @app.task
    def note(i: int) -> None:
        ran.append(i)

    members = [note.apply_async((i,), countdown=0.3) for i in range(3)]
    group_result = GroupResult("g-1", members, app)
    group_result.revoke()
    assert all(app.control.is_revoked(member.id) for member in members)
    GroupResult("empty", [], app).revoke()  # nothing to revoke: no error
    with start_worker(app) as thread:
        for member in members:
            with pytest.raises(TaskRevokedError):
                member.get(timeout=5)
        thread.join()
    assert ran == [] and {member.state for member in members} == {states.REVOKED}
