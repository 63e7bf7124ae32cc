"""Signed remote control and ``control time_limit``, against a real prefork worker whose app has
a ``control_signing_key``: commands from a client without the key (or with another key, or
replayed, or stale) are refused and logged; a client with the key is obeyed. Clients take the
key from the setting or from CELERIAC_CONTROL_KEY."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import WorkerProcess, clean_env, failed, ok, sqlite_url, write_module

from celeriac import Celeriac
from celeriac.control import REPLY_TOPIC, TOPIC, VERSION
from celeriac.signing import RequestCheck, sign, signature_problem

pytestmark = pytest.mark.timeout(90)

KEY = "correct horse battery staple"

TASKS = """
    import time

    from celeriac import Celeriac
    from celeriac.errors import SoftTimeLimitExceeded

    app = Celeriac("sigproj", broker={url!r}, control_signing_key={key!r})


    @app.task
    def sleepy(seconds):
        try:
            time.sleep(seconds)
        except SoftTimeLimitExceeded:
            return "soft limit"
        return "slept"


    @app.task
    def stubborn(seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                time.sleep(0.01)
            except SoftTimeLimitExceeded:
                pass
        return "finished"
"""

# A client module on the same broker, with no key of its own.
NOKEY = """
    from celeriac import Celeriac

    app = Celeriac("nokey", broker={url!r})
"""


@dataclass
class Project:
    path: Path
    url: str
    worker: WorkerProcess

    def cli(self, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
        """``celeriac -A nokey ARGS``, with CELERIAC_CONTROL_KEY set to ``key`` if given."""
        env = clean_env(**({"CELERIAC_CONTROL_KEY": key} if key else {}))
        return subprocess.run(
            [sys.executable, "-m", "celeriac", "-A", "nokey", *args], cwd=self.path, env=env,
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )  # fmt: skip


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    path = tmp_path_factory.mktemp("sigproj")
    url = sqlite_url(path / "broker.sqlite3")
    write_module(path, "sigproj", TASKS.format(url=url, key=KEY))
    write_module(path, "nokey", NOKEY.format(url=url))
    worker = WorkerProcess("sigproj", ["-c", "1", "-n", "sig@%h"], path, path / "worker.log")
    try:
        worker.wait_ready()
        yield Project(path, url, worker)
    finally:
        worker.stop()


@pytest.fixture
def client(project: Project, no_celeriac_env: None) -> Iterator[Celeriac]:
    app = Celeriac("client", broker=project.url, control_signing_key=KEY)
    yield app
    app.close()


# -- signing -----------------------------------------------------------------------------


def test_a_command_without_the_key_is_refused_and_logged(project: Project) -> None:
    failed(project.cli("control", "shutdown", "-t", "2"), 1, "ERROR refused: it is not signed")
    project.worker.wait_for_log("Refused control command 'shutdown' from ")
    failed(project.cli("status", "-t", "2"), 1, "refused: it is not signed")
    failed(project.cli("inspect", "ping", "-t", "2"), 1, "refused: it is not signed")
    assert project.worker.process.poll() is None  # the refused shutdown did nothing


def test_a_command_with_the_key_is_obeyed(project: Project, client: Celeriac) -> None:
    ok(project.cli("inspect", "ping", "-t", "2", key=KEY), "OK pong")
    ok(project.cli("status", "-t", "2", key=KEY), "1 node online.")
    [reply] = client.control.ping(timeout=2)
    assert list(reply.values()) == [{"ok": "pong"}]


def test_another_key_is_refused_both_ways(project: Project) -> None:
    failed(project.cli("inspect", "ping", "-t", "2", key="another key"), 1,
           "its signature is wrong (another key?)")  # fmt: skip
    project.worker.wait_for_log("its signature is wrong")


def request(command: str, sent: float | None = None) -> dict[str, Any]:
    request_id = str(uuid.uuid4())
    return {
        "v": VERSION, "id": request_id, "command": command, "arguments": {},
        "destination": None, "reply_to": REPLY_TOPIC + request_id, "sender": "test",
        "sent": time.time() if sent is None else sent,
    }  # fmt: skip


def send(client: Celeriac, body: dict[str, Any]) -> dict[str, Any]:
    """Broadcast a raw request; the worker's reply."""
    with client.broker.listen([body["reply_to"]]) as replies:
        client.broker.broadcast(TOPIC, json.dumps(body).encode())
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for _, raw in replies.get(timeout=0.5):
                reply: dict[str, Any] = json.loads(raw)
                assert signature_problem(reply, KEY) is None  # replies are signed
                return reply
    raise AssertionError("no reply")


def test_a_replayed_or_stale_request_is_refused(project: Project, client: Celeriac) -> None:
    signed = sign(request("ping"), KEY)
    assert send(client, signed)["ok"] is True
    again = send(client, signed)
    assert again["ok"] is False and "received before (a replay)" in again["error"]
    stale = send(client, sign(request("ping", sent=time.time() - 600), KEY))
    assert stale["ok"] is False and "was sent 600 s from this worker's clock" in stale["error"]
    forged = send(client, {**request("ping"), "signature": "00" * 32})
    assert forged["ok"] is False and "its signature is wrong" in forged["error"]
    project.worker.wait_for_log("a replay, or clocks apart")


def test_the_request_check_alone() -> None:
    check = RequestCheck(KEY, max_age=60)
    now = time.time()
    first = sign(request("ping", sent=now), KEY)
    assert check.problem(first, now) is None
    assert check.problem(first, now + 1) == "it was received before (a replay)"
    assert check.problem(sign(request("ping", sent=now + 59), KEY), now) is None
    assert "sent -61 s" in (check.problem(sign(request("ping", sent=now + 61), KEY), now) or "")
    assert check.problem({**request("ping")}, now) == "it is not signed"
    tampered = {**first, "command": "shutdown"}
    assert check.problem(tampered, now) == "its signature is wrong (another key?)"
    no_time = sign({**request("ping"), "sent": "yesterday"}, KEY)
    assert check.problem(no_time, now) == "it carries no send time"


def test_the_key_is_masked_in_inspect_conf(project: Project) -> None:
    out = ok(project.cli("inspect", "conf", "-t", "2", key=KEY), "control_signing_key: ********")
    assert KEY not in out


# -- time_limit --------------------------------------------------------------------------


def test_time_limit_is_honoured_by_the_running_worker(project: Project, client: Celeriac) -> None:
    assert client.send_task("sigproj.sleepy", (0.3,)).get(timeout=20) == "slept"
    ok(project.cli("control", "time_limit", "sigproj.sleepy", "--soft", "0.3", "--hard", "5",
                   "-t", "2", key=KEY),
       "OK time limits of sigproj.sleepy: soft 0.3 s, hard 5 s")  # fmt: skip
    started = time.monotonic()
    assert client.send_task("sigproj.sleepy", (10,)).get(timeout=20) == "soft limit"
    assert time.monotonic() - started < 5

    ok(project.cli("control", "time_limit", "sigproj.stubborn", "--soft", "0.2", "--hard",
                   "0.6", "-t", "2", key=KEY), "hard 0.6 s")  # fmt: skip
    stopped = client.send_task("sigproj.stubborn", (10,))
    error = stopped.get(timeout=20, propagate=False)
    assert stopped.state == "FAILURE" and "hard time limit (0.6s)" in str(error)
    project.worker.wait_for_log("Hard time limit (0.6s) exceeded for sigproj.stubborn")

    replies = client.control.time_limit("sigproj.sleepy", reply=True, timeout=2)
    assert replies and "soft none, hard none" in str(replies[0])
    assert client.send_task("sigproj.sleepy", (0.5,)).get(timeout=20) == "slept"


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--soft", "-1"], 2, "expected a positive number of seconds, got -1"),
        (["--soft", "abc"], 2, "expected seconds, got 'abc'"),
        (["--hard", "nan"], 2, "expected a positive number of seconds, got nan"),
        (["--hard", "inf"], 2, "expected a positive number of seconds, got inf"),
        (["--soft", "5", "--hard", "1"], 2, "--soft (5) is longer than --hard (1)"),
    ],
)
def test_time_limit_with_bad_numbers(
    project: Project, args: list[str], code: int, says: str
) -> None:
    done = project.cli("control", "time_limit", "sigproj.sleepy", *args, key=KEY)
    failed(done, code, says)


def test_time_limit_of_an_unknown_task(project: Project, client: Celeriac) -> None:
    done = project.cli("control", "time_limit", "sigproj.nope", "--soft", "1", "-t", "2", key=KEY)
    failed(done, 1, "ERROR unknown task 'sigproj.nope'")
    with pytest.raises(ValueError, match="positive number of seconds"):
        client.control.time_limit("sigproj.sleepy", soft=-1)
    with pytest.raises(TypeError, match="number of seconds"):
        client.control.time_limit("sigproj.sleepy", hard="10")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="longer than the hard"):
        client.control.time_limit("sigproj.sleepy", soft=5, hard=1)
    # A worker checks too, whoever sends: a raw request with a bad value gets an error reply.
    raw = request("time_limit")
    raw["arguments"] = {"task_name": "sigproj.sleepy", "soft": -3}
    reply = send(client, sign(raw, KEY))
    assert reply["ok"] is False and "positive number of seconds, not -3" in reply["error"]
