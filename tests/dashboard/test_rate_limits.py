"""Setting and clearing a task's rate limit from the workers page, against a real worker: who
may, the CSRF token, a bad rate shown on the page, and the limit stored in the broker."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import httpx
import pytest
from helpers import wait_until

from celeriac.limits import RATE_LIMIT_KEY

from .support import (
    OPERATOR_TOKEN,
    READ_TOKEN,
    READER,
    READER_PASSWORD,
    Project,
    Served,
    csrf,
    signed_in,
)

pytestmark = pytest.mark.timeout(90)

TASK = "dashproj.echo"


@pytest.fixture(autouse=True)
def no_limit_left(project: Project) -> Iterator[None]:
    """Every test starts and ends with no limit stored for TASK (others send it too)."""
    project.app.control.rate_limit(TASK, None)
    yield
    project.app.control.rate_limit(TASK, None)


def stored(project: Project) -> bytes | None:
    return project.app.broker.get(RATE_LIMIT_KEY + TASK)


def known_to_dashboard(served: Served, **options: Any) -> None:
    """Wait until the dashboard asked the worker which tasks it has."""

    def names() -> set[str]:
        with served.client(**options) as client:
            rows = client.get("/api/workers").json()["workers"]
        return {name for row in rows for name in row["registered"]}

    wait_until(lambda: TASK in names(), 20, f"{TASK} registered in the dashboard")


def post(client: httpx.Client, json: bool = True, **fields: str) -> httpx.Response:
    headers = {"accept": "application/json" if json else "text/html"}
    return client.post("/actions/rate_limit", data={"csrf": csrf(client), **fields},
                       headers=headers)  # fmt: skip


def message(answer: httpx.Response) -> str:
    said: str = answer.json()["message"]
    return said


def test_operator_sets_and_clears_a_limit(open_dashboard: Served, project: Project) -> None:
    known_to_dashboard(open_dashboard)
    with open_dashboard.client() as client:
        set_ = post(client, task=TASK, rate="500/m")
        assert set_.status_code == 200, set_.text
        assert stored(project) == b"500/m"
        page = client.get("/workers").text
        cleared = post(client, task=TASK, rate="")
    assert message(set_).startswith(f"Rate limit of {TASK} set to 500/m for every worker: ")
    assert f"new rate limit of {TASK} set successfully: 500/m (every worker)" in message(set_)
    assert f'<tr data-key="{TASK}"><td class="mono">{TASK}</td><td>500/m</td>' in page
    assert cleared.status_code == 200, cleared.text
    assert f"rate limit of {TASK} back to the task's own (every worker)" in message(cleared)
    assert stored(project) is None


def test_zero_means_no_limit(open_dashboard: Served, project: Project) -> None:
    known_to_dashboard(open_dashboard)
    with open_dashboard.client() as client:
        answer = post(client, task=TASK, rate="0")
    assert f"rate limit of {TASK} disabled successfully" in message(answer)
    assert stored(project) == b"0"


@pytest.mark.parametrize("rate", ["fast", "10/d", "-1/s", "1" * 50])
def test_a_bad_rate_is_refused_and_nothing_stored(open_dashboard: Served, project: Project,
                                                  rate: str) -> None:  # fmt: skip
    known_to_dashboard(open_dashboard)
    with open_dashboard.client() as client:
        answer = post(client, task=TASK, rate=rate)
    assert answer.status_code == 400
    assert answer.json()["ok"] is False
    assert "'10/s', '100/m' or '1000/h'" in message(answer)
    assert stored(project) is None


def test_a_bad_rate_from_the_page_is_shown_on_the_page(
    open_dashboard: Served, project: Project
) -> None:
    known_to_dashboard(open_dashboard)
    action_id = secrets.token_urlsafe(12)
    form = {"task": TASK, "action_id": action_id, "next": "/workers"}
    with open_dashboard.client() as client:
        refused = post(client, json=False, rate="ten per second", **form)
        assert refused.status_code == 303
        assert refused.headers["location"] == f"/workers?done={action_id}"
        page = client.get(refused.headers["location"])
        assert stored(project) is None
        corrected = post(client, json=False, rate="20/s", **form)  # the same form, sent again
        done = client.get(corrected.headers["location"]).text
    assert page.status_code == 200
    assert '<p class="note error" role="status" id="note">Not done: bad rate' in page.text
    assert "&#39;ten per second&#39;" in page.text
    assert stored(project) == b"20/s"
    assert f"Rate limit of {TASK} set to 20/s for every worker" in done
    assert "note error" not in done


def test_a_task_no_worker_has_is_refused(open_dashboard: Served, project: Project) -> None:
    known_to_dashboard(open_dashboard)
    with open_dashboard.client() as client:
        typo = post(client, task="dashproj.ecko", rate="1/s")
        nameless = post(client, task=" ", rate="1/s")
    assert typo.status_code == 400
    assert "no worker has registered a task named 'dashproj.ecko'" in message(typo)
    assert project.app.broker.get(RATE_LIMIT_KEY + "dashproj.ecko") is None
    assert nameless.status_code == 400 and "which task?" in message(nameless)


def test_a_reader_cannot_set_a_limit(secured_dashboard: Served, project: Project) -> None:
    with secured_dashboard.client(headers={"authorization": f"Bearer {READ_TOKEN}"}) as client:
        answer = post(client, task=TASK, rate="1/s")
    assert answer.status_code == 403
    assert "operator" in answer.json()["error"]
    assert stored(project) is None
    with closing(signed_in(secured_dashboard, READER, READER_PASSWORD)) as client:
        page = client.get("/workers").text
    form = page.split('action="/actions/rate_limit"', 1)[1].split("</form>", 1)[0]
    assert 'disabled title="needs the operator role"' in form


def test_an_operator_needs_the_csrf_token(secured_dashboard: Served, project: Project) -> None:
    known_to_dashboard(secured_dashboard, headers={"authorization": f"Bearer {READ_TOKEN}"})
    headers: dict[str, Any] = {"authorization": f"Bearer {OPERATOR_TOKEN}",
                               "accept": "application/json"}  # fmt: skip
    form = {"task": TASK, "rate": "30/s"}
    with secured_dashboard.client(headers=headers) as client:
        without = client.post("/actions/rate_limit", data=form)
        wrong = client.post("/actions/rate_limit", data={**form, "csrf": "0" * 64})
        assert (without.status_code, wrong.status_code) == (403, 403)
        assert stored(project) is None
        right = client.post("/actions/rate_limit", data=form,
                            headers={"x-csrf-token": csrf(client)})  # fmt: skip
    assert right.status_code == 200, right.text
    assert stored(project) == b"30/s"
