"""Prometheus metrics: a real prefork worker with ``--metrics-port`` on SQLite and on Redis, its
endpoint scraped over HTTP after it ran tasks; ``render`` for the dashboard; and bad input (a
port out of range or taken, the extra not installed)."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import WorkerProcess, clean_env, run_cli, sqlite_url, wait_until, write_module
from prometheus_client.parser import text_string_to_metric_families

from celeriac import Celeriac
from celeriac.metrics import CONTENT_TYPE, render

pytestmark = pytest.mark.timeout(90)

TASKS = """
    import os
    import time
    from pathlib import Path

    from celeriac import Celeriac

    app = Celeriac("metproj", broker={url!r},
                   broker_transport_options={{"lease_timeout": 0.6, "max_deliveries": 2}})


    @app.task
    def add(x, y):
        return x + y


    @app.task
    def fail():
        raise ValueError("no")


    @app.task
    def slow(seconds):
        time.sleep(seconds)  # longer than a lease: renewed meanwhile
        return "slept"


    @app.task
    def hold(started, release):
        Path(started).write_text("started")
        while not Path(release).exists():
            time.sleep(0.01)
        return "released"


    @app.task
    def crash():
        os._exit(1)
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Project:
    path: Path
    url: str
    worker: WorkerProcess
    port: int

    def scrape(self) -> Samples:
        return scrape(f"http://127.0.0.1:{self.port}/metrics")


def scrape(url: str) -> Samples:
    """Every sample of the endpoint: (name, labels) -> value; checks the content type."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"] == CONTENT_TYPE
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def project(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Project]:
    """A prefork worker (-c 2) serving metrics on a free port, on each engine."""
    path = tmp_path_factory.mktemp(f"metproj-{request.param}")
    if request.param == "sqlite":
        url = sqlite_url(path / "broker.sqlite3")
    else:
        url = request.getfixturevalue("redis_server").url
    write_module(path, "metproj", TASKS.format(url=url))
    worker = WorkerProcess("metproj", ["-c", "2", "--metrics-port", "0"], path, path / "w.log")
    try:
        log = worker.wait_ready()
        found = re.search(r"Prometheus metrics at http://0\.0\.0\.0:(\d+)/metrics", log.log())
        assert found, log.log()
        yield Project(path, url, worker, int(found.group(1)))
    finally:
        worker.stop()


@pytest.fixture
def client(project: Project, no_celeriac_env: None) -> Iterator[Celeriac]:
    app = Celeriac("client", broker=project.url)
    yield app
    app.close()


def test_a_fresh_worker_reports_itself_and_the_broker(project: Project) -> None:
    samples = project.scrape()
    host = next(dict(labels)["worker"] for name, labels in samples if name == "celeriac_worker_up")
    assert value(samples, "celeriac_worker_up", worker=host) == 1
    assert value(samples, "celeriac_worker_slots", worker=host) == 2
    assert value(samples, "celeriac_broker_up") == 1
    assert ("celeriac_queue_messages", frozenset({("queue", "celeriac")})) in samples
    assert value(samples, "process_resident_memory_bytes") > 0


def test_counts_after_running_tasks(project: Project, client: Celeriac, tmp_path: Path) -> None:
    before = project.scrape()
    for result in [client.send_task("metproj.add", (i, i)) for i in range(3)]:
        assert result.get(timeout=20) in (0, 2, 4)
    failing = client.send_task("metproj.fail")
    assert isinstance(failing.get(timeout=20, propagate=False), Exception)
    assert client.send_task("metproj.slow", (0.8,)).get(timeout=20) == "slept"
    crashing = client.send_task("metproj.crash")  # dies twice: dead-lettered (max_deliveries 2)
    wait_until(lambda: client.broker.dead_letter_count() == 1, 30, "the crash dead-lettered")
    delayed = [client.send_task("metproj.add", (1, 1), countdown=300) for _ in range(3)]

    after = project.scrape()

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("celeriac_tasks_total", task="metproj.add", state="SUCCESS") == 3
    assert grew("celeriac_tasks_total", task="metproj.add", state="RECEIVED") == 3
    assert grew("celeriac_tasks_total", task="metproj.fail", state="FAILURE") == 1
    assert grew("celeriac_tasks_total", task="metproj.crash", state="RECEIVED") == 2
    assert grew("celeriac_tasks_total", task="metproj.crash", state="LOST") == 2
    assert grew("celeriac_task_redeliveries_total", task="metproj.crash") == 1
    assert grew("celeriac_task_runtime_seconds_count", task="metproj.add") == 3
    assert grew("celeriac_task_runtime_seconds_count", task="metproj.fail") == 1
    assert grew("celeriac_task_runtime_seconds_sum", task="metproj.slow") >= 0.8
    assert grew("celeriac_task_runtime_seconds_bucket", task="metproj.slow", le="0.5") == 0
    assert grew("celeriac_task_runtime_seconds_bucket", task="metproj.slow", le="1.0") == 1
    assert grew("celeriac_lease_renewals_total") >= 2  # 0.8 s under a 0.6 s lease
    assert value(after, "celeriac_leases_lost_total") == 0
    assert value(after, "celeriac_queue_messages", queue="celeriac") == 3
    assert value(after, "celeriac_dead_letters") == 1
    assert crashing.id and delayed
    client.broker.purge("celeriac")
    client.broker.purge_dead_letters()


def test_busy_slots_while_a_task_runs(project: Project, client: Celeriac, tmp_path: Path) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    result = client.send_task("metproj.hold", (str(started), str(release)))
    wait_until(started.exists, 20, "the task to start")
    samples = project.scrape()
    assert [v for (name, _), v in samples.items() if name == "celeriac_worker_busy_slots"] == [1]
    release.write_text("go")
    assert result.get(timeout=20) == "released"
    samples = project.scrape()
    assert [v for (name, _), v in samples.items() if name == "celeriac_worker_busy_slots"] == [0]


def listening_inode(port: int) -> str:
    """The socket inode listening on ``port`` (from /proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":  # LISTEN
            return fields[9]
    raise AssertionError(f"nothing listens on port {port}")


def socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                found.add(target[8:-1])
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc (Linux)")
def test_pool_processes_do_not_hold_the_metrics_port(project: Project) -> None:
    inode = listening_inode(project.port)
    worker = project.worker.pid
    children = [
        int(pid) for task in Path(f"/proc/{worker}/task").iterdir()
        for pid in (task / "children").read_text().split()
    ]  # fmt: skip
    assert len(children) == 2
    assert inode in socket_inodes(worker)
    assert all(inode not in socket_inodes(child) for child in children)


def test_render_for_the_dashboard(no_celeriac_env: None, memory_url: str) -> None:
    app = Celeriac("dash", broker=memory_url)
    for queue in ("celeriac", "celeriac", "reports"):
        app.broker.publish(queue, b"x")
    [delivery] = app.broker.fetch(["reports"])
    app.broker.dead_letter(delivery, "rejected")
    text = render(app, ["celeriac", "reports", "empty"]).decode()
    assert 'celeriac_queue_messages{queue="celeriac"} 2.0' in text
    assert 'celeriac_queue_messages{queue="reports"} 0.0' in text
    assert 'celeriac_queue_messages{queue="empty"} 0.0' in text
    assert "celeriac_dead_letters 1.0" in text
    assert "celeriac_broker_up 1.0" in text
    assert 'queue="celeriac"' in render(app).decode()  # the default queue by default
    app.close()


def test_render_with_the_broker_away(no_celeriac_env: None, tmp_path: Path) -> None:
    app = Celeriac("dash", broker=f"sqlite:///{tmp_path / 'no-such-dir' / 'broker.sqlite3'}")
    text = render(app).decode()
    assert "celeriac_broker_up 0.0" in text
    assert "celeriac_queue_messages" not in text


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("port", "says"),
    [("70000", "expected a port from 0 to 65535, got 70000"), ("-1", "got -1"),
     ("http", "expected a port number, got 'http'")],
)  # fmt: skip
def test_a_port_out_of_range_is_a_usage_error(tmp_path: Path, port: str, says: str) -> None:
    write_module(tmp_path, "metproj", TASKS.format(url=sqlite_url(tmp_path / "b.sqlite3")))
    done = run_cli(["-A", "metproj", "worker", "--metrics-port", port], tmp_path)
    assert done.returncode == 2, done
    assert says in done.stderr and "Traceback" not in done.stderr


