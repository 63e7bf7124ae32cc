"""``celeriac result ID --follow`` against a real worker on SQLite: progress reported with
update_state(state="PROGRESS", meta={"current", "total"}) shows as plain lines (the output is
not a terminal here) until the task ends; the exit code follows the outcome; an unknown id or
a task still running when --wait runs out exits 3. The in-place bar is checked on its own."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import WorkerProcess, clean_env, run_cli, sqlite_url, wait_until, write_module

from celeriac import Celeriac
from celeriac.monitor.follow import ProgressView, progress_text

pytestmark = pytest.mark.timeout(90)

TASKS = """
    import time
    from pathlib import Path

    from celeriac import Celeriac

    app = Celeriac("folproj", broker={url!r})


    @app.task(bind=True)
    def count(self, total, gate):
        for i in range(1, total + 1):
            self.update_state(state="PROGRESS", meta={{"current": i, "total": total}})
            # Each step waits for the test to have seen the last one: no step is missed.
            while not Path(f"{{gate}}-{{i}}").exists():
                time.sleep(0.01)
        return "counted"


    @app.task(bind=True)
    def broken(self):
        self.update_state(state="PROGRESS", meta={{"current": 1, "total": 2}})
        raise RuntimeError("half way")
"""


@dataclass
class Project:
    path: Path
    url: str

    def follow(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "celeriac", "-A", "folproj", "result", "--follow", *args],
            cwd=self.path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, text=True,
        )  # fmt: skip


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    path = tmp_path_factory.mktemp("folproj")
    url = sqlite_url(path / "broker.sqlite3")
    write_module(path, "folproj", TASKS.format(url=url))
    worker = WorkerProcess("folproj", ["-c", "2"], path, path / "worker.log")
    try:
        worker.wait_ready()
        yield Project(path, url)
    finally:
        worker.stop()


@pytest.fixture
def client(project: Project, no_celeriac_env: None) -> Iterator[Celeriac]:
    app = Celeriac("client", broker=project.url)
    yield app
    app.close()


def test_follow_shows_each_step_then_the_result(
    project: Project, client: Celeriac, tmp_path: Path
) -> None:
    gate = tmp_path / "step"
    result = client.send_task("folproj.count", (3, str(gate)))
    follower = project.follow(result.id)
    assert follower.stdout is not None
    lines = []
    for step in (1, 2, 3):
        line = follower.stdout.readline().rstrip("\n")
        lines.append(line)
        Path(f"{gate}-{step}").write_text("seen")
    out, err = follower.communicate(timeout=30)
    lines += out.splitlines()
    assert follower.returncode == 0, (lines, err)
    assert lines == [
        "PROGRESS [##########--------------------]  33% 1/3",
        "PROGRESS [####################----------]  67% 2/3",
        "PROGRESS [##############################] 100% 3/3",
        "SUCCESS: 'counted'",
    ]


def test_follow_a_failure_exits_1_with_its_traceback(project: Project, client: Celeriac) -> None:
    result = client.send_task("folproj.broken")
    done = run_cli(["-A", "folproj", "result", "--follow", "--traceback", result.id], project.path)
    assert done.returncode == 1, done
    assert "FAILURE: RemoteRuntimeError('half way')\n" in done.stdout
    assert "RuntimeError: half way" in done.stdout  # the traceback
    assert re.search(r"^(PROGRESS .* 1/2\n)?FAILURE: ", done.stdout, re.M), done.stdout


def test_follow_a_finished_task_prints_it_at_once(project: Project, client: Celeriac) -> None:
    result = client.send_task("folproj.broken")
    wait_until(result.ready, 20, "the task to end")
    done = run_cli(["-A", "folproj", "result", "--follow", result.id], project.path)
    assert done.returncode == 1 and done.stdout.startswith("FAILURE: "), done


def test_follow_an_unknown_id(project: Project) -> None:
    done = run_cli(["-A", "folproj", "result", "--follow", "--wait", "0.3", "no-such-task"],
                   project.path)  # fmt: skip
    assert done.returncode == 3, done
    unknown = r"Error: nothing is stored for a task no-such-task after \d+\.\d s"
    assert re.match(unknown, done.stderr)
    assert "the id may be wrong" in done.stderr and "Traceback" not in done.stderr


def test_follow_stops_at_wait_while_the_task_runs(
    project: Project, client: Celeriac, tmp_path: Path
) -> None:
    gate = tmp_path / "never"
    result = client.send_task("folproj.count", (2, str(gate)))
    wait_until(lambda: client.AsyncResult(result.id).state == "PROGRESS", 20, "progress")
    done = run_cli(["-A", "folproj", "result", "--follow", "--wait", "0.5", result.id],
                   project.path)  # fmt: skip
    assert done.returncode == 3, done
    assert done.stdout == "PROGRESS [###############---------------]  50% 1/2\n"
    assert re.match(rf"Error: task {result.id} is still PROGRESS after \d+\.\d s", done.stderr)
    for step in (1, 2):
        Path(f"{gate}-{step}").write_text("go")
    assert result.get(timeout=20) == "counted"


def test_follow_with_bad_options(project: Project) -> None:
    done = run_cli(["-A", "folproj", "result", "--follow", "--wait", "soon", "x"], project.path)
    assert done.returncode == 2 and "expected seconds, got 'soon'" in done.stderr


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_bar_is_redrawn_in_place() -> None:
    out = Terminal()
    view = ProgressView(out)
    for meta in (
        {"status": "STARTED", "result": None},
        {"status": "PROGRESS", "result": {"current": 1, "total": 4}},
        {"status": "PROGRESS", "result": {"current": 1, "total": 4}},  # no change: no redraw
        {"status": "PROGRESS", "result": {"current": 4, "total": 4}},
        {"status": "SUCCESS", "result": 1},
    ):
        view.update(meta)
    view.close()
    text = out.getvalue()
    assert text.startswith("STARTED\n\rPROGRESS [#######")
    assert text.count("\r") == 2 and text.endswith("\n")
    assert "100% 4/4" in text


def test_progress_text() -> None:
    assert progress_text("PROGRESS", {"current": 0, "total": 0}) == "PROGRESS: " + repr(
        {"current": 0, "total": 0}
    )
    assert progress_text("PROGRESS", {"current": 7, "total": 5}).endswith("100% 7/5")
    assert progress_text("UPLOADING", {"current": 2.5, "total": 10}).endswith(" 25% 2.5/10")
    assert progress_text("STARTED", None) == "STARTED"
    assert progress_text("CUSTOM", "text") == "CUSTOM: 'text'"
