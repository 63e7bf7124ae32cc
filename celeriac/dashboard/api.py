"""The JSON API and the live stream (Server-Sent Events) that the pages' script listens to,
and ``/metrics`` for Prometheus.

``GET /stream?view=overview|workers|tasks|task|queues`` sends one ``event: <view>`` with the
view's data at once, then again whenever it changed (checked every ``TICKS[view]`` seconds),
and a comment line every ``KEEPALIVE`` seconds so proxies keep the connection open.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from celeriac.dashboard import data
from celeriac.dashboard.pages import task_query
from celeriac.dashboard.security import csrf_for, principal_of
from celeriac.errors import MissingExtraError

if TYPE_CHECKING:
    from celeriac.dashboard.monitor import Monitor

#: Seconds between looks at a view's data: a task's progress is watched most closely.
TICKS = {"overview": 1.0, "workers": 1.0, "tasks": 1.0, "task": 0.3, "queues": 2.0}
KEEPALIVE = 15.0

View = Callable[["Monitor", Request], Any]


def _overview(monitor: Monitor, request: Request) -> Any:
    return {**data.overview(monitor), "worker_rows": data.workers(monitor)}


def _workers(monitor: Monitor, request: Request) -> Any:
    return {"workers": data.workers(monitor)}


def _tasks(monitor: Monitor, request: Request) -> Any:
    return data.task_page(monitor, task_query(request))


def _task(monitor: Monitor, request: Request) -> Any:
    task_id = request.query_params.get("task_id") or request.path_params.get("task_id", "")
    return data.task_detail(monitor, task_id)


def _queues(monitor: Monitor, request: Request) -> Any:
    summary = data.overview(monitor)
    return {"queues": data.queues(monitor), "dead": summary["dead"],
            "dead_more": summary["dead_more"], "letters": data.dead_letters(monitor)}  # fmt: skip


VIEWS: dict[str, View] = {
    "overview": _overview, "workers": _workers, "tasks": _tasks, "task": _task,
    "queues": _queues,
}  # fmt: skip


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def endpoint(view: str) -> Callable[[Request], Any]:
    """``GET /api/<view>``: the view's data as JSON."""

    def answer(request: Request) -> Response:
        found = VIEWS[view](request.app.state.monitor, request)
        if found is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        return Response(_json(found), media_type="application/json")

    return answer


def session(request: Request) -> Response:
    """``GET /api/session``: who you are, and the CSRF token for POSTs from a program."""
    principal = principal_of(request)
    return JSONResponse({"name": principal.name if principal else None,
                         "role": principal.role if principal else None,
                         "csrf": csrf_for(request)})  # fmt: skip


def metrics(request: Request) -> Response:
    """``GET /metrics``: queue depths and the dead-letter count in Prometheus' text format, for
    every queue the dashboard knows (see ``Monitor.known_queues``), read from the broker now.
    Needs the ``metrics`` extra; without it the answer is 501 and names what to install."""
    try:
        from celeriac import metrics as prometheus
    except MissingExtraError as exc:
        return PlainTextResponse(f"{exc}\n", status_code=501)
    monitor: Monitor = request.app.state.monitor
    body = prometheus.render(monitor.app, monitor.known_queues())
    return Response(body, media_type=prometheus.CONTENT_TYPE)


async def stream(request: Request) -> Response:
    """``GET /stream?view=...``: the view's data whenever it changed."""
    view = request.query_params.get("view", "overview")
    build = VIEWS.get(view)
    if build is None:
        return JSONResponse({"error": f"no view {view!r}"}, status_code=404)
    monitor: Monitor = request.app.state.monitor
    headers = {"x-accel-buffering": "no", "cache-control": "no-store"}
    return StreamingResponse(_events(monitor, request, view, build),
                             media_type="text/event-stream", headers=headers)  # fmt: skip


async def _events(monitor: Monitor, request: Request, view: str, build: View) -> AsyncIterator[str]:
    last, quiet_since = "", time.monotonic()
    yield "retry: 2000\n\n"
    while True:
        text = _json(await run_in_threadpool(build, monitor, request))
        if text != last:
            last, quiet_since = text, time.monotonic()
            yield f"event: {view}\ndata: {text}\n\n"
        elif time.monotonic() - quiet_since > KEEPALIVE:
            quiet_since = time.monotonic()
            yield ": keep-alive\n\n"
        await asyncio.sleep(TICKS[view])
