"""Every route of the dashboard over real HTTP (uvicorn), against a real worker process on a
SQLite file: what each serves, who may see it, who may act, CSRF, and escaping."""

from __future__ import annotations

from contextlib import closing

import pytest
from helpers import wait_until

from celeriac.dashboard import Auth, create_app
from celeriac.dashboard.security import COOKIE

from .support import (
    OPERATOR_NAME,
    OPERATOR_PASSWORD,
    OPERATOR_TOKEN,
    READ_TOKEN,
    READER,
    READER_PASSWORD,
    Project,
    Served,
    csrf,
    signed_in,
    wait_for_task,
)  # fmt: skip

pytestmark = pytest.mark.timeout(90)

#: Every GET route (``{id}``: a task id), and every POST route.
PAGES = ["/", "/workers", "/tasks", "/tasks/{id}", "/queues"]
API = ["/api/overview", "/api/workers", "/api/tasks", "/api/tasks/{id}", "/api/queues",
       "/api/session"]  # fmt: skip
METRICS = ["/metrics"]
POSTS = ["/actions/worker", "/actions/task", "/actions/redrive", "/actions/rate_limit", "/logout"]
PUBLIC = ["/login", "/static/dashboard.js", "/static/dashboard.css"]


@pytest.fixture(scope="module")
def task_id(project: Project, open_dashboard: Served) -> str:
    """A task the dashboard knows (it succeeded)."""
    task = project.send("add", 2, 3)
    with open_dashboard.client() as client:
        wait_for_task(client, task, lambda t: t["state"] == "SUCCESS")
    return task


def test_the_lists_above_name_every_route(project: Project) -> None:
    served = create_app(project.app, auth=Auth())
    paths = {getattr(route, "path", "") for route in served.routes}
    listed = {p.replace("{id}", "{task_id}") for p in PAGES + API + METRICS + POSTS}
    listed |= {"/login", "/stream", "/static", "/actions/{kind}"}
    assert paths - {"/actions/{kind}"} <= listed | {"/static"}, paths - listed


@pytest.mark.parametrize("path", PAGES + API + METRICS)
def test_open_dashboard_serves_every_route(open_dashboard: Served, task_id: str, path: str) -> None:
    with open_dashboard.client() as client:
        answer = client.get(path.format(id=task_id))
    assert answer.status_code == 200, answer.text
    headers = answer.headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "unsafe-inline" not in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert "access-control-allow-origin" not in headers
    if path.startswith("/api/"):
        assert answer.json()


def test_the_stream_sends_the_view_at_once(open_dashboard: Served, task_id: str) -> None:
    for view, query in (("overview", ""), ("task", f"&task_id={task_id}"), ("tasks", ""),
                        ("workers", ""), ("queues", "")):  # fmt: skip
        with open_dashboard.client() as client, client.stream(
            "GET", f"/stream?view={view}{query}"
        ) as answer:
            assert answer.headers["content-type"].startswith("text/event-stream")
            lines = answer.iter_lines()
            assert next(line for line in lines if line.startswith("event:")) == f"event: {view}"
            data = next(lines)
            assert data.startswith("data: {")
            assert view != "task" or f'"uuid":"{task_id}"' in data


@pytest.mark.parametrize("path", PAGES + API + METRICS + ["/stream?view=overview"])
def test_secured_routes_need_credentials(secured_dashboard: Served, path: str) -> None:
    with secured_dashboard.client() as client:
        page = client.get(path.format(id="x"), headers={"accept": "text/html"})
        data = client.get(path.format(id="x"), headers={"accept": "application/json"})
    if path in PAGES or path.format(id="x") in (p.format(id="x") for p in PAGES):
        assert page.status_code == 303
        assert page.headers["location"].startswith("/login?next=")
    else:
        assert page.status_code == 401
    assert data.status_code == 401
    assert data.json() == {"error": "authentication required"}


@pytest.mark.parametrize("path", POSTS)
def test_secured_posts_need_credentials(secured_dashboard: Served, path: str) -> None:
    with secured_dashboard.client() as client:
        assert client.post(path, data={"csrf": "x"}).status_code == 401


@pytest.mark.parametrize("path", PUBLIC)
def test_login_form_and_static_files_are_public(secured_dashboard: Served, path: str) -> None:
    with secured_dashboard.client() as client:
        assert client.get(path).status_code == 200


