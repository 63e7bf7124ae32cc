"""Shared fixtures: an app on a private memory broker, and real worker processes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import CELERIAC_ENV, WorkerProcess

from celeriac import Celeriac

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
