"""Remote control: ping, inspect, revoke, pool and queue commands, bad requests and replies.

In-process workers on memory for the commands' logic; real worker processes on SQLite and
Redis for the paths across processes (inspect, revoke with terminate, pool_grow, shutdown).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import StartWorker
from helpers import wait_until, write_module

from celeriac import Celeriac, states
from celeriac.control import REVOKED_KEY, TOPIC, VERSION
from celeriac.errors import TaskRevokedError
from celeriac.testing import WorkerThread, start_worker
from celeriac.worker.worker import default_hostname

pytestmark = pytest.mark.timeout(60)

HOST = default_hostname("test@%h")  #: the name of a worker started by start_worker


def only(replies: Any) -> Any:
    """The one worker's reply from ``[{hostname: reply}]`` or ``{hostname: reply}``."""
    if isinstance(replies, list):
        assert len(replies) == 1, replies
        replies = replies[0]
    assert list(replies) == [HOST], replies
    return replies[HOST]


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """Blocks the ``t.block`` tasks until set (set at teardown in any case)."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def tasks(app: Celeriac, gate: threading.Event) -> list[str]:
    """Registers t.add, t.block and t.note on ``app``; t.note appends to the returned list."""
    ran: list[str] = []

    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="t.block")
    def block() -> bool:
        return gate.wait(10)

    @app.task(name="t.note")
    def note(text: str) -> str:
        ran.append(text)
        return text

    return ran


@pytest.fixture
def worker(app: Celeriac, tasks: list[str], gate: threading.Event) -> Iterator[WorkerThread]:
    """A worker in a thread (one slot) on the queues celeriac and second."""
    with start_worker(app, concurrency=1, queues=["celeriac", "second"]) as thread:
        yield thread
        gate.set()  # let blocked tasks end, so that the worker can stop


# -- asking --------------------------------------------------------------------------------


def test_ping_and_the_inspect_questions(app: Celeriac, worker: WorkerThread) -> None:
    control = app.control
    assert control.ping(timeout=0.5) == [{HOST: {"ok": "pong"}}]
    inspect = control.inspect(destination=HOST)
    assert only(inspect.ping()) == {"ok": "pong"}
    assert {"t.add", "t.block", "t.note"} <= set(only(inspect.registered()))
    assert [q["name"] for q in only(inspect.active_queues())] == ["celeriac", "second"]
    assert only(inspect.scheduled()) == [] and only(inspect.revoked()) == []
    assert only(inspect.conf())["broker_url"].startswith("memory://")
    stats = only(inspect.stats())
    assert stats["pool"] == {"implementation": "threads", "max-concurrency": 1, "processes": []}
    assert stats["hostname"] == HOST and stats["prefetch_count"] == 4


def test_active_and_reserved(app: Celeriac, worker: WorkerThread, gate: threading.Event) -> None:
    running, waiting = app.send_task("t.block"), app.send_task("t.block")
    inspect = app.control.inspect(destination=HOST)
    active = wait_until(lambda: only(inspect.active()), 5, "an active task")
    assert [(t["id"], t["name"]) for t in active] == [(running.id, "t.block")]
    assert active[0]["time_start"] > 0 and active[0]["delivery_info"]["routing_key"] == "celeriac"
    assert [t["id"] for t in only(inspect.reserved())] == [waiting.id]
    gate.set()
    assert running.get(timeout=5) is True and waiting.get(timeout=5) is True
    assert only(inspect.active()) == []


def test_no_reply_from_a_destination_that_does_not_exist(
    app: Celeriac, worker: WorkerThread
) -> None:
    assert app.control.inspect(destination="nobody@nowhere", timeout=0.2).ping() is None
    assert app.control.ping(destination=["nobody@nowhere"], timeout=0.2) == []


# -- bad requests ------------------------------------------------------------------------------


def raw_request(app: Celeriac, body: bytes | dict[str, Any], timeout: float = 2.0) -> list[Any]:
    """Broadcast a hand-made request with a reply topic; the replies' bodies, decoded."""
    reply_to = f"celeriac.reply.{uuid.uuid4()}"
    if isinstance(body, dict):
        body = json.dumps({"id": "r1", "reply_to": reply_to, **body}).encode()
    with app.broker.listen([reply_to]) as subscription:
        app.broker.broadcast(TOPIC, body)
        got = subscription.get(timeout)
    return [json.loads(reply) for _, reply in got]


