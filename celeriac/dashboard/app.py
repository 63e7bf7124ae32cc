"""The dashboard as an ASGI app: ``create_app(app)`` builds it, to serve with uvicorn (what
``celeriac dashboard`` does) or to mount in another ASGI app, such as a Django project's.

    GET  /                    overview            GET /api/overview, /api/workers, /api/tasks,
    GET  /workers             workers                 /api/tasks/{id}, /api/queues: the same
    GET  /tasks               tasks (filters)         data as JSON; /api/session: who you are
    GET  /tasks/{id}          one task                and your CSRF token
    GET  /queues              queues, dead letters GET /stream?view=...: live updates (SSE)
    GET  /login, POST /login, POST /logout          POST /actions/{worker,task,redrive,
    GET  /static/...          the page script and        rate_limit}: what operators do
                              style sheet          GET /metrics: for Prometheus
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from celeriac.dashboard import actions, api, pages
from celeriac.dashboard.auth import Auth
from celeriac.dashboard.monitor import Monitor
from celeriac.dashboard.security import Guard

if TYPE_CHECKING:
    from celeriac.app import Celeriac

STATIC = Path(__file__).parent / "static"


class _StartMonitor:
    """Starts the monitor on the first request: a mounted app gets no lifespan events."""

    def __init__(self, app: ASGIApp, monitor: Monitor) -> None:
        self.app = app
        self.monitor = monitor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.monitor.start()
        await self.app(scope, receive, send)


def routes() -> list[Route | Mount]:
    """Every route of the dashboard."""
    return [
        Route("/", pages.overview, name="overview"),
        Route("/workers", pages.workers, name="workers"),
        Route("/tasks", pages.tasks, name="tasks"),
        Route("/tasks/{task_id}", pages.task, name="task"),
        Route("/queues", pages.queues, name="queues"),
        Route("/login", pages.login_form, methods=["GET"]),
        Route("/login", pages.login, methods=["POST"]),
        Route("/logout", pages.logout, methods=["POST"]),
        Route("/actions/{kind}", actions.perform, methods=["POST"]),
        *(Route(f"/api/{view}", api.endpoint(view)) for view in ("overview", "workers",
                                                                  "tasks", "queues")),
        Route("/api/tasks/{task_id}", api.endpoint("task")),
        Route("/api/session", api.session),
        Route("/stream", api.stream),
        Route("/metrics", api.metrics),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]


def create_app(
    app: Celeriac, *, auth: Auth | None = None, max_tasks: int = 100_000
) -> Starlette:
    """The dashboard for ``app``; credentials from ``auth`` (default: the environment, see
    ``celeriac.dashboard.auth``). With none it serves loopback clients only."""
    auth = auth if auth is not None else Auth.from_env()
    monitor = Monitor(app, max_tasks=max_tasks)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        monitor.start()
        yield
        monitor.stop()

    dashboard = Starlette(
        routes=routes(),
        middleware=[Middleware(Guard, auth=auth), Middleware(_StartMonitor, monitor=monitor)],
        lifespan=lifespan,
    )
    dashboard.state.monitor = monitor
    dashboard.state.auth = auth
    return dashboard
