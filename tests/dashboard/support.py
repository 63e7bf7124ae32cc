"""Helpers for the dashboard tests: a task module with a real worker process, dashboards
served by a real uvicorn on a free loopback port, and clients of both roles."""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from helpers import WorkerProcess, wait_until, write_module
from redis_server import free_port

from celeriac import Celeriac
from celeriac.dashboard import Auth, User, hash_password
from celeriac.dashboard.auth import OPERATOR, READ

TASKS = """
    import time
    from pathlib import Path

    from celeriac import Celeriac

    app = Celeriac("dashproj", broker={url!r}, result_extended=True, task_send_sent_event=True,
                   task_routes={{"dashproj.parked": {{"queue": "parked"}}}})


    @app.task
    def add(x, y):
        return x + y


    @app.task
    def echo(value, password=None):
        return value


    @app.task
    def fail(text):
        raise ValueError(text)


    @app.task
    def parked():
        return "no worker takes tasks from this queue"


    @app.task
    def hold(started, release):
        Path(started).write_text("started")
        while not Path(release).exists():
            time.sleep(0.01)
        return "released"


    @app.task(bind=True)
    def steps(self, release, total=5):
        for done in range(total + 1):
            self.update_state(state="PROGRESS", meta={{"current": done, "total": total}})
            while not Path(f"{{release}}.{{done}}").exists():
                time.sleep(0.01)
        return total


    @app.task
    def parent(n):
        return [child.delay(i).id for i in range(n)]


    @app.task
    def child(i):
        return i
"""

#: Passwords and tokens of the secured dashboard's people.
READER, READER_PASSWORD = "reader", "reader-password-1"
OPERATOR_NAME, OPERATOR_PASSWORD = "operator", "operator-password-1"
READ_TOKEN = "read-token-0123456789abcdef"
OPERATOR_TOKEN = "operator-token-0123456789abcdef"


@dataclass
class Project:
    """A task module, its SQLite broker, a worker process and a client app."""

    path: Path
    url: str
    worker: WorkerProcess
    app: Celeriac

    def send(self, name: str, *args: Any, **kwargs: Any) -> str:
        return self.app.send_task(f"dashproj.{name}", args, kwargs).id


class Served:
    """An ASGI app served by uvicorn in a thread, on a free loopback port."""

    def __init__(self, asgi: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(asgi, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on", timeout_graceful_shutdown=1)  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, 10, "uvicorn to start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **options: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, **options)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def start_project(path: Path, url: str, *worker_args: str) -> Project:
    write_module(path, "dashproj", TASKS.format(url=url))
    args = ["-E", "-c", "2", "-n", "dash1@%h", "-Q", "celeriac", *worker_args]
    worker = WorkerProcess("dashproj", args, path, path / "worker.log")
    try:
        worker.wait_ready()
    except BaseException:
        worker.stop()
        raise
    sys.path.insert(0, str(path))  # the dashboard reads task signatures from the module
    try:
        module = importlib.import_module("dashproj")
    finally:
        sys.path.remove(str(path))
        sys.modules.pop("dashproj", None)  # another project (Redis) has a module of that name
    return Project(path, url, worker, module.app)


def secured_auth() -> Auth:
    """Two users and two tokens, one of each role."""
    users = (User(READER, READ, hash_password(READER_PASSWORD)),
             User(OPERATOR_NAME, OPERATOR, hash_password(OPERATOR_PASSWORD)))  # fmt: skip
    return Auth({READ_TOKEN: READ, OPERATOR_TOKEN: OPERATOR}, users)


def csrf(client: httpx.Client) -> str:
    """The CSRF token of the client's session (from the API)."""
    token: str = client.get("/api/session").json()["csrf"]
    return token


def signed_in(served: Served, name: str, password: str) -> httpx.Client:
    """A client signed in through the login form (a session cookie)."""
    client = served.client()
    page = client.get("/login")
    token = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    answer = client.post("/login", data={"csrf": token, "name": name, "password": password,
                                         "next": "/"})  # fmt: skip
    assert answer.status_code == 303, answer.text
    return client


def wait_for_task(client: httpx.Client, task_id: str, check: Callable[[dict[str, Any]], bool],
                  timeout: float = 15.0) -> dict[str, Any]:  # fmt: skip
    """Poll ``/api/tasks/ID`` until the task's events arrived and ``check`` holds for it.

    (The result store may know a finished task a moment before its events arrive.)
    """
    seen: dict[str, Any] = {}

    def holds() -> bool:
        answer = client.get(f"/api/tasks/{task_id}")
        if answer.status_code == 200:
            seen.clear()
            seen.update(answer.json())
            return bool(seen["timeline"]) and check(seen)
        return False

    wait_until(holds, timeout, f"task {task_id} in the dashboard; last seen: {seen}")
    return seen