def test_an_unknown_command_gets_an_error_reply(app: Celeriac, worker: WorkerThread) -> None:
    error = only(app.control.broadcast("fly", {}, HOST, reply=True))["error"]
    assert "unknown command 'fly'" in error and "ping" in error
    assert only(app.control.ping(HOST)) == {"ok": "pong"}  # the worker goes on


def test_a_request_of_another_version_gets_an_error_reply(
    app: Celeriac, worker: WorkerThread
) -> None:
    [reply] = raw_request(app, {"v": VERSION + 1, "command": "ping", "arguments": {}})
    assert reply["ok"] is False and reply["id"] == "r1" and reply["hostname"] == HOST
    assert "unsupported control message version 2" in reply["error"]


@pytest.mark.parametrize(
    ("request_", "text"),
    [
        ({"command": "pool_grow", "arguments": {"size": 2}}, "bad arguments for 'pool_grow'"),
        ({"command": "pool_grow", "arguments": {"n": "two"}}, "n must be a whole number"),
        ({"command": "ping", "arguments": [1]}, "arguments for 'ping' must be an object"),
        ({"command": 7, "arguments": {}}, "unknown command 7"),
        ({"command": "cancel_consumer", "arguments": {"queue": "nope"}}, "not consuming"),
    ],
)
def test_bad_arguments_get_an_error_reply(
    app: Celeriac, worker: WorkerThread, request_: dict[str, Any], text: str
) -> None:
    [reply] = raw_request(app, {"v": VERSION, **request_})
    assert reply["ok"] is False and text in reply["error"], reply


def test_a_message_that_is_not_json_is_ignored(app: Celeriac, worker: WorkerThread) -> None:
    assert raw_request(app, b"\xff not json", timeout=0.3) == []
    assert raw_request(app, b"[1, 2, 3]", timeout=0.3) == []
    assert only(app.control.ping(HOST)) == {"ok": "pong"}


def test_a_malformed_reply_is_reported_not_raised(app: Celeriac) -> None:
    """A fake worker answers every request with garbage on the reply topic."""
    listening = threading.Event()

    def fake_worker() -> None:
        with app.broker.listen([TOPIC]) as subscription:
            listening.set()
            for _, body in wait_until(lambda: subscription.get(0.1), 5, "a request"):
                app.broker.broadcast(json.loads(body)["reply_to"], b"<html>oops</html>")

    thread = threading.Thread(target=fake_worker)
    thread.start()
    listening.wait(5)
    replies = app.control.broadcast("ping", reply=True, timeout=2, limit=1)
    thread.join(5)
    assert replies == [{"unknown": {"error": "malformed reply: b'<html>oops</html>'"}}]


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c: c.ping(timeout=0), ValueError),
        (lambda c: c.ping(timeout=-1), ValueError),
        (lambda c: c.ping(timeout=float("nan")), ValueError),
        (lambda c: c.ping(timeout="1"), TypeError),
        (lambda c: c.ping(destination=[]), ValueError),
        (lambda c: c.ping(destination=[""]), ValueError),
        (lambda c: c.inspect(destination=[5]), ValueError),
        (lambda c: c.broadcast(""), ValueError),
        (lambda c: c.broadcast("ping", arguments=[1]), TypeError),
        (lambda c: c.broadcast("ping", arguments={"x": object()}), TypeError),
        (lambda c: c.revoke([]), ValueError),
        (lambda c: c.revoke("id", signal="SIGNOPE"), ValueError),
        (lambda c: c.pool_grow(0), ValueError),
    ],
)
def test_the_client_refuses_bad_input(app: Celeriac, call: Any, error: type) -> None:
    with pytest.raises(error):
        call(app.control)


