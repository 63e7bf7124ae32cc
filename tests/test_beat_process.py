"""Real ``celeriac beat`` and ``celeriac worker -B`` processes: several at once, one killed,
all restarted, bad entries refused at start-up.

Each test writes a module with an app and its schedule into tmp_path and runs the command
there. The test process counts the runs it finds on the broker's queue, by the
``periodic_task_due`` header each run carries: none may be doubled and none missed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path

import pytest
from conftest import StartWorker
from helpers import clean_env, run_cli, sqlite_url, wait_until, write_module

from celeriac import Celeriac
from celeriac.message import decode

pytestmark = pytest.mark.timeout(60)

MODULE = "beatproc"
QUEUE = "celeriac"

APP = """
    from pathlib import Path

    from celeriac import Celeriac

    app = Celeriac("beatproc", broker={url!r})


    @app.task(name="beat.ping", bind=True)
    def ping(self):
        with open({ledger!r}, "a") as ledger:
            ledger.write(self.request.headers.get("periodic_task_name", "?") + "\\n")


    app.conf.beat_schedule = {{"tick": {{"task": "beat.ping", "schedule": {schedule}}}}}
"""


class BeatProcess:
    """A real ``python -m celeriac -A module beat ...`` process, its log in a file."""

    def __init__(self, module: str, args: Sequence[str], cwd: Path, log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        command = [sys.executable, "-m", "celeriac", "-A", module, "beat", "-l", "info", *args]
        self.process = subprocess.Popen(
            command, cwd=cwd, env=clean_env(PYTHONUNBUFFERED="1"), stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_started(self, timeout: float = 15.0) -> BeatProcess:
        def started() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"beat exited with {self.process.returncode}:\n{self.log()}")
            return "beat: Starting..." in self.log()

        wait_until(started, timeout, f"beat to start:\n{self.log()}")
        return self

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        self._log.close()


@pytest.fixture(scope="module")
def redis_server_url() -> Iterator[str]:
    from redis_server import RedisServer

    with RedisServer() as server:
        yield server.url


@pytest.fixture(params=["sqlite", "redis"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path, no_celeriac_env: None) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "broker.sqlite3")
    url: str = request.getfixturevalue("redis_server_url")
    import redis

    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url


@pytest.fixture
def sqlite_broker(tmp_path: Path, no_celeriac_env: None) -> str:
    return sqlite_url(tmp_path / "broker.sqlite3")


@pytest.fixture
def client(broker_url: str) -> Iterator[Celeriac]:
    app = Celeriac("client", broker=broker_url, set_as_current=False)
    yield app
    app.close()


@pytest.fixture
def start_beat(tmp_path: Path) -> Iterator[Callable[..., BeatProcess]]:
    started: list[BeatProcess] = []

    def start(*args: str) -> BeatProcess:
        beat = BeatProcess(MODULE, args, tmp_path, tmp_path / f"beat-{len(started) + 1}.log")
        started.append(beat)
        return beat

    yield start
    for beat in started:
        beat.stop()


def write_app(tmp_path: Path, url: str, schedule: str = "1.0") -> Path:
    ledger = tmp_path / f"ledger-{uuid.uuid4().hex}.txt"
    write_module(tmp_path, MODULE, APP.format(url=url, ledger=str(ledger), schedule=schedule))
    return ledger


class Runs:
    """The runs found on the queue so far, by due time (epoch seconds)."""

    def __init__(self, app: Celeriac) -> None:
        self.app = app
        self.dues: list[float] = []

    def collect(self) -> list[float]:
        while deliveries := self.app.broker.fetch([QUEUE], limit=100):
            for delivery in deliveries:
                headers = decode(delivery.body).headers
                assert headers["periodic_task_name"] == "tick"
                self.dues.append(datetime.fromisoformat(headers["periodic_task_due"]).timestamp())
                self.app.broker.ack(delivery)
        return self.dues

    def wait_for(self, count: int, after: float, what: str) -> None:
        wait_until(lambda: sum(due > after for due in self.collect()) >= count, 15, what)


def test_three_beat_processes_one_killed_then_all_restarted(
    tmp_path: Path, broker_url: str, client: Celeriac, start_beat: Callable[..., BeatProcess]
) -> None:
    write_app(tmp_path, broker_url)
    runs = Runs(client)
    first = [start_beat() for _ in range(3)]
    for beat in first:
        beat.wait_started()
    runs.wait_for(2, time.time(), "2 runs from three schedulers")

    first[0].process.send_signal(signal.SIGKILL)  # killed mid-run
    assert first[0].process.wait(10) == -signal.SIGKILL
    runs.wait_for(2, time.time(), "2 runs after one scheduler was killed")

    for beat in first[1:]:
        beat.process.send_signal(signal.SIGTERM)
    for beat in first[1:]:
        assert beat.process.wait(10) == 0
    stopped = time.time()
    second = [start_beat() for _ in range(3)]
    for beat in second:
        beat.wait_started()
    runs.wait_for(2, time.time(), "2 runs after every scheduler was restarted")
    for beat in second:
        beat.stop()

    dues = sorted(runs.collect())
    assert len(dues) == len(set(dues)), f"a run was sent twice: {dues}"
    assert dues == [dues[0] + i for i in range(len(dues))], f"a run was missed: {dues}"
    assert any(due > stopped for due in dues)
    logs = "".join(beat.log() for beat in first + second)
    assert "Traceback" not in logs, logs


@pytest.mark.parametrize(
    ("schedule", "fragments"),
    [
        ('"61 * * * *"', ["crontab minute='61'"]),
        ('{"crontab": "0 2 * * *", "timezone": "Mars/Olympus"}', ["'Mars/Olympus'"]),
        ("0.25", ["every 0.25 s", "resolution"]),
    ],
)
def test_beat_refuses_a_bad_entry_with_exit_code_2(
    tmp_path: Path, sqlite_broker: str, schedule: str, fragments: list[str]
) -> None:
    write_app(tmp_path, sqlite_broker, schedule)
    done = run_cli(["-A", MODULE, "beat"], tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith("Error: beat entry 'tick': "), done.stderr
    for fragment in fragments:
        assert fragment in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_an_unregistered_task_is_refused_by_beat_and_worker_b(
    tmp_path: Path, sqlite_broker: str
) -> None:
    write_app(tmp_path, sqlite_broker)
    with open(tmp_path / f"{MODULE}.py", "a") as module:
        module.write('app.conf.beat_schedule["typo"] = {"task": "beat.pnig", "schedule": 5}\n')
    for command in (["beat"], ["worker", "-B"]):
        done = run_cli(["-A", MODULE, *command], tmp_path)
        assert done.returncode == 2, (command, done.stderr)
        assert "beat entry 'typo': task 'beat.pnig' is not registered" in done.stderr
        assert "did you mean 'beat.ping'?" in done.stderr


def test_an_unknown_app_time_zone_is_refused(tmp_path: Path, sqlite_broker: str) -> None:
    write_app(tmp_path, sqlite_broker)
    with open(tmp_path / f"{MODULE}.py", "a") as module:
        module.write('app.conf.timezone = "Mars/Olympus"\n')
    done = run_cli(["-A", MODULE, "beat"], tmp_path)
    assert done.returncode == 2
    assert "timezone" in done.stderr and "Mars/Olympus" in done.stderr


def test_worker_b_runs_the_schedule(
    tmp_path: Path, sqlite_broker: str, start_worker_process: StartWorker
) -> None:
    ledger = write_app(tmp_path, sqlite_broker)
    worker = start_worker_process(MODULE, "-B", "-P", "threads", "-c", "1")

    def lines() -> list[str]:
        return ledger.read_text().split() if ledger.exists() else []

    wait_until(lambda: len(lines()) >= 2, 15, f"2 runs in the ledger:\n{worker.log()}")
    assert set(lines()) == {"tick"}  # each run carried its entry's name
    worker.terminate()
    assert worker.wait() == 0
    assert "Scheduler: Sending due task tick (beat.ping)" in worker.log()
