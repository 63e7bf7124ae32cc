"""The monitoring and control commands, run as real processes against a real worker process
on a SQLite file: status, inspect, control, events, queues, dlq, and bad input for each."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import (
    WorkerProcess,
    clean_env,
    failed,
    ok,
    run_cli,
    sqlite_url,
    wait_until,
    write_module,
)

from celeriac import Celeriac
from celeriac.control import TOPIC
from celeriac.message import encode
from celeriac.worker.worker import default_hostname

pytestmark = pytest.mark.timeout(60)

TASKS = """
    import time
    from pathlib import Path

    from celeriac import Celeriac

    app = Celeriac("monproj", broker={url!r},
                   task_routes={{"monproj.parked": {{"queue": "parked"}}}})


    @app.task
    def add(x, y):
        return x + y


    @app.task
    def parked():
        return "nobody takes tasks from this queue"


    @app.task
    def hold(started, release):
        Path(started).write_text("started")
        while not Path(release).exists():
            time.sleep(0.01)
        return "released"
"""


@dataclass
class Project:
    """A task module in ``path``, its broker, and a worker process running it."""

    path: Path
    url: str
    worker: WorkerProcess
    host: str

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(["-A", "monproj", *args], self.path)

    def client(self) -> Celeriac:
        app = Celeriac("client", broker=self.url)
        app.conf.task_routes = {"monproj.parked": {"queue": "parked"}}
        return app


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    """One worker (-E, prefork -c 2, queues celeriac and work) for every test of the module."""
    path = tmp_path_factory.mktemp("monproj")
    url = sqlite_url(path / "broker.sqlite3")
    write_module(path, "monproj", TASKS.format(url=url))
    args = ["-E", "-c", "2", "-n", "mon1@%h", "-Q", "celeriac,work"]
    worker = WorkerProcess("monproj", args, path, path / "worker.log")
    try:
        worker.wait_ready()
        yield Project(path, url, worker, default_hostname("mon1@%h"))
    finally:
        worker.stop()


@pytest.fixture
def client(project: Project, no_celeriac_env: None) -> Iterator[Celeriac]:
    app = project.client()
    yield app
    app.close()


# -- status and inspect ----------------------------------------------------------------------


def test_status(project: Project) -> None:
    ok(project.cli("status", "-t", "0.5"), f"{project.host}: OK", "1 node online.")
    assert json.loads(ok(project.cli("status", "-t", "0.5", "--json"))) == [project.host]


@pytest.mark.parametrize(
    ("method", "shows"),
    [
        ("ping", "OK pong"), ("registered", ". monproj.add"), ("active_queues", ". work"),
        ("stats", "implementation=prefork, max-concurrency=2"), ("revoked", ""),
        ("conf", "broker_url: sqlite:///"), ("active", ""), ("reserved", ""),
        ("scheduled", "none"),
    ],
)  # fmt: skip
def test_each_inspect_method(project: Project, method: str, shows: str) -> None:
    ok(project.cli("inspect", method, "-d", project.host), project.host, shows)


def test_inspect_as_json(project: Project) -> None:
    out = ok(project.cli("inspect", "registered", "-d", project.host, "--json"))
    assert json.loads(out) == {project.host: ["monproj.add", "monproj.hold", "monproj.parked"]}


def test_inspect_active_shows_a_running_task(project: Project, client: Celeriac) -> None:
    started, release = project.path / "started", project.path / "release"
    held = client.send_task("monproj.hold", (str(started), str(release)))
    try:
        wait_until(started.exists, 10, "the task to start")
        out = ok(project.cli("inspect", "active", "-d", project.host), held.id, "monproj.hold")
        assert f"{project.host}: 1" in out and "s ago" in out
    finally:
        release.write_text("go")
    assert held.get(timeout=10) == "released"


def test_no_reply_from_an_unknown_worker(project: Project) -> None:
    done = project.cli("inspect", "ping", "-d", "nobody@nowhere", "-t", "0.3")
    failed(done, 1, "Error: no worker (nobody@nowhere) replied within 0.3 s")
    done = project.cli("inspect", "ping", "-d", f"{project.host},nobody@nowhere", "-t", "0.5")
    failed(done, 1, f"{project.host}: OK pong", "no reply from nobody@nowhere within 0.5 s")


BAD_INPUT = [
    (["nosuch"], "invalid choice"),
    (["inspect"], "the following arguments are required"),
    (["inspect", "fly"], "invalid choice: 'fly'"),
    (["inspect", "ping", "-t", "abc"], "expected seconds, got 'abc'"),
    (["inspect", "ping", "-t", "0"], "positive number of seconds"),
    (["inspect", "ping", "-t", "-1"], "positive number of seconds"),
    (["inspect", "ping", "-t", "inf"], "positive number of seconds"),
    (["inspect", "ping", "-d", ","], "worker names separated by commas"),
    (["inspect", "ping", "-d", ""], "worker names separated by commas"),
    (["status", "-t", "nan"], "positive number of seconds"),
    (["control"], "the following arguments are required"),
    (["control", "fly"], "invalid choice: 'fly'"),
    (["control", "pool_grow", "0"], "at least 1"),
    (["control", "pool_shrink", "x"], "expected a whole number"),
    (["control", "add_consumer"], "the following arguments are required: queue"),
    (["control", "revoke"], "the following arguments are required: TASK_ID"),
    (["control", "terminate", "some-id", "-s", "SIGNOPE"], "unknown signal 'SIGNOPE'"),
    (["control", "broadcast", "ping", "--arguments", "{bad"], "--arguments is not valid JSON"),
    (["control", "broadcast", "ping", "--arguments", "[1]"], "must be a JSON object"),
    (["events", "--limit", "0"], "at least 1"),
    (["events", "--timeout", "soon"], "expected seconds"),
    (["queues", "-t", "-2"], "positive number of seconds"),
    (["dlq"], "the following arguments are required"),
    (["dlq", "list", "--limit", "none"], "expected a whole number"),
    (["dlq", "redrive"], "takes a dead letter's id, or --all"),
    (["dlq", "redrive", "some-id", "--all"], "takes a dead letter's id, or --all"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT)
def test_bad_input_is_a_usage_error(project: Project, args: list[str], message: str) -> None:
    failed(project.cli(*args), 2, message)


# -- control ---------------------------------------------------------------------------------


def test_control_commands(project: Project, client: Celeriac) -> None:
    host = project.host
    ok(project.cli("control", "add_consumer", "extra", "-d", host), "OK now consuming from extra")
    assert client.send_task("monproj.add", (2, 2), queue="extra").get(timeout=10) == 4
    ok(project.cli("control", "cancel_consumer", "extra", "-d", host), "OK no longer")
    ok(project.cli("control", "pool_grow", "-d", host), "OK pool grown to 3")
    ok(project.cli("control", "pool_shrink", "1", "-d", host), "OK pool shrunk to 2")
    out = ok(project.cli("control", "pool_grow", "2", "-d", host, "--json"))
    assert json.loads(out) == {host: {"ok": "pool grown to 4"}}
    ok(project.cli("control", "pool_shrink", "2", "-d", host), "OK pool shrunk to 2")
    failed(project.cli("control", "cancel_consumer", "nope", "-d", host), 1, "ERROR not consuming")


def test_an_unknown_control_command_is_answered_with_an_error(project: Project) -> None:
    done = project.cli("control", "broadcast", "fly", "--arguments", '{"high": 1}', "-d",
                       project.host)  # fmt: skip
    failed(done, 1, f"{project.host}: ERROR unknown command 'fly'")


def test_a_request_of_an_old_version_is_answered_with_an_error(
    project: Project, client: Celeriac
) -> None:
    request = {"v": 0, "id": "old", "command": "ping", "arguments": {},
               "destination": [project.host], "reply_to": "celeriac.reply.old"}  # fmt: skip
    with client.broker.listen(["celeriac.reply.old"]) as subscription:
        client.broker.broadcast(TOPIC, json.dumps(request).encode())
        [(_, body)] = wait_until(lambda: subscription.get(0.1), 10, "a reply")
    reply = json.loads(body)
    assert reply["ok"] is False and "unsupported control message version 0" in reply["error"]


def test_revoke_from_the_command_line(project: Project, client: Celeriac) -> None:
    doomed = client.send_task("monproj.add", (1, 1), countdown=0.5)
    ok(project.cli("control", "revoke", doomed.id, "-d", project.host), "flagged as revoked")
    assert wait_until(lambda: doomed.state == "REVOKED", 10, "the revoked task to be discarded")
    other = client.send_task("monproj.add", (1, 1), countdown=60)
    done = project.cli("control", "revoke", other.id, "-d", "nobody@nowhere", "-t", "0.2")
    ok(done, f"Revoked {other.id}: stored in the broker")
    assert client.control.is_revoked(other.id)


# -- events --------------------------------------------------------------------------------


def test_events_dump_replays_what_just_happened(project: Project, client: Celeriac) -> None:
    result = client.send_task("monproj.add", (20, 22))
    assert result.get(timeout=10) == 42
    out = ok(project.cli("events", "--dump", "--timeout", "1.5"))
    events = [json.loads(line) for line in out.splitlines()]
    mine = {e["type"] for e in events if e.get("uuid") == result.id}
    assert {"task-received", "task-started", "task-succeeded"} <= mine
    assert any(e["type"] == "worker-online" and e["hostname"] == project.host for e in events)


def test_events_dump_with_a_limit(project: Project) -> None:
    out = ok(project.cli("events", "--dump", "--limit", "2", "--timeout", "5"))
    assert len(out.splitlines()) == 2


def test_events_view_shows_workers_and_tasks(project: Project, client: Celeriac) -> None:
    result = client.send_task("monproj.add", (1, 2))
    result.get(timeout=10)
    out = ok(project.cli("events", "--timeout", "1.5"), "WORKER", project.host, "online")
    assert result.id in out and "SUCCESS" in out


def test_events_view_on_a_broker_with_no_workers(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "b.sqlite3")
    write_module(
        tmp_path, "empty", f"from celeriac import Celeriac\napp = Celeriac('e', broker={url!r})\n"
    )
    done = run_cli(["-A", "empty", "events", "--timeout", "0.3"], tmp_path)
    ok(done, "0 worker(s) online", "No workers seen", "No task events")
    failed(run_cli(["-A", "empty", "status", "-t", "0.2"], tmp_path), 1, "no worker replied")


def _interruptible() -> None:
    """Ctrl-C as at a terminal: a suite started in the background (``cmd &``) runs with SIGINT
    ignored, which its children inherit, and Python then leaves it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_events_exits_cleanly_on_ctrl_c(project: Project) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "celeriac", "-A", "monproj", "events", "--dump"],
        cwd=project.path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=_interruptible,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        first = process.stdout.readline()  # the history: at least this worker's online event
        assert json.loads(first)["type"].startswith(("worker-", "task-"))
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=10)
    finally:
        process.kill()
    assert process.returncode == 0 and "Traceback" not in err