# -- revoking ----------------------------------------------------------------------------------


def test_a_revoked_task_does_not_run(app: Celeriac, tasks: list[str]) -> None:
    doomed = app.send_task("t.note", ("doomed",), countdown=0.3)
    doomed.revoke()
    assert app.control.is_revoked(doomed.id) and app.broker.get(REVOKED_KEY + doomed.id)
    with start_worker(app) as thread:  # started after the revoke: it loads the revocations
        kept = app.send_task("t.note", ("kept",))
        assert kept.get(timeout=5) == "kept"
        with pytest.raises(TaskRevokedError):
            doomed.get(timeout=5)
        assert doomed.id in only(app.control.inspect(destination=HOST).revoked())
        thread.join()
    assert tasks == ["kept"] and doomed.state == states.REVOKED


def test_a_task_revoked_while_it_waits_for_a_slot_does_not_run(
    app: Celeriac, worker: WorkerThread, tasks: list[str], gate: threading.Event
) -> None:
    blocker = app.send_task("t.block")
    inspect = app.control.inspect(destination=HOST)
    wait_until(lambda: only(inspect.active()), 5, "the blocker to run")
    waiting = app.send_task("t.note", ("waiting",))
    wait_until(lambda: only(inspect.reserved()), 5, "the task to be held")
    reply = app.control.revoke(waiting.id, destination=HOST, reply=True)
    assert "flagged as revoked" in only(reply)["ok"]
    gate.set()
    assert blocker.get(timeout=5) is True
    with pytest.raises(TaskRevokedError):
        waiting.get(timeout=5)
    assert tasks == []


def test_terminate_in_a_thread_pool_says_it_cannot(
    app: Celeriac, worker: WorkerThread, gate: threading.Event
) -> None:
    running = app.send_task("t.block")
    wait_until(lambda: only(app.control.inspect(destination=HOST).active()), 5, "a running task")
    reply = only(app.control.terminate(running.id, destination=HOST, reply=True))["ok"]
    assert "terminated: none" in reply and "threads pool cannot stop a running task" in reply


# -- changing the worker -------------------------------------------------------------------------


def test_add_and_cancel_consumer(app: Celeriac, worker: WorkerThread) -> None:
    control = app.control
    reply = control.add_consumer("extra", destination=HOST, reply=True)
    assert only(reply) == {"ok": "now consuming from extra"}
    assert only(control.add_consumer("extra", destination=HOST, reply=True))["ok"].startswith(
        "already"
    )
    assert app.send_task("t.add", (1, 1), queue="extra").get(timeout=5) == 2
    assert only(control.cancel_consumer("extra", destination=HOST, reply=True))["ok"]
    queues = only(control.inspect(destination=HOST).active_queues())
    assert [q["name"] for q in queues] == ["celeriac", "second"]
    control.cancel_consumer("second", destination=HOST, reply=True)
    error = only(control.cancel_consumer("celeriac", destination=HOST, reply=True))["error"]
    assert "only queue" in error


def test_pool_grow_and_shrink_a_thread_pool(app: Celeriac, worker: WorkerThread) -> None:
    control = app.control
    assert only(control.pool_grow(2, destination=HOST, reply=True)) == {"ok": "pool grown to 3"}
    stats = only(control.inspect(destination=HOST).stats())
    assert stats["pool"]["max-concurrency"] == 3 and stats["prefetch_count"] == 12
    assert only(control.pool_shrink(2, destination=HOST, reply=True)) == {"ok": "pool shrunk to 1"}
    error = only(control.pool_shrink(1, destination=HOST, reply=True))["error"]
    assert "cannot shrink" in error


