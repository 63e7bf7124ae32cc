"""``celeriac dashboard`` as a real process: it serves, it refuses to listen beyond loopback
without credentials, it hashes passwords, and a missing extra says what to install."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import clean_env, run_cli, wait_until
from redis_server import free_port

from celeriac.dashboard import verify_password

from .support import Project

pytestmark = pytest.mark.timeout(60)


class DashboardProcess:
    """``python -m celeriac -A dashproj dashboard ARGS`` in the project's folder."""

    def __init__(self, project: Project, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        command = [sys.executable, "-m", "celeriac", "-A", "dashproj", "dashboard",
                   "--port", str(self.port), *args]  # fmt: skip
        self.process = subprocess.Popen(
            command, cwd=project.path, env=clean_env(**(env or {})), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        self.banner = self.process.stdout.readline() if self.process.stdout else ""

    def get(self, path: str, **options: object) -> httpx.Response:
        url = f"http://127.0.0.1:{self.port}{path}"
        return wait_until(lambda: _get(url, options), 15, f"{url} to answer")

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(10)


def _get(url: str, options: dict[str, object]) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5, **options)  # type: ignore[arg-type]
    except httpx.TransportError:
        return None


@pytest.fixture
def started(project: Project) -> Iterator[list[DashboardProcess]]:
    processes: list[DashboardProcess] = []
    yield processes
    for process in processes:
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait()


def test_serves_on_loopback_without_credentials(
    project: Project, started: list[DashboardProcess]
) -> None:
    dashboard = DashboardProcess(project)
    started.append(dashboard)
    assert f"http://127.0.0.1:{dashboard.port}/" in dashboard.banner
    assert "open to this machine only" in dashboard.banner
    page = dashboard.get("/")
    assert page.status_code == 200 and "Overview" in page.text
    assert dashboard.stop() == 0


def test_with_a_token_it_may_listen_everywhere(
    project: Project, started: list[DashboardProcess]
) -> None:
    token = "a-long-random-token-for-the-test"
    dashboard = DashboardProcess(project, "--address", "0.0.0.0", "--root-path", "/dash",
                                 env={"CELERIAC_DASHBOARD_TOKEN": token})  # fmt: skip
    started.append(dashboard)
    assert "sign-in required (1 token(s), 0 user(s))" in dashboard.banner
    assert dashboard.get("/api/overview").status_code == 401
    answer = dashboard.get("/api/overview", headers={"authorization": f"Bearer {token}"})
    assert answer.status_code == 200 and "workers_online" in answer.json()
    page = dashboard.get("/", headers={"authorization": f"Bearer {token}"}).text
    assert 'src="/dash/static/dashboard.js"' in page


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "192.0.2.1", "example.com"])
def test_refuses_to_listen_beyond_loopback_without_credentials(
    project: Project, address: str
) -> None:
    done = run_cli(["-A", "dashproj", "dashboard", "--address", address], project.path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert f"refusing to serve the dashboard on {address} without credentials" in done.stderr
    assert "CELERIAC_DASHBOARD_TOKEN" in done.stderr and "Traceback" not in done.stderr


def test_bad_credentials_in_the_environment_are_a_usage_error(project: Project) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "celeriac", "-A", "dashproj", "dashboard"], cwd=project.path,
        env=clean_env(CELERIAC_DASHBOARD_USERS="ann:operator:plain"), capture_output=True,
        text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert "dashboard credentials: a password hash looks like" in done.stderr


def test_hash_password_reads_stdin(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "celeriac", "dashboard", "--hash-password"],
                          input="s3cret\n", capture_output=True, text=True, cwd=tmp_path,
                          env=clean_env(), timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert verify_password("s3cret", done.stdout.strip())


def test_a_missing_extra_names_what_to_install(project: Project) -> None:
    code = ("import sys; sys.modules['starlette'] = None; from celeriac.cli import main; "
            "sys.exit(main(['-A', 'dashproj', 'dashboard']))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], cwd=project.path, capture_output=True,
                          text=True, env=clean_env(), timeout=30)  # fmt: skip
    assert done.returncode == 1
    assert "pip install 'celeriac[dashboard]'" in done.stderr
    assert "Traceback" not in done.stderr
    assert os.path.exists(project.path / "dashproj.py")
