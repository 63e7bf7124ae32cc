"""Settings from Django, shared tasks and lazy discovery, each in a fresh ``python -c``.

A subprocess per test keeps Django's process-wide settings and app registry from leaking from
one test into the next; the working directory is a copy of examples/django_tutorial.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from example_project import ExampleProject, clean_env

pytestmark = pytest.mark.timeout(30)

APP_SETTINGS = """
import json
from proj.celeriac import app
conf = app.conf
print(json.dumps({
    "broker_url": app.broker_url, "result_backend": conf.result_backend,
    "results": app.result_backend_url, "acks_late": conf.task_acks_late,
    "concurrency": conf.worker_concurrency, "queue": conf.task_default_queue,
}))
"""


def last_json(text: str) -> Any:
    """The JSON document printed on the last line of ``text``."""
    return json.loads(text.strip().splitlines()[-1])


def app_settings(project: ExampleProject, settings: str = "proj.settings") -> dict[str, Any]:
    """The settings the example's app reads under the Django settings module ``settings``."""
    settings_in_force: dict[str, Any] = last_json(project.python(APP_SETTINGS, settings).stdout)
    return settings_in_force


def test_default_broker_is_the_embedded_sqlite_file(project: ExampleProject) -> None:
    settings = app_settings(project)
    assert settings["broker_url"] == "sqlite:///celeriac.sqlite3"
    assert settings["result_backend"] is None
    assert settings["results"] == "sqlite:///celeriac.sqlite3"
    assert not (project.root / "celeriac.sqlite3").exists(), "nothing connects at import time"


def test_namespaced_settings_are_read_from_django(project: ExampleProject) -> None:
    module = project.add_settings(
        "settings_production",
        'CELERIAC_BROKER_URL = "redis://localhost:6379"\n'
        'CELERIAC_RESULT_BACKEND = "redis://localhost:6379/1"\n'
        "CELERIAC_TASK_ACKS_LATE = False\n"
        "CELERIAC_WORKER_CONCURRENCY = 3\n"
        'CELERIAC_TASK_DEFAULT_QUEUE = "notes"\n'
        "broker_url = 'memory://ignored: only CELERIAC_ names are read'\n",
    )
    assert app_settings(project, module) == {
        "broker_url": "redis://localhost:6379",
        "result_backend": "redis://localhost:6379/1",
        "results": "redis://localhost:6379/1",
        "acks_late": False,
        "concurrency": 3,
        "queue": "notes",
    }


def test_broker_url_from_the_environment(project: ExampleProject) -> None:
    env = clean_env(CELERIAC_BROKER_URL="memory://from-the-environment")
    out = project.run("-c", APP_SETTINGS, env=env).stdout
    assert last_json(out)["broker_url"] == "memory://from-the-environment"


def test_unknown_celeriac_setting_suggests_the_closest_name(project: ExampleProject) -> None:
    module = project.add_settings("settings_typo", 'CELERIAC_BROKER_UTL = "redis://localhost"')
    done = project.python("import proj.celeriac", module, check=False)
    assert done.returncode != 0
    last_line = done.stderr.strip().splitlines()[-1]
    assert "UnknownSettingError" in last_line
    assert "'CELERIAC_BROKER_UTL'" in last_line
    assert "did you mean 'CELERIAC_BROKER_URL'?" in last_line


def test_shared_task_registers_with_the_app_created_earlier(project: ExampleProject) -> None:
    code = """
import json
import django
from proj.celeriac import app
django.setup()
from notes.tasks import add_note
print(json.dumps(["notes.tasks.add_note" in app.tasks, add_note.app is app, add_note.name]))
"""
    out = project.python(code, "proj.settings").stdout
    assert last_json(out) == [True, True, "notes.tasks.add_note"]


SHARED_BEFORE_APP = """
import json
from celeriac import Celeriac, shared_task

@shared_task
def ping() -> str:
    return "pong"

app = Celeriac("later", broker="memory://later")
"""


def test_shared_task_registers_with_an_app_created_later(project: ExampleProject) -> None:
    code = SHARED_BEFORE_APP + "print(json.dumps(sorted(app.tasks)))"
    assert "__main__.ping" in last_json(project.python(code).stdout)


def test_shared_task_sends_through_an_app_created_later(project: ExampleProject) -> None:
    """Celery's shared_task is a proxy to the current app's task: ``delay`` uses that app."""
    code = SHARED_BEFORE_APP + 'ping.delay()\nprint(json.dumps(app.broker.size("celeriac")))'
    assert last_json(project.python(code).stdout) == 1
    assert not (project.root / "celeriac.sqlite3").exists(), "sent through another app"


def test_autodiscovery_imports_tasks_lazily(project: ExampleProject) -> None:
    code = """
import json, sys
from django.apps import apps
from proj.celeriac import app
seen = [apps.ready, "notes.tasks" in sys.modules, "notes.tasks.add_note" in app.tasks]
app.finalize()
seen += [apps.ready, "notes.tasks" in sys.modules, "notes.tasks.add_note" in app.tasks]
print(json.dumps(seen))
"""
    seen = last_json(project.python(code, "proj.settings").stdout)
    assert seen[:3] == [False, False, False], "nothing imported at autodiscover_tasks() time"
    assert seen[3:] == [True, True, True], "finalize() sets Django up and imports notes.tasks"


def test_looking_up_a_task_by_name_runs_discovery(project: ExampleProject) -> None:
    code = """
from proj.celeriac import app
print(app.get_task("notes.tasks.add_note").name)
"""
    assert project.python(code, "proj.settings").stdout.strip() == "notes.tasks.add_note"
