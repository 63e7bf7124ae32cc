"""A real worker on a real redis-server that restarts under it.

With ``appendonly yes`` / ``appendfsync always`` nothing acknowledged is lost and the worker
resumes by itself; without persistence the worker warns at start and reports a Redis that
came back empty instead of carrying on silently.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import StartWorker
from helpers import wait_until, write_module
from redis_server import RedisServer

from celeriac import Celeriac

pytestmark = pytest.mark.timeout(120)

MODULE = "redis_tasks"
TASKS = """
import time
from celeriac import Celeriac

app = Celeriac("redis-worker", broker="{url}", broker_transport_options={{"lease_timeout": 1.0}})


@app.task
def slow_add(x, y):
    time.sleep(0.02)
    return x + y
"""


def start_server(**options: object) -> RedisServer:
    return RedisServer(**options).start()  # type: ignore[arg-type]


@pytest.fixture
def durable_redis() -> Iterator[RedisServer]:
    server = start_server(appendonly=True)
    yield server
    server.stop()
    server.cleanup()


@pytest.fixture
def plain_redis() -> Iterator[RedisServer]:
    server = start_server()
    yield server
    server.stop()
    server.cleanup()


def producer_for(server: RedisServer, tmp_path: Path, no_celeriac_env: None) -> Celeriac:
    write_module(tmp_path, MODULE, TASKS.format(url=server.url))
    return Celeriac("producer", broker=server.url)


def test_a_redis_restart_loses_nothing_and_the_worker_resumes(
    durable_redis: RedisServer,
    tmp_path: Path,
    no_celeriac_env: None,
    start_worker_process: StartWorker,
) -> None:
    producer = producer_for(durable_redis, tmp_path, no_celeriac_env)
    worker = start_worker_process(MODULE, "-P", "threads", "-c", "4")
    first = [producer.send_task(f"{MODULE}.slow_add", (i, i)) for i in range(200)]
    wait_until(lambda: sum(r.ready() for r in first) >= 20, 30, "some results before restart")
    durable_redis.restart()
    later = [producer.send_task(f"{MODULE}.slow_add", (i, 1)) for i in range(50)]
    assert [r.get(timeout=60) for r in first] == [2 * i for i in range(200)]
    assert [r.get(timeout=60) for r in later] == [i + 1 for i in range(50)]
    assert worker.process.poll() is None  # it resumed by itself
    assert producer.broker.size("celeriac") == 0
    assert "lost its state" not in worker.log()


def test_a_redis_that_comes_back_empty_is_reported(
    plain_redis: RedisServer,
    tmp_path: Path,
    no_celeriac_env: None,
    start_worker_process: StartWorker,
) -> None:
    producer = producer_for(plain_redis, tmp_path, no_celeriac_env)
    worker = start_worker_process(MODULE, "-P", "threads")
    assert "has appendonly off" in worker.log()
    assert producer.send_task(f"{MODULE}.slow_add", (1, 2)).get(timeout=20) == 3
    plain_redis.restart()  # no persistence: it comes back with nothing
    worker.wait_for_log("lost its state", timeout=20)
    assert producer.send_task(f"{MODULE}.slow_add", (2, 2)).get(timeout=30) == 4


def test_an_evicting_redis_is_warned_about(
    tmp_path: Path, no_celeriac_env: None, start_worker_process: StartWorker
) -> None:
    server = RedisServer(args=("--maxmemory-policy", "allkeys-lru")).start()
    try:
        producer_for(server, tmp_path, no_celeriac_env)
        worker = start_worker_process(MODULE, "-P", "solo")
        assert "evicts keys (maxmemory-policy allkeys-lru)" in worker.log()
    finally:
        server.stop()
        server.cleanup()
