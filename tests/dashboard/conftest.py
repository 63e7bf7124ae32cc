"""Fixtures for the dashboard tests: one worker process on a SQLite file, and its dashboard
served open (loopback, no credentials) and secured (users and tokens of both roles)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers import CELERIAC_ENV, sqlite_url

from celeriac.dashboard import Auth, create_app

from .support import Project, Served, secured_auth, start_project


@pytest.fixture(scope="package")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    """One worker (-E, prefork -c 2) on a SQLite file for the tests of this folder."""
    with pytest.MonkeyPatch.context() as patch:
        for name in CELERIAC_ENV:
            patch.delenv(name, raising=False)
        path = tmp_path_factory.mktemp("dashproj")
        project = start_project(path, sqlite_url(path / "broker.sqlite3"))
        try:
            yield project
        finally:
            project.worker.stop()
            project.app.close()


@pytest.fixture(scope="package")
def open_dashboard(project: Project) -> Iterator[Served]:
    """The project's dashboard with no credentials (loopback only, everyone an operator)."""
    served = Served(create_app(project.app, auth=Auth()))
    yield served
    served.stop()


@pytest.fixture(scope="package")
def secured_dashboard(project: Project) -> Iterator[Served]:
    """The project's dashboard with users and tokens of both roles."""
    served = Served(create_app(project.app, auth=secured_auth()))
    yield served
    served.stop()


