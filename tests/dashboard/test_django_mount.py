"""The dashboard mounted in a Django project's ASGI app under /dashboard, served by uvicorn as
a real process: Django answers its own URLs, the dashboard its own, links and cookies stay
under /dashboard, and sign-in works there."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import clean_env, sqlite_url, wait_until, write_module
from redis_server import free_port

pytestmark = pytest.mark.timeout(60)

TOKEN = "django-mounted-dashboard-token"

FILES = {
    "site_settings": """
        SECRET_KEY = "test"
        DEBUG = False
        ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
        ROOT_URLCONF = "site_urls"
        INSTALLED_APPS = []
        DATABASES = {{}}
        CELERIAC_BROKER_URL = {broker!r}
    """,
    "site_urls": """
        from django.http import HttpResponse
        from django.urls import path

        urlpatterns = [path("hello/", lambda request: HttpResponse("hello from django"))]
    """,
    "site_celeriac": """
        import os

        from celeriac import Celeriac

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_settings")
        app = Celeriac("site")
        app.config_from_object("django.conf:settings", namespace="CELERIAC")
    """,
    # What a project's asgi.py looks like with the dashboard mounted beside Django.
    "asgi": """
        import os

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_settings")

        from django.core.asgi import get_asgi_application

        django_app = get_asgi_application()  # set Django up before importing the tasks

        from starlette.applications import Starlette
        from starlette.routing import Mount

        from celeriac.dashboard import create_app
        from site_celeriac import app as celeriac_app

        application = Starlette(routes=[
            Mount("/dashboard", app=create_app(celeriac_app)),  # credentials: CELERIAC_DASHBOARD_*
            Mount("/", app=django_app),
        ])
    """,
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Django site served by ``uvicorn asgi:application``; its base URL."""
    path: Path = tmp_path_factory.mktemp("site")
    for name, source in FILES.items():
        write_module(path, name, source.format(broker=sqlite_url(path / "broker.sqlite3")))
    port = free_port()
    log = open(path / "uvicorn.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "asgi:application", "--port", str(port),
         "--log-level", "warning"], cwd=path, stdout=log, stderr=subprocess.STDOUT,
        env=clean_env(CELERIAC_DASHBOARD_TOKEN=TOKEN),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url), 20, f"uvicorn: {(path / 'uvicorn.log').read_text()}")
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/hello/", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_django_still_answers_its_urls(site: str) -> None:
    answer = httpx.get(site + "/hello/")
    assert answer.text == "hello from django"


def test_the_dashboard_asks_for_sign_in_under_its_prefix(site: str) -> None:
    answer = httpx.get(site + "/dashboard/", headers={"accept": "text/html"})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/dashboard/login?next=/dashboard/"
    assert httpx.get(site + "/dashboard/api/overview").status_code == 401


def test_the_dashboard_serves_under_its_prefix(site: str) -> None:
    headers = {"authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=site, headers=headers) as client:
        page = client.get("/dashboard/")
        assert page.status_code == 200
        assert 'src="/dashboard/static/dashboard.js"' in page.text
        assert 'href="/dashboard/workers"' in page.text
        assert 'data-stream="/dashboard/stream?view=overview"' in page.text
        assert client.get("/dashboard/static/dashboard.js").status_code == 200
        assert "workers_online" in client.get("/dashboard/api/overview").json()


def test_sign_in_and_act_under_the_prefix(site: str) -> None:
    with httpx.Client(base_url=site) as client:
        form = client.get("/dashboard/login?next=/dashboard/queues").text
        csrf = form.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        signed = client.post("/dashboard/login", data={"csrf": csrf, "token": TOKEN,
                                                       "next": "/dashboard/queues"})  # fmt: skip
        assert signed.status_code == 303
        assert signed.headers["location"] == "/dashboard/queues"
        assert "Path=/dashboard;" in signed.headers["set-cookie"]
        session = client.get("/dashboard/api/session").json()
        assert session["role"] == "operator"
        done = client.post("/dashboard/actions/redrive", data={
            "csrf": session["csrf"], "all": "1", "action_id": "a1", "next": "/queues"})  # fmt: skip
        assert done.status_code == 303
        assert done.headers["location"] == "/dashboard/queues?done=a1"
        assert "0 dead letter(s) put back" in client.get(done.headers["location"]).text