# -- queues and dead letters -------------------------------------------------------------------


def test_queues(project: Project, client: Celeriac) -> None:
    client.broker.purge("parked")
    for _ in range(2):
        client.send_task("monproj.parked")
    out = ok(project.cli("queues", "-t", "0.5"), "QUEUE", "(dead letters)")
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:]}
    assert rows["parked"] == ["2", "-"]
    assert rows["work"] == ["0", project.host] and rows["celeriac"][1] == project.host
    listing = json.loads(ok(project.cli("queues", "-t", "0.5", "--json")))
    assert listing["queues"]["parked"] == {"messages": 2, "workers": []}
    assert isinstance(listing["dead_letters"], int)


def dead_letter(client: Celeriac, queue: str, body: bytes) -> str:
    """Put ``body`` in the dead-letter queue by hand; its message id."""
    client.broker.publish(queue, body)
    [delivery] = client.broker.fetch([queue])
    assert client.broker.dead_letter(delivery, "bad_shape")
    return delivery.message_id


def test_dlq_list_show_redrive(project: Project, client: Celeriac) -> None:
    message = client.build_message("monproj.add", (3, 4), queue="dlqtest")
    good = dead_letter(client, "dlqtest", encode(message))
    bad = dead_letter(client, "dlqtest", b"\x00 not a message")
    out = ok(project.cli("dlq", "list"), good, bad, "monproj.add", message.id, "bad_shape")
    listed = json.loads(ok(project.cli("dlq", "list", "--json")))
    assert {d["id"] for d in listed} >= {good, bad}
    assert "TASK ID" in out
    ok(project.cli("dlq", "show", good), f"task_id: {message.id}", "history:")
    ok(project.cli("dlq", "show", message.id), f"id: {good}")  # found by its task id
    shown = json.loads(ok(project.cli("dlq", "show", bad, "--json")))
    assert shown["task"] is None and shown["body_error"].startswith("undecodable")
    failed(project.cli("dlq", "show", "no-such-id"), 1, "no dead letter with id 'no-such-id'")
    ok(project.cli("dlq", "redrive", good), f"Redrove {good} to queue dlqtest.")
    assert client.broker.size("dlqtest") == 1
    failed(project.cli("dlq", "redrive", good), 1, "no dead letter with id")
    ok(project.cli("dlq", "redrive", "--all"), "put back on their queues")
    assert client.broker.size("dlqtest") == 2
    ok(project.cli("dlq", "list"), "The dead-letter queue is empty.")
    client.broker.purge("dlqtest")


def test_dlq_purge(project: Project, client: Celeriac) -> None:
    for body in (b"one", b"two"):
        dead_letter(client, "dlqtest", body)
    failed(project.cli("dlq", "purge"), 2, "pass -f/--force")  # no terminal to ask on
    assert client.broker.dead_letter_count() == 2
    ok(project.cli("dlq", "purge", "-f"), "Purged 2 dead letter(s).")
    ok(project.cli("dlq", "list"), "The dead-letter queue is empty.")
    ok(project.cli("dlq", "purge", "-f"), "Purged 0 dead letter(s).")
