"""The HTML pages: overview, workers, tasks, one task, queues and dead letters, and the login form.

Handlers are plain functions (Starlette runs them in a thread): they read the monitor, and
some ask the broker, which may block.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from celeriac import states
from celeriac.dashboard import data
from celeriac.dashboard.actions import flash, read_form
from celeriac.dashboard.auth import Auth
from celeriac.dashboard.render import render
from celeriac.dashboard.security import base_path, session_cookie

if TYPE_CHECKING:
    from celeriac.dashboard.monitor import Monitor

STATES = sorted(states.ALL_STATES)


def _monitor(request: Request) -> Monitor:
    monitor: Monitor = request.app.state.monitor
    return monitor


def _page(request: Request, template: str, view: str, **context: Any) -> Response:
    """Render a page whose live updates come from ``/stream?view=...`` (with the page's query,
    and the task's id on a task's page)."""
    monitor = _monitor(request)
    query = urlencode([("view", view), *request.query_params.multi_items(),
                       *request.path_params.items()])  # fmt: skip
    stream = f"{base_path(request)}/stream?{query}"
    note, refused = flash(monitor.app, request.query_params.get("done", ""))
    return render(request, template, {"view": view, "stream": stream, "note": note,
                                      "note_error": refused, **context})  # fmt: skip


def overview(request: Request) -> Response:
    monitor = _monitor(request)
    return _page(request, "overview.html", "overview", data=data.overview(monitor),
                 workers=data.workers(monitor))  # fmt: skip


def workers(request: Request) -> Response:
    monitor = _monitor(request)
    return _page(request, "workers.html", "workers", workers=data.workers(monitor),
                 task_names=data.registered(monitor), limits=data.rate_limits(monitor))  # fmt: skip


def task_query(request: Request) -> data.TaskQuery:
    """The task list's filter from the query string."""
    params = request.query_params
    try:
        page = max(1, min(100_000, int(params.get("page", "1"))))
    except ValueError:
        page = 1
    fields = {key: params.get(key, "")[:200] for key in ("state", "name", "worker", "queue")}
    return data.TaskQuery(search=params.get("q", "")[:200], page=page, **fields)


def tasks(request: Request) -> Response:
    query = task_query(request)
    listing = data.task_page(_monitor(request), query)
    return _page(request, "tasks.html", "tasks", query=query, listing=listing, states=STATES)


def task(request: Request) -> Response:
    task_id = request.path_params["task_id"]
    found = data.task_detail(_monitor(request), task_id)
    if found is None:
        return render(request, "missing.html", {"task_id": task_id, "view": "", "stream": "",
                                                "note": ""}, status_code=404)  # fmt: skip
    return _page(request, "task.html", "task", task=found, task_id=task_id)


def queues(request: Request) -> Response:
    monitor = _monitor(request)
    summary = data.overview(monitor)
    return _page(
        request, "queues.html", "queues", queues=data.queues(monitor),
        letters=data.dead_letters(monitor), dead=summary["dead"], dead_more=summary["dead_more"],
    )  # fmt: skip


# -- signing in and out ------------------------------------------------------------------------


def _next(text: str) -> str:
    """A local path to go to after signing in (never another site)."""
    parts = urlsplit(text)
    if not text.startswith("/") or text.startswith("//") or parts.netloc or "\\" in text:
        return "/"
    return text


def login_form(request: Request) -> Response:
    auth: Auth = request.app.state.auth
    context = {"next": _next(request.query_params.get("next", "")), "error": "",
               "view": "", "stream": "", "note": "", "open": auth.open}  # fmt: skip
    return render(request, "login.html", context)


async def login(request: Request) -> Response:
    auth: Auth = request.app.state.auth
    form = await read_form(request)
    target = _next(form.get("next", ""))
    sid = str(request.scope["celeriac.sid"])
    if not auth.check_csrf(sid, form.get("csrf", "")):
        error = "The form expired; please try again."
    else:
        token = form.get("token", "")
        if token:
            principal = auth.by_token(token)
        else:
            principal = auth.by_password(form.get("name", ""), form.get("password", ""))
        if principal is not None:
            # A new session id on sign-in, so a session fixed beforehand is worth nothing.
            cookie = auth.sign({"sid": secrets.token_hex(16), "name": principal.name,
                                "role": principal.role})  # fmt: skip
            if not target.startswith(base_path(request)):
                target = base_path(request) + target
            response = RedirectResponse(target, status_code=303)
            _set_cookie(request, response, cookie)
            return response
        error = "Wrong name, password or token."
    context = {"next": target, "error": error, "view": "", "stream": "", "note": "",
               "open": auth.open}  # fmt: skip
    return render(request, "login.html", context, status_code=401)


async def logout(request: Request) -> Response:
    auth: Auth = request.app.state.auth
    form = await read_form(request)
    if not auth.check_csrf(str(request.scope["celeriac.sid"]), form.get("csrf", "")):
        return Response("CSRF token missing or wrong", status_code=403)
    response = RedirectResponse(f"{base_path(request)}/login", status_code=303)
    _set_cookie(request, response, auth.sign({"sid": secrets.token_hex(16)}))
    return response


def _set_cookie(request: Request, response: Response, value: str) -> None:
    secure = request.url.scheme == "https"
    header = session_cookie(value, base_path(request) or "/", secure)
    response.headers.append("set-cookie", header)