def test_read_token_sees_but_cannot_act(secured_dashboard: Served, task_id: str) -> None:
    with secured_dashboard.client(headers={"authorization": f"Bearer {READ_TOKEN}"}) as client:
        assert client.get(f"/tasks/{task_id}").status_code == 200
        session = client.get("/api/session").json()
        assert session["role"] == "read"
        answer = client.post("/actions/task", data={"csrf": session["csrf"], "task_id": task_id,
                                                    "command": "revoke"})  # fmt: skip
    assert answer.status_code == 403
    assert "operator" in answer.json()["error"]


def test_operator_token_acts_only_with_the_csrf_token(
    secured_dashboard: Served, project: Project
) -> None:
    form = {"hostname": "nobody@nowhere", "command": "pool_grow", "n": "1"}
    headers = {"authorization": f"Bearer {OPERATOR_TOKEN}", "accept": "application/json"}
    with secured_dashboard.client(headers=headers) as client:
        assert client.post("/actions/worker", data=form).status_code == 403
        assert client.post("/actions/worker", data={**form, "csrf": "0" * 64}).status_code == 403
        answer = client.post("/actions/worker", data=form,
                             headers={"x-csrf-token": csrf(client)})  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert "no worker replied" in answer.json()["message"]


def test_wrong_token_and_wrong_basic_password_are_refused(secured_dashboard: Served) -> None:
    with secured_dashboard.client() as client:
        wrong = client.get("/api/overview", headers={"authorization": "Bearer " + "x" * 30})
        basic = client.get("/api/overview", auth=(OPERATOR_NAME, "wrong"))
        right = client.get("/api/overview", auth=(OPERATOR_NAME, OPERATOR_PASSWORD))
    assert (wrong.status_code, basic.status_code, right.status_code) == (401, 401, 200)


def test_login_sets_a_strict_cookie_and_logout_ends_it(secured_dashboard: Served) -> None:
    with secured_dashboard.client() as client:
        page = client.get("/login")
        token = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        wrong = client.post("/login", data={"csrf": token, "name": READER, "password": "nope"})
        assert wrong.status_code == 401
        assert "Wrong name, password or token." in wrong.text
        no_csrf = client.post("/login", data={"name": READER, "password": READER_PASSWORD})
        assert no_csrf.status_code == 401 and "expired" in no_csrf.text
    with closing(signed_in(secured_dashboard, READER, READER_PASSWORD)) as client:
        cookie = client.get("/").headers.get("set-cookie", "")
        assert cookie == ""  # the session cookie was set at sign-in, not on every page
        assert client.get("/").status_code == 200
        assert client.get("/api/session").json()["name"] == READER
        out = client.post("/logout", data={"csrf": csrf(client)})
        assert out.status_code == 303
        assert "HttpOnly" in out.headers["set-cookie"]
        assert "SameSite=Strict" in out.headers["set-cookie"]
        assert client.get("/api/overview").status_code == 401


def test_a_reader_sees_disabled_buttons_and_is_refused(
    secured_dashboard: Served, task_id: str
) -> None:
    with closing(signed_in(secured_dashboard, READER, READER_PASSWORD)) as client:
        page = client.get(f"/tasks/{task_id}").text
        assert 'disabled title="needs the operator role"' in page
        answer = client.post("/actions/task", data={"csrf": csrf(client), "task_id": task_id,
                                                    "command": "retry"})  # fmt: skip
        assert answer.status_code == 403


def test_a_forged_cookie_is_nobody(secured_dashboard: Served) -> None:
    with closing(signed_in(secured_dashboard, OPERATOR_NAME, OPERATOR_PASSWORD)) as client:
        value = client.cookies[COOKIE]
        payload, _, signature = value.partition(".")
        client.cookies.set(COOKIE, payload + "." + "0" * len(signature))
        assert client.get("/api/overview").status_code == 401


def test_actions_need_the_csrf_token_of_the_same_session(open_dashboard: Served) -> None:
    form = {"hostname": "nobody@nowhere", "command": "shutdown"}
    with open_dashboard.client() as one, open_dashboard.client() as other:
        theirs = csrf(other)
        mine = csrf(one)
        assert one.post("/actions/worker", data=form).status_code == 403
        assert one.post("/actions/worker", data={**form, "csrf": theirs}).status_code == 403
        cross = one.post("/actions/worker", data={**form, "csrf": mine},
                         headers={"origin": "http://evil.example"})  # fmt: skip
        assert cross.status_code == 403
        assert one.post("/actions/worker", data={**form, "csrf": mine}).status_code == 303


