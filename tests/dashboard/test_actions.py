"""The dashboard's actions against real workers: revoke, terminate, retry, redrive (once, however
often the form is sent), pool grow and shrink, shutdown; and live progress."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import WorkerProcess, wait_until

from celeriac.dashboard.actions import ACTION_KEY

from .support import Project, Served, csrf, wait_for_task

pytestmark = pytest.mark.timeout(90)


def act(client: httpx.Client, kind: str, **fields: str) -> dict[str, Any]:
    """POST an action as the page's form would (with a CSRF token); the JSON answer."""
    answer = client.post(f"/actions/{kind}", data={"csrf": csrf(client), **fields},
                         headers={"accept": "application/json"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def test_terminate_stops_a_running_task(open_dashboard: Served, project: Project) -> None:
    started, release = project.path / "t-started", project.path / "t-release"
    task = project.send("hold", str(started), str(release))
    wait_until(started.exists, 15, "the task to start")
    with open_dashboard.client() as client:
        said = act(client, "task", task_id=task, command="terminate")["message"]
        found = wait_for_task(client, task, lambda t: t["state"] == "REVOKED")
    assert f"Revoked {task}" in said and "terminated" in said
    assert found["revoke_requested"] is True
    assert "revoked" in [event["event"] for event in found["timeline"]]


def test_revoke_a_waiting_task(open_dashboard: Served, project: Project) -> None:
    task = project.app.send_task("dashproj.add", (1, 1), countdown=1.0).id
    with open_dashboard.client() as client:
        act(client, "task", task_id=task, command="revoke")
        found = wait_for_task(client, task, lambda t: t["state"] == "REVOKED")
    assert found["stored"]["state"] == "REVOKED"


def test_retry_sends_the_task_again(open_dashboard: Served, project: Project) -> None:
    task = project.send("add", 20, 22)
    with open_dashboard.client() as client:
        wait_for_task(client, task, lambda t: t["state"] == "SUCCESS")
        said = act(client, "task", task_id=task, command="retry")["message"]
    assert said.startswith("Sent dashproj.add again as ")
    again = said.rsplit(" ", 1)[1]
    assert again != task
    assert project.app.AsyncResult(again).get(timeout=15) == 42


def _dead_letter(project: Project, queue: str) -> str:
    """A message put on ``queue`` (no worker takes from it) and dead-lettered; its id."""
    broker = project.app.broker
    broker.publish(queue, b"not a task message")
    [delivery] = broker.fetch([queue], 1, timeout=5)
    assert broker.dead_letter(delivery, "test-reason")
    return delivery.message_id


def test_redrive_happens_once_however_often_the_form_is_sent(
    open_dashboard: Served, project: Project
) -> None:
    queue = f"q-{secrets.token_hex(4)}"
    message_id = _dead_letter(project, queue)
    with open_dashboard.client() as client:
        letters = client.get("/api/queues").json()["letters"]
        [letter] = [d for d in letters if d["id"] == message_id]
        assert letter["reason"] == "test-reason" and letter["queue"] == queue
        assert isinstance(letter["history"], list)
        action_id = secrets.token_urlsafe(12)
        first = act(client, "redrive", id=message_id, action_id=action_id)["message"]
        second = act(client, "redrive", id=message_id, action_id=action_id)["message"]
        third = act(client, "redrive", id=message_id)["message"]  # a new form: the broker's word
    assert first == f"Redrove {message_id}."
    assert second.startswith("Already done") and first in second
    assert "no longer in the dead-letter queue" in third
    assert project.app.broker.size(queue) == 1
    assert project.app.broker.get(ACTION_KEY + action_id) is not None


def test_redrive_all_happens_once(open_dashboard: Served, project: Project) -> None:
    queue = f"q-{secrets.token_hex(4)}"
    for _ in range(3):
        _dead_letter(project, queue)
    with open_dashboard.client() as client:
        page = client.get("/queues").text
        assert page.count("test-reason") >= 3
        action_id = secrets.token_urlsafe(12)
        first = act(client, "redrive", all="1", action_id=action_id)["message"]
        again = act(client, "redrive", all="1", action_id=action_id)["message"]
    assert first.startswith(("3 dead letter", "4 dead letter", "5 dead letter"))
    assert again.startswith("Already done")
    assert project.app.broker.size(queue) == 3


def test_a_form_posted_twice_redirects_back_with_what_happened(
    open_dashboard: Served, project: Project
) -> None:
    queue = f"q-{secrets.token_hex(4)}"
    message_id = _dead_letter(project, queue)
    with open_dashboard.client() as client:
        form = {"csrf": csrf(client), "id": message_id, "action_id": "form-1-" + queue,
                "next": "/queues"}  # fmt: skip
        answers = [client.post("/actions/redrive", data=form) for _ in range(2)]
        assert [a.status_code for a in answers] == [303, 303]
        assert answers[0].headers["location"] == f"/queues?done=form-1-{queue}"
        page = client.get(answers[1].headers["location"]).text
    assert f"Redrove {message_id}." in page
    assert project.app.broker.size(queue) == 1


def test_pool_grow_and_shrink(open_dashboard: Served, project: Project) -> None:
    host = wait_until(lambda: _online(open_dashboard), 15, "the worker in the dashboard")[0]
    with open_dashboard.client() as client:
        grown = act(client, "worker", hostname=host, command="pool_grow", n="1")["message"]
        shrunk = act(client, "worker", hostname=host, command="pool_shrink", n="1")["message"]
        bad = client.post("/actions/worker", data={"csrf": csrf(client), "hostname": host,
                                                   "command": "pool_grow", "n": "0"})  # fmt: skip
    assert f"{host}: pool grown to 3" in grown
    assert f"{host}: pool shrunk to 2" in shrunk
    assert bad.status_code == 400 and "between 1 and 100" in bad.json()["message"]


def _online(served: Served) -> list[str]:
    with served.client() as client:
        rows = client.get("/api/workers").json()["workers"]
    return [row["hostname"] for row in rows if row["status"] == "online"]


def test_shutdown_stops_a_worker(open_dashboard: Served, project: Project, tmp_path: Path) -> None:
    worker = WorkerProcess("dashproj", ["-c", "1", "-P", "solo", "-n", "doomed@%h"],
                           project.path, tmp_path / "doomed.log")  # fmt: skip
    try:
        worker.wait_ready()
        host = wait_until(lambda: [h for h in _online(open_dashboard) if h.startswith("doomed@")],
                          15, "the second worker")[0]  # fmt: skip
        with open_dashboard.client() as client:
            said = act(client, "worker", hostname=host, command="shutdown")["message"]
            assert f"{host}: shutting down" in said
            assert worker.wait(20) == 0
            wait_until(lambda: host not in _online(open_dashboard), 10, "the worker offline")
    finally:
        worker.stop()


def test_progress_is_live(open_dashboard: Served, project: Project) -> None:
    release = project.path / "steps"
    task = project.send("steps", str(release), 4)
    seen = []
    with open_dashboard.client() as client:
        for done in range(5):
            found = wait_for_task(client, task, lambda t, d=done: t["progress"] == d / 4)
            seen.append(found["progress"])
            Path(f"{release}.{done}").write_text("go")
        found = wait_for_task(client, task, lambda t: t["state"] == "SUCCESS")
    assert seen == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert found["progress"] == 1.0 and found["result"] == "4"
