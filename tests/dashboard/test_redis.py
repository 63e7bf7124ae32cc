"""The dashboard over the Redis broker: a real redis-server, a real worker process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers import CELERIAC_ENV, wait_until
from redis_server import RedisServer

from celeriac.dashboard import Auth, create_app

from .support import Project, Served, start_project, wait_for_task

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def redis_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    with RedisServer() as server, pytest.MonkeyPatch.context() as patch:
        for name in CELERIAC_ENV:
            patch.delenv(name, raising=False)
        project = start_project(tmp_path_factory.mktemp("dashredis"), server.url)
        try:
            yield project
        finally:
            project.worker.stop()
            project.app.close()


def test_dashboard_on_redis(redis_project: Project) -> None:
    served = Served(create_app(redis_project.app, auth=Auth()))
    try:
        done = redis_project.send("add", 1, 2)
        failed = redis_project.send("fail", "<i>on redis</i>")
        parked = redis_project.send("parked")
        with served.client() as client:
            wait_for_task(client, done, lambda t: t["state"] == "SUCCESS" and t["result"] == "3")
            wait_for_task(client, failed, lambda t: t["state"] == "FAILURE")
            assert "&lt;i&gt;on redis&lt;/i&gt;" in client.get(f"/tasks/{failed}").text
            wait_until(lambda: client.get("/api/overview").json()["depths"].get("parked") == 1,
                       15, "the parked queue's depth")  # fmt: skip
            assert client.get("/api/tasks/" + parked).json()["state"] == "PENDING"
            workers = wait_until(lambda: client.get("/api/workers").json()["workers"], 15)
            assert workers[0]["status"] == "online"
            assert client.get("/api/overview").json()["succeeded"] >= 1
    finally:
        served.stop()
