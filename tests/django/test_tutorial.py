"""The Celery + Django tutorial, followed with ``celery`` replaced by ``celeriac``.

Real processes only: ``manage.py migrate``, ``manage.py shell``, a real worker with a prefork
pool, the embedded SQLite broker and the Django SQLite database, in a copy of
examples/django_tutorial.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

import pytest
from example_project import ExampleProject, StartWorker, WorkerProcess

import celeriac

pytestmark = pytest.mark.timeout(45)

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
RUNTIME = r"[0-9.e+-]+"

#: The fields of Celery's request (``self.request``) as the tutorial prints them.
CELERY_REQUEST_FIELDS = {
    "lang", "task", "id", "shadow", "eta", "expires", "group", "retries", "timelimit",
    "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "reply_to", "correlation_id",
    "hostname", "delivery_info", "args", "kwargs", "is_eager", "callbacks", "errbacks", "chain",
    "chord", "called_directly",
}  # fmt: skip

INSIDE_ATOMIC = """
import json
from django.db import transaction
from proj.celeriac import app
from notes.tasks import add_note

with transaction.atomic():
    before = app.broker.size("celeriac")
    add_note.delay_on_commit("later")
    inside = app.broker.size("celeriac")
print(json.dumps([before, inside, app.broker.size("celeriac")]))
"""

ROLLED_BACK = """
import json
from django.db import transaction
from proj.celeriac import app
from notes.tasks import add_note
from notes.views import create_note_and_notify

before = app.broker.size("celeriac")
try:
    with transaction.atomic():
        add_note.delay_on_commit("rolled back")
        raise RuntimeError("roll back")
except RuntimeError:
    pass
after_rollback = app.broker.size("celeriac")
create_note_and_notify("committed")
print(json.dumps([before, after_rollback, app.broker.size("celeriac")]))
"""


def send_debug_task(project: ExampleProject) -> str:
    """Step 4 of the tutorial: queue ``debug_task`` from ``manage.py shell``; its id.

    ``print(repr(...))`` shows what the interactive prompt echoes for ``>>> debug_task.delay()``
    (``str()`` of an AsyncResult is its bare id, as in Celery).
    """
    out = project.shell("from proj.celeriac import debug_task; print(repr(debug_task.delay()))")
    found = re.search(rf"<AsyncResult: ({UUID})>", out)
    assert found, f"no AsyncResult in the shell's output: {out!r}"
    return found.group(1)


def printed_request(worker: WorkerProcess, task_id: str) -> dict[str, Any]:
    """The ``Request: <Context: {...}>`` line that debug_task printed, as a dict."""
    line = worker.wait_for(rf"Request: <Context: (\{{.*'id': '{task_id}'.*\}})>\n")
    request: dict[str, Any] = ast.literal_eval(line.group(1))
    return request


def assert_banner(log: str) -> None:
    """The start-up banner names the version, app, transport, results, pool, queue, tasks."""
    banner = log.split("[tasks]")[0]
    assert f"v{celeriac.__version__}" in banner
    assert re.search(r"\.> app: +proj:0x[0-9a-f]+", banner)
    assert re.search(r"\.> transport: +sqlite:///celeriac\.sqlite3\n", banner)
    assert re.search(r"\.> results: +sqlite:///celeriac\.sqlite3\n", banner)
    assert re.search(r"\.> concurrency: 1 \(prefork\)", banner)
    assert re.search(r"\[queues\]\n +\.> celeriac\b", banner)
    tasks = re.search(r"\[tasks\]\n((?: +\. .+\n)+)", log)
    assert tasks, log
    assert "  . proj.celeriac.debug_task\n" in tasks.group(1)
    assert "  . notes.tasks.add_note\n" in tasks.group(1)


def assert_celery_request(request: dict[str, Any], task_id: str) -> None:
    """``self.request`` on a worker has Celery's fields, with the values Celery gives them."""
    assert not CELERY_REQUEST_FIELDS - set(request), "fields missing from self.request"
    assert request["id"] == request["root_id"] == request["correlation_id"] == task_id
    assert request["task"] == "proj.celeriac.debug_task"
    assert (request["args"], request["kwargs"], request["retries"]) == ([], {}, 0)
    assert request["parent_id"] is None
    assert request["hostname"].startswith("celeriac@")
    assert request["delivery_info"]["routing_key"] == "celeriac"
    assert request["is_eager"] is False
    assert request["called_directly"] is False


def test_debug_task_runs_on_a_worker(
    migrated_project: ExampleProject, start_worker: StartWorker
) -> None:
    task_id = send_debug_task(migrated_project)
    worker = start_worker(migrated_project)
    done = rf"Task proj\.celeriac\.debug_task\[{task_id}\] succeeded in {RUNTIME}s: None\n"
    succeeded = worker.wait_for(done).start()
    log = worker.output()
    assert_banner(log)
    assert log.index(f"Received task: proj.celeriac.debug_task[{task_id}]") < succeeded
    assert len(re.findall(done, log)) == 1, log
    assert_celery_request(printed_request(worker, task_id), task_id)


def test_worker_writes_a_note_through_the_orm(
    migrated_project: ExampleProject, start_worker: StartWorker
) -> None:
    start_worker(migrated_project)
    out = migrated_project.shell(
        "from notes.tasks import add_note; print(add_note.delay('hello').get(timeout=30))"
    )
    note_id = int(out.strip().splitlines()[-1])
    check = f"from notes.models import Note; print(Note.objects.get(id={note_id}).text)"
    assert migrated_project.shell(check).strip().splitlines()[-1] == "hello"


def test_delay_on_commit_publishes_only_after_commit(migrated_project: ExampleProject) -> None:
    before, inside, after = json.loads(migrated_project.shell(INSIDE_ATOMIC).splitlines()[-1])
    assert inside == before
    assert after == before + 1


def test_rolled_back_block_publishes_nothing(
    migrated_project: ExampleProject, start_worker: StartWorker
) -> None:
    before, after_rollback, after_commit = json.loads(
        migrated_project.shell(ROLLED_BACK).splitlines()[-1]
    )
    assert after_rollback == before
    assert after_commit == before + 1
    worker = start_worker(migrated_project)
    # create_note_and_notify's task reads the row it was sent about: it was committed first.
    committed = rf"Task notes\.tasks\.announce_note\[{UUID}\] succeeded in {RUNTIME}s: 'committed'"
    worker.wait_for(committed)
    count = "from notes.models import Note; print(Note.objects.filter(text='rolled back').count())"
    assert migrated_project.shell(count).strip().splitlines()[-1] == "0"


def test_sigterm_stops_the_worker_cleanly(
    migrated_project: ExampleProject, start_worker: StartWorker
) -> None:
    # The seed tutorial names the module itself: `celery -A celery_tutorial.celery worker`.
    worker = start_worker(migrated_project, "proj.celeriac")
    worker.wait_for(r"celeriac@\S+ ready\.")
    assert worker.terminate(timeout=10) == 0
    assert re.search(r"Worker celeriac@\S+ stopped", worker.output())
