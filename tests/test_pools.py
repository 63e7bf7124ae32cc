"""Every pool runs the same task suite: sync and async tasks, retries, time limits, results.

The worker runs in a thread of the test process (its prefork children are real processes)
on a real SQLite file, so that every pool, prefork included, shares the broker and the
result store with the test.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac import Celeriac, SoftTimeLimitExceeded, states
from celeriac.errors import TaskError
from celeriac.testing import start_worker
from celeriac.worker.execute import _short, _summary

POOLS = ["prefork", "threads", "asyncio", "solo"]

pytestmark = pytest.mark.timeout(60)


def make_app(tmp_path: Path) -> Celeriac:
    """An app on its own SQLite file with the suite's tasks."""
    app = Celeriac(f"pools-{uuid.uuid4().hex[:8]}", broker=f"sqlite:///{tmp_path / 'b.sqlite3'}")

    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="async_add")
    async def async_add(x: int, y: int) -> int:
        await asyncio.sleep(0.01)
        return x + y

    @app.task(name="nap")
    async def nap(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    @app.task(name="block")
    def block(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @app.task(name="boom")
    async def boom() -> None:
        raise ValueError("async boom")

    @app.task(bind=True, name="flaky", max_retries=3)
    async def flaky(self: object, marker: str) -> int:
        request = self.request  # type: ignore[attr-defined]
        if request.retries < 2:
            raise self.retry(countdown=0.05)  # type: ignore[attr-defined]
        return int(request.retries)

    @app.task(name="slow_async", soft_time_limit=0.3)
    async def slow_async() -> str:
        await asyncio.sleep(10)
        return "too late"

    @app.task(name="slow_sync", soft_time_limit=0.3)
    def slow_sync() -> str:
        time.sleep(10)
        return "too late"

    return app


@pytest.fixture(params=POOLS)
def pool_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Celeriac]]:
    app = make_app(tmp_path)
    with start_worker(app, pool=request.param, concurrency=4):
        yield request.param, app
    app.close()


def test_sync_and_async_tasks_return_their_results(pool_app: tuple[str, Celeriac]) -> None:
    _, app = pool_app
    sync = [app.tasks["add"].delay(i, i) for i in range(20)]
    asynchronous = [app.tasks["async_add"].delay(i, 1) for i in range(20)]
    assert [r.get(timeout=20) for r in sync] == [2 * i for i in range(20)]
    assert [r.get(timeout=20) for r in asynchronous] == [i + 1 for i in range(20)]


def test_an_async_task_that_raises_is_a_failure(pool_app: tuple[str, Celeriac]) -> None:
    _, app = pool_app
    result = app.tasks["boom"].delay()
    with pytest.raises(ValueError, match="async boom"):
        result.get(timeout=20)
    assert result.state == states.FAILURE
    assert "ValueError: async boom" in (result.traceback or "")


def test_async_retries_reach_success(pool_app: tuple[str, Celeriac]) -> None:
    _, app = pool_app
    assert app.tasks["flaky"].delay("m").get(timeout=20) == 2


def test_soft_time_limits_stop_async_tasks(pool_app: tuple[str, Celeriac]) -> None:
    _, app = pool_app
    result = app.tasks["slow_async"].delay()
    with pytest.raises(TaskError) as caught:
        result.get(timeout=20)
    assert caught.value.type_name in ("SoftTimeLimitExceeded", "CancelledError")


def test_soft_time_limits_stop_sync_tasks_where_the_pool_can(
    pool_app: tuple[str, Celeriac],
) -> None:
    pool, app = pool_app
    if pool != "prefork":
        # Only a main thread can be interrupted; here the pool runs in a thread of the test
        # (a real solo worker runs tasks in its main thread: see test_worker_process.py).
        pytest.skip("a thread cannot be interrupted: soft limits apply to async tasks there")
    result = app.tasks["slow_sync"].delay()
    with pytest.raises(TaskError) as caught:
        result.get(timeout=20)
    assert caught.value.type_name == SoftTimeLimitExceeded.__name__


def test_the_asyncio_pool_runs_coroutines_concurrently(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    with start_worker(app, pool="asyncio", concurrency=10):
        started = time.monotonic()
        results = [app.tasks["nap"].delay(0.5) for _ in range(10)]
        assert [r.get(timeout=20) for r in results] == [0.5] * 10
        # Ten half-second naps one after another would take five seconds.
        assert time.monotonic() - started < 3.0
    app.close()


def test_a_sync_task_never_blocks_the_loop_of_async_ones(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    with start_worker(app, pool="asyncio", concurrency=4):
        blocking = app.tasks["block"].delay(2.0)
        time.sleep(0.2)  # let the sync task start first
        quick = app.tasks["async_add"].delay(1, 2)
        assert quick.get(timeout=20) == 3
        assert not blocking.ready()  # the async task finished while the sync one still ran
        assert blocking.get(timeout=20) == 2.0
    app.close()


@pytest.mark.parametrize(
    "value",
    [0, -3, 10**39, 10**50, 1.5, -0.0, float("inf"), True, None, "x" * 300, [1] * 100, {"k": 1}],
)
def test_a_results_summary_is_reprlibs_however_it_is_made(value: object) -> None:
    assert _summary(value) == _short.repr(value)
