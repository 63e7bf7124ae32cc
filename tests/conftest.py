"""Shared fixtures: an app on a private memory broker, and real worker processes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import CELERIAC_ENV, WorkerProcess, sqlite_url
from redis_server import RedisClusterServers, RedisServer

from celeriac import Celeriac
from celeriac.testing import WorkerThread, start_worker

StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def no_celeriac_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep CELERIAC_BROKER_URL and friends from redirecting the apps a test builds."""
    for name in CELERIAC_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def memory_url() -> str:
    """A memory broker of this test's own."""
    return f"memory://test-{uuid.uuid4().hex}"


@pytest.fixture
def app(no_celeriac_env: None, memory_url: str) -> Iterator[Celeriac]:
    """An app on a private memory broker (results in the same broker)."""
    application = Celeriac("test", broker=memory_url)
    yield application
    application.close()


@pytest.fixture(scope="module")
def _shared_worker() -> Iterator[tuple[Celeriac, WorkerThread]]:
    with pytest.MonkeyPatch.context() as patch:
        for name in CELERIAC_ENV:
            patch.delenv(name, raising=False)
        application = Celeriac(
            "shared",
            broker=f"memory://shared-{uuid.uuid4().hex}",
            accept_content=["json", "msgpack"],
            result_extended=True,
        )
        with start_worker(application, concurrency=4, queues=["celeriac", "other"]) as worker:
            yield application, worker
        application.close()


@pytest.fixture
def worker_app(_shared_worker: tuple[Celeriac, WorkerThread]) -> Iterator[Celeriac]:
    """An app on a memory broker with a worker in a thread (4 threads, queues celeriac and
    other), shared by the tests of a module: register tasks under names of the test's own.

    Starting and stopping a worker costs about a second (see the report), so tests share one.
    """
    application, worker = _shared_worker
    yield application
    worker.join()


@pytest.fixture
def worker_thread(_shared_worker: tuple[Celeriac, WorkerThread]) -> WorkerThread:
    """The worker behind ``worker_app``; ``join()`` waits until its queues are drained."""
    return _shared_worker[1]


@pytest.fixture
def start_worker_process(tmp_path: Path) -> Iterator[StartWorker]:
    """Start ``python -m celeriac -A module worker ARGS`` in tmp_path; stopped at teardown.

    ``start(module, *args, cwd=None, ready=True)`` waits for the worker's "ready." line
    unless ``ready=False``.
    """
    started: list[WorkerProcess] = []

    def start(
        module: str, *args: str, cwd: Path | None = None, ready: bool = True
    ) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started) + 1}.log"
        worker = WorkerProcess(module, args, cwd or tmp_path, log)
        started.append(worker)
        return worker.wait_ready() if ready else worker

    yield start
    for worker in started:
        worker.stop()
    for worker in started:  # pytest shows a teardown's output only when the test failed
        print(f"--- {worker.log_path.name} (last 6,000 characters) ---\n{worker.log()[-6000:]}")


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    """A ledger file outside the system under test: tasks append a line per run."""
    return tmp_path / "ledger.txt"


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for a test module's Redis tests (skipped without it, failed under CI)."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A Redis Cluster of three masters for a test module (skipped without redis-server and
    redis-cli, failed under CI): ``url`` is its ``redis+cluster://`` URL, ``flush()`` empties it."""
    with RedisClusterServers() as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", "redis"])
def engine_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh broker of each engine: a new SQLite file, or an emptied Redis database."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "broker.sqlite3")
    server: RedisServer = request.getfixturevalue("redis_server")
    import redis  # the dev extra has it; only the Redis tests need it

    with redis.Redis.from_url(server.url) as client:
        client.flushdb()
    return server.url