def test_open_dashboard_refuses_other_host_names(open_dashboard: Served) -> None:
    """DNS rebinding: a page of evil.example pointed at 127.0.0.1 must not read the dashboard."""
    with open_dashboard.client() as client:
        answer = client.get("/", headers={"host": "evil.example"})
    assert answer.status_code == 403
    assert "loopback" in answer.text


def test_markup_is_shown_as_text(open_dashboard: Served, project: Project) -> None:
    script = "<script>alert('pwned')</script>"
    task = project.send("fail", script)
    with open_dashboard.client() as client:
        wait_for_task(client, task, lambda t: t["state"] == "FAILURE")
        for path in (f"/tasks/{task}", "/tasks", f"/tasks?q={task}"):
            page = client.get(path).text
            assert script not in page
            assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in page, path
        assert "<script" not in client.get("/tasks?q=<script>").text.replace(
            '<script src="/static/dashboard.js" defer></script>', "")


def test_sensitive_arguments_are_masked(open_dashboard: Served, project: Project) -> None:
    task = project.app.send_task("dashproj.echo", ("visible",), {"password": "hunter2"}).id
    with open_dashboard.client() as client:
        found = wait_for_task(client, task, lambda t: t["state"] == "SUCCESS")
        page = client.get(f"/tasks/{task}").text
        listing = client.get("/api/tasks", params={"q": task}).text
    assert "hunter2" not in page + listing + str(found)
    assert "&#39;password&#39;: &#39;***&#39;" in page
    assert "visible" in page


def test_task_page_shows_the_workflow_tree(open_dashboard: Served, project: Project) -> None:
    parent = project.send("parent", 2)
    with open_dashboard.client() as client:
        found = wait_for_task(client, parent, lambda t: len(t["children"]) == 2)
        child = found["children"][0]
        child_page = client.get(f"/tasks/{child}").text
        wait_until(lambda: client.get(f"/api/tasks/{child}").json()["state"] == "SUCCESS")
    assert f'href="/tasks/{parent}"' in child_page  # the parent link, and the tree's root
    assert [node["uuid"] for node in found["tree"]["children"]] == sorted(found["children"])
    assert [e["event"] for e in found["timeline"]][:3] == ["sent", "received", "started"]


def test_unknown_task_is_404(open_dashboard: Served) -> None:
    with open_dashboard.client() as client:
        assert client.get("/tasks/no-such-task").status_code == 404
        assert client.get("/api/tasks/no-such-task").status_code == 404
        assert client.get("/stream?view=nonsense").status_code == 404


def test_task_list_filters_searches_and_pages(open_dashboard: Served, project: Project) -> None:
    ids = [project.send("add", i, i) for i in range(3)]
    failed = project.send("fail", "filtered")
    with open_dashboard.client() as client:
        wait_for_task(client, failed, lambda t: t["state"] == "FAILURE")
        for task in ids:
            wait_for_task(client, task, lambda t: t["state"] == "SUCCESS")
        by_state = client.get("/api/tasks", params={"state": "FAILURE"}).json()
        by_name = client.get("/api/tasks", params={"name": "dashproj.add",
                                                   "worker": by_state["rows"][0]["worker"]}).json()
        by_search = client.get("/api/tasks", params={"q": ids[1]}).json()
        past_end = client.get("/api/tasks", params={"page": "999"}).json()
        html = client.get("/tasks", params={"state": "FAILURE", "name": "dashproj.fail"}).text
    assert {row["state"] for row in by_state["rows"]} == {"FAILURE"}
    assert failed in {row["uuid"] for row in by_state["rows"]}
    assert set(ids) <= {row["uuid"] for row in by_name["rows"]}
    assert {row["name"] for row in by_name["rows"]} == {"dashproj.add"}
    assert [row["uuid"] for row in by_search["rows"]] == [ids[1]] and by_search["total"] == 1
    assert past_end["rows"] == [] and past_end["page"] == 999
    assert failed in html and ids[0] not in html


def test_queues_page_shows_depths(open_dashboard: Served, project: Project) -> None:
    project.send("parked")
    with open_dashboard.client() as client:
        wait_until(lambda: client.get("/api/queues").json()["queues"], 10, "queue depths")
        depths = wait_until(
            lambda: {q["name"]: q["depth"] for q in client.get("/api/queues").json()["queues"]
                     if q["depth"]}, 10, "the parked queue to fill")  # fmt: skip
        overview = client.get("/api/overview").json()
    assert depths.get("parked", 0) >= 1
    assert overview["depths"]["parked"] >= 1
    assert "celeriac" in overview["depths"]