def test_shutdown_stops_an_in_process_worker(app: Celeriac, tasks: list[str]) -> None:
    thread = WorkerThread(app).start()
    try:
        reply = app.control.shutdown(destination=HOST, reply=True)
        assert only(reply) == {"ok": "shutting down"}
        assert thread.consumer.stopping.wait(5)
    finally:
        thread.stop()


# -- real worker processes on SQLite -----------------------------------------------------------

TASKS = """
    import os
    import time
    from pathlib import Path

    from celeriac import Celeriac

    app = Celeriac("ctlproc", broker={url!r})


    @app.task
    def mark(path):
        Path(path).write_text(str(os.getpid()))
        return True


    @app.task
    def linger(started):
        Path(started).write_text(str(os.getpid()))
        time.sleep(30)
        return "finished"
"""


@pytest.fixture
def client(tmp_path: Path, engine_url: str, no_celeriac_env: None) -> Iterator[Celeriac]:
    """A client of a fresh broker of each engine, and the task module ``ctlproc`` on it."""
    url = engine_url
    write_module(tmp_path, "ctlproc", TASKS.format(url=url))
    application = Celeriac("client", broker=url)
    yield application
    application.close()


def test_inspect_and_revoke_across_processes(
    client: Celeriac, start_worker_process: StartWorker, tmp_path: Path
) -> None:
    worker = start_worker_process("ctlproc", "-c", "2", "-n", "ctl1@%h")
    name = default_hostname("ctl1@%h")
    started = tmp_path / "started"
    running = client.send_task("ctlproc.linger", (str(started),))
    wait_until(started.exists, 10, "the long task to start")
    inspect = client.control.inspect(destination=name, timeout=2)
    active = inspect.active()
    assert active is not None and [t["id"] for t in active[name]] == [running.id]
    stats = inspect.stats()
    assert stats is not None and len(stats[name]["pool"]["processes"]) == 2
    child = int(started.read_text())
    reply = client.control.revoke(running.id, destination=name, terminate=True, reply=True)
    assert f"terminated: {running.id}" in only_any(reply)[name]["ok"]
    with pytest.raises(TaskRevokedError, match="terminated"):
        running.get(timeout=10)
    assert not Path(f"/proc/{child}").exists() or child_is_gone(child)
    assert "Terminating ctlproc.linger" in worker.log()
    doomed_mark = tmp_path / "doomed"
    doomed = client.send_task("ctlproc.mark", (str(doomed_mark),), countdown=0.5)
    doomed.revoke()
    with pytest.raises(TaskRevokedError):
        doomed.get(timeout=10)
    assert not doomed_mark.exists()
    assert client.send_task("ctlproc.mark", (str(tmp_path / "ok"),)).get(timeout=10) is True


def only_any(replies: Any) -> dict[str, Any]:
    """The one reply of a worker process, whatever its name."""
    merged = {k: v for reply in replies for k, v in reply.items()}
    assert len(merged) == 1, merged
    return merged


def child_is_gone(pid: int) -> bool:
    """A killed child may linger as a zombie until reaped; it no longer runs."""
    return "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_pool_grow_adds_a_process_and_shutdown_stops_gracefully(
    client: Celeriac, start_worker_process: StartWorker
) -> None:
    worker = start_worker_process("ctlproc", "-c", "1", "-n", "ctl2@%h")
    name = default_hostname("ctl2@%h")
    reply = client.control.pool_grow(1, destination=name, reply=True, timeout=5)
    assert only_any(reply)[name] == {"ok": "pool grown to 2"}
    stats = client.control.inspect(destination=name, timeout=2).stats()
    assert stats is not None and len(stats[name]["pool"]["processes"]) == 2
    reply = client.control.shutdown(destination=name, reply=True, timeout=5)
    assert only_any(reply)[name] == {"ok": "shutting down"}
    assert worker.wait(20) == 0
    assert "Shutting down gracefully: asked to by remote control" in worker.log()
    assert client.control.ping(destination=name, timeout=0.3) == []
