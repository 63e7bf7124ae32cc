"""Fixtures for the Django tests: a copy of the example project, and workers always stopped.

There is deliberately no ``__init__.py`` in this folder: with one, pytest would import this
folder as the package ``django`` and hide the real Django from the whole test session.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from example_project import ExampleProject, StartWorker, WorkerProcess


@pytest.fixture
def project(tmp_path: Path) -> ExampleProject:
    """A fresh copy of the example project (not migrated)."""
    return ExampleProject.copy_to(tmp_path)


@pytest.fixture(scope="module")
def migrated_project(tmp_path_factory: pytest.TempPathFactory) -> ExampleProject:
    """One copy per test module, migrated once: ``python manage.py migrate``."""
    copy = ExampleProject.copy_to(tmp_path_factory.mktemp("tutorial"))
    copy.manage("migrate", "--verbosity=0")
    return copy


@pytest.fixture
def start_worker() -> Iterator[StartWorker]:
    """Start real workers in a project; every one is killed at teardown, whatever happened."""
    started: list[WorkerProcess] = []

    def start(copy: ExampleProject, app: str = "proj") -> WorkerProcess:
        worker = copy.start_worker(app)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()
