"""A busy prefork worker on a real Redis: its fetcher takes the backlog in batches and its
collector finishes jobs itself (``celeriac.worker.consumer``), within the prefetch bound, with
every child kept busy, and with a hard time limit and a revocation still honoured meanwhile;
and a child's result is written soon after its task ends, whatever the child runs next.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from conftest import StartWorker
from helpers import write_module
from redis_server import RedisServer

from celeriac import Celeriac, states

pytestmark = pytest.mark.timeout(120)

MODULE = "prefork_load"
TASKS = """
import os
import time
from celeriac import Celeriac

app = Celeriac("prefork-load", broker="{url}")


@app.task
def nap(i, seconds):
    time.sleep(seconds)
    return [i, os.getpid()]
"""
LEASED = "celeriac:{celeriac}:leased"  # the broker's set of leased messages of the queue


@pytest.fixture
def producer(redis_server: RedisServer, tmp_path: Path, no_celeriac_env: None) -> Celeriac:
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushdb()
    write_module(tmp_path, MODULE, TASKS.format(url=redis_server.url))
    return Celeriac("producer", broker=redis_server.url)


def test_a_backlog_is_drained_by_every_child_within_the_prefetch_bound(
    producer: Celeriac, redis_server: RedisServer, start_worker_process: StartWorker
) -> None:
    sent = [producer.send_task(f"{MODULE}.nap", (i, 0.02)) for i in range(200)]
    start_worker_process(MODULE, "-P", "prefork", "-c", "2", "--prefetch-multiplier", "4")

    most = 0
    with redis.Redis.from_url(redis_server.url) as client:
        while not all(result.ready() for result in sent[-5:]):
            most = max(most, int(client.zcard(LEASED)))
            time.sleep(0.005)
    values = [result.get(timeout=30) for result in sent]
    assert [i for i, _ in values] == list(range(200))
    assert len({pid for _, pid in values}) == 2
    # Fetched and not finished: at most 2 x 4, plus those finished whose write is under way.
    assert 0 < most <= 8 + 2


def test_a_hard_time_limit_and_a_revocation_are_honoured_in_a_busy_worker(
    producer: Celeriac, start_worker_process: StartWorker
) -> None:
    worker = start_worker_process(MODULE, "-P", "prefork", "-c", "2")
    busy = [producer.send_task(f"{MODULE}.nap", (i, 0.01)) for i in range(300)]
    stuck = producer.send_task(f"{MODULE}.nap", (-1, 30.0), time_limit=1.0)
    revoked = producer.send_task(f"{MODULE}.nap", (-2, 30.0))
    time.sleep(0.5)
    revoked.revoke(terminate=True)

    assert [result.get(timeout=60)[0] for result in busy] == list(range(300))
    for result, state in ((stuck, states.FAILURE), (revoked, states.REVOKED)):
        deadline = time.monotonic() + 30
        while result.state != state and time.monotonic() < deadline:
            time.sleep(0.05)
        assert result.state == state
    worker.wait_for_log("Hard time limit (1.0s) exceeded")


def test_a_result_is_written_without_waiting_for_a_slow_job_of_its_batch(
    producer: Celeriac, redis_server: RedisServer, start_worker_process: StartWorker
) -> None:
    quick = producer.send_task(f"{MODULE}.nap", (1, 0.0))
    slow = producer.send_task(f"{MODULE}.nap", (2, 3.0))
    # One child fetches both in one batch; the slow one starts as soon as the quick one ends.
    start_worker_process(MODULE, "-P", "prefork", "-c", "1", "--prefetch-multiplier", "4")

    assert quick.get(timeout=1.5)[0] == 1  # well before the slow one ends
    assert not slow.ready()
    with redis.Redis.from_url(redis_server.url) as client:
        assert client.zcard(LEASED) == 1  # the quick one's delivery is acknowledged too
    assert slow.get(timeout=30)[0] == 2
