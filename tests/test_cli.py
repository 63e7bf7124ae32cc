"""The ``celeriac`` command line, run as a real process: finding the app, bad input, commands."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import StartWorker
from helpers import run_cli, sqlite_url, wait_until, write_module

import celeriac
from celeriac import Celeriac, states

pytestmark = pytest.mark.timeout(60)

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

TASKS = """
    from celeriac import Celeriac

    app = Celeriac("climod", broker={url!r})


    @app.task
    def add(x, y):
        return x + y


    @app.task
    def fail():
        raise ValueError("failed on purpose")
"""


def assert_usage_error(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit code 2, a message naming the problem, no traceback."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    for fragment in fragments:
        assert fragment in done.stderr, (fragment, done.stderr)


@pytest.fixture
def broker_url(tmp_path: Path) -> str:
    return sqlite_url(tmp_path / "broker.sqlite3")


@pytest.fixture
def client(tmp_path: Path, broker_url: str, no_celeriac_env: None) -> Iterator[Celeriac]:
    """Writes ``climod.py`` (an app and its tasks) into tmp_path; a client on its broker."""
    write_module(tmp_path, "climod", TASKS.format(url=broker_url))
    app = Celeriac("client", broker=broker_url)
    yield app
    app.close()


# -- finding the app


def test_a_module_that_does_not_exist(tmp_path: Path) -> None:
    done = run_cli(["-A", "no_such_module_anywhere", "worker"], tmp_path)
    assert_usage_error(done, "no_such_module_anywhere", "not found")
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_module_with_no_app(tmp_path: Path) -> None:
    write_module(tmp_path, "plain", "VALUE = 1\n")
    done = run_cli(["-A", "plain", "worker"], tmp_path)
    assert_usage_error(done, "no Celeriac app found", "plain")
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_module_whose_import_fails_names_the_missing_dependency(tmp_path: Path) -> None:
    write_module(tmp_path, "needs_dep", "import a_dependency_not_installed\n")
    done = run_cli(["-A", "needs_dep", "worker"], tmp_path)
    assert_usage_error(done, "needs_dep", "a_dependency_not_installed")


def test_an_attribute_that_is_not_an_app(tmp_path: Path) -> None:
    write_module(tmp_path, "notapp", "from celeriac import Celeriac\nthing = 42\n")
    done = run_cli(["-A", "notapp:thing", "worker"], tmp_path)
    assert_usage_error(done, "notapp", "thing")
    done = run_cli(["-A", "notapp:missing", "worker"], tmp_path)
    assert_usage_error(done, "missing")


def test_two_apps_and_no_app_attribute_is_ambiguous(tmp_path: Path) -> None:
    write_module(
        tmp_path,
        "twoapps",
        """
        from celeriac import Celeriac
        first = Celeriac("first", broker="memory://first")
        second = Celeriac("second", broker="memory://second")
        """,
    )
    assert_usage_error(run_cli(["-A", "twoapps", "worker"], tmp_path), "twoapps")


APP_SOURCE = "from celeriac import Celeriac\n{name} = Celeriac('found', broker={url!r})\n"


@pytest.mark.parametrize(
    ("spec", "files"),
    [
        ("proj", {"proj/__init__.py": APP_SOURCE.format(name="app", url="{url}")}),
        (
            "proj",
            {
                "proj/__init__.py": "",
                "proj/celeriac.py": APP_SOURCE.format(name="app", url="{url}"),
            },
        ),
        ("single", {"single.py": APP_SOURCE.format(name="the_only_one", url="{url}")}),
        ("explicit:mine", {"explicit.py": APP_SOURCE.format(name="mine", url="{url}")}),
    ],
    ids=["proj.app", "proj.celeriac.app", "the-one-instance", "module:attribute"],
)
def test_the_app_is_found_the_way_celery_finds_it(
    tmp_path: Path, broker_url: str, no_celeriac_env: None, spec: str, files: dict[str, str]
) -> None:
    for relative, source in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source.replace("{url}", broker_url))
    done = run_cli(["-A", spec, "call", "some.task"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert UUID.match(done.stdout.strip())
    client = Celeriac("client", broker=broker_url)
    try:
        assert client.broker.size("celeriac") == 1  # published through the app's own broker
    finally:
        client.close()


# -- bad broker URLs and option values


@pytest.mark.parametrize("command", [["call", "some.task"], ["purge", "-f"]])
def test_an_unsupported_broker_scheme_lists_the_supported_ones(
    tmp_path: Path, command: list[str]
) -> None:
    done = run_cli(["-b", "foo://x", *command], tmp_path)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "foo" in done.stderr
    for scheme in ("memory://", "sqlite://"):
        assert scheme in done.stderr, done.stderr


def test_a_worker_with_a_bad_broker_leaves_no_pidfile(tmp_path: Path, client: Celeriac) -> None:
    pidfile = tmp_path / "worker.pid"
    done = run_cli(["-A", "climod", "worker", "-b", "foo://x", "--pidfile", str(pidfile)], tmp_path)
    assert done.returncode != 0 and "sqlite://" in done.stderr
    assert not pidfile.exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["worker", "-c", "0"], "--concurrency"),
        (["worker", "-c", "abc"], "--concurrency"),
        (["worker", "-P", "nope"], "--pool"),
        (["worker", "-l", "loud"], "--loglevel"),
        (["worker", "--shutdown-timeout", "-1"], "--shutdown-timeout"),
        (["worker", "--max-tasks-per-child", "0"], "--max-tasks-per-child"),
        (["worker", "-Q", ","], "--queues"),
        (["call", "some.task", "--args", "{"], "--args"),
        (["call", "some.task", "--args", '{"a": 1}'], "--args"),
        (["call", "some.task", "--kwargs", "[1]"], "--kwargs"),
        (["no-such-command"], "no-such-command"),
        ([], "COMMAND"),
    ],
)
def test_bad_option_values_exit_2_with_a_message(
    tmp_path: Path, args: list[str], fragment: str
) -> None:
    done = run_cli(["-b", f"memory://cli-{tmp_path.name}", *args], tmp_path)
    assert_usage_error(done, fragment)


# -- version and help


def test_version() -> None:
    script = Path(sys.executable).parent / "celeriac"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "celeriac"]
    done = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    assert done.stdout.strip() == f"celeriac {celeriac.__version__}"


def test_help(tmp_path: Path) -> None:
    done = run_cli(["--help"], tmp_path)
    assert done.returncode == 0 and done.stderr == ""
    for command in ("worker", "call", "result", "purge"):
        assert command in done.stdout
    worker_help = run_cli(["worker", "--help"], tmp_path)
    assert worker_help.returncode == 0
    for option in ("--concurrency", "--pool", "--queues", "--loglevel", "--hostname",
                   "--pidfile", "--logfile"):  # fmt: skip
        assert option in worker_help.stdout


# -- commands


def test_call_then_a_worker_runs_it_then_result_prints_it(
    tmp_path: Path, client: Celeriac, start_worker_process: StartWorker
) -> None:
    done = run_cli(["-A", "climod", "call", "climod.add", "--args", "[1, 2]"], tmp_path)
    assert done.returncode == 0, done.stderr
    task_id = done.stdout.strip()
    assert UUID.match(task_id)
    failing = run_cli(["-A", "climod", "call", "climod.fail"], tmp_path).stdout.strip()
    keyword = run_cli(
        ["-A", "climod", "call", "climod.add", "--kwargs", '{"x": 2, "y": 5}', "--countdown",
         "0.1"],
        tmp_path,
    ).stdout.strip()  # fmt: skip

    start_worker_process("climod", "-P", "threads", "-c", "2")
    assert client.AsyncResult(task_id).get(timeout=20) == 3
    assert client.AsyncResult(keyword).get(timeout=20) == 7
    with pytest.raises(ValueError):
        client.AsyncResult(failing).get(timeout=20)

    shown = run_cli(["-A", "climod", "result", task_id], tmp_path)
    assert shown.returncode == 0 and shown.stdout.strip() == "3"
    verbose = run_cli(["-A", "climod", "result", "-v", task_id], tmp_path)
    assert verbose.stdout.strip() == "SUCCESS: 3"
    failed = run_cli(["-A", "climod", "result", "-v", "--traceback", failing], tmp_path)
    assert failed.returncode == 0
    assert failed.stdout.startswith("FAILURE:") and "failed on purpose" in failed.stdout
    assert "Traceback (most recent call last)" in failed.stdout


def test_result_waits_when_asked(tmp_path: Path, client: Celeriac) -> None:
    pending = client.send_task("climod.add", (1, 1))
    done = run_cli(["-A", "climod", "result", "--wait", "0.2", pending.id], tmp_path)
    assert done.returncode != 0
    assert "did not finish" in done.stderr and "Traceback" not in done.stderr


def test_purge_with_force_and_refusal_without_a_tty(tmp_path: Path, client: Celeriac) -> None:
    for i in range(3):
        client.send_task("climod.add", (i, i))
    refused = run_cli(["-A", "climod", "purge"], tmp_path)  # stdin is not a terminal
    assert_usage_error(refused, "-f")
    assert client.broker.size("celeriac") == 3

    purged = run_cli(["-A", "climod", "purge", "-f"], tmp_path)
    assert purged.returncode == 0, purged.stderr
    assert "Purged 3" in purged.stdout
    assert client.broker.size("celeriac") == 0
    client.send_task("climod.add", (1, 1), queue="other")
    other = run_cli(["-A", "climod", "purge", "-f", "-Q", "other,celeriac"], tmp_path)
    assert "Purged 1" in other.stdout and client.broker.size("other") == 0


def test_worker_options_banner_and_log_lines(
    tmp_path: Path, client: Celeriac, start_worker_process: StartWorker
) -> None:
    pidfile, logfile = tmp_path / "w.pid", tmp_path / "w.log"
    worker = start_worker_process(
        "climod", "-P", "threads", "-c", "2", "-Q", "alpha,beta", "-n", "w1@%h",
        "--pidfile", str(pidfile), "--logfile", str(logfile), ready=False,
    )  # fmt: skip
    wait_until(lambda: logfile.exists() and " ready." in logfile.read_text(), 20, "ready.")
    assert pidfile.read_text().strip() == str(worker.pid)

    banner = worker.log()  # with --logfile the banner goes to stdout, the log to the file
    assert f"v{celeriac.__version__}" in banner and "w1@" in banner
    assert "climod" in banner and "sqlite://" in banner
    assert "2 (threads)" in banner
    assert ".> alpha" in banner and ".> beta" in banner
    assert "climod.add" in banner and "climod.fail" in banner

    result = client.send_task("climod.add", (20, 22), queue="beta")
    ignored = client.send_task("climod.add", (0, 0))  # the default queue is not consumed
    assert result.get(timeout=20) == 42
    log = logfile.read_text()
    assert f"Received task: climod.add[{result.id}]" in log
    assert re.search(rf"Task climod\.add\[{result.id}\] succeeded in [0-9.e-]+s: 42", log), log
    assert ignored.state == states.PENDING

    worker.process.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0
    assert not pidfile.exists()