def test_a_taken_port_stops_the_worker_with_a_clear_error(tmp_path: Path) -> None:
    write_module(tmp_path, "metproj", TASKS.format(url=sqlite_url(tmp_path / "b.sqlite3")))
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli(["-A", "metproj", "worker", "--metrics-port", str(port)], tmp_path)
    assert done.returncode == 1, done
    assert f"Error: cannot serve metrics on 0.0.0.0:{port}: Address already in use" in done.stderr
    assert "choose another --metrics-port" in done.stderr
    assert "Traceback" not in done.stderr


MISSING = textwrap.dedent(
    """
    import sys

    class NoPrometheus:
        def find_spec(self, name, path=None, target=None):
            if name == "prometheus_client" or name.startswith("prometheus_client."):
                raise ImportError("No module named 'prometheus_client' (blocked by the test)")
            return None

    sys.meta_path.insert(0, NoPrometheus())
    from celeriac.cli import main
    sys.exit(main(["-A", "metproj", "worker", "--metrics-port", "0"]))
    """
)


def test_without_the_extra_the_error_names_it(tmp_path: Path) -> None:
    write_module(tmp_path, "metproj", TASKS.format(url=sqlite_url(tmp_path / "b.sqlite3")))
    done = subprocess.run(
        [sys.executable, "-c", MISSING], cwd=tmp_path, env=clean_env(), capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done
    assert "pip install 'celeriac[metrics]'" in done.stderr
    assert "Traceback" not in done.stderr
    assert os.path.exists(tmp_path / "b.sqlite3")  # it got as far as the broker, then stopped
