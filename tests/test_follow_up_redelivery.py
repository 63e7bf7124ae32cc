"""What follows a task (its chord part, its next chain step) is not lost when the store fails.

The broker is a SQLite file; results and chord counters live on a separate redis-server,
which the test stops while a header task runs and starts again. The task must not be
acknowledged with its chord part unrecorded: it is given back, runs again, and the chord's
body runs once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import StartWorker
from helpers import sqlite_url, wait_until, write_module
from redis_server import RedisServer

from celeriac import Celeriac, chord, signature

pytestmark = pytest.mark.timeout(120)

MODULE = "follow_proc"

TASKS = """
    import time

    from celeriac import Celeriac

    app = Celeriac(
        "follow_proc", broker={broker!r}, result_backend={results!r},
        result_backend_transport_options={{"retries": 0}},
    )
    LEDGER = {ledger!r}


    def note(line):
        with open(LEDGER, "a") as handle:
            handle.write(line + "\\n")


    @app.task
    def part(index, delay):
        note(f"part {{index}}")
        time.sleep(delay)
        return index


    @app.task
    def tsum(values):
        note(f"body {{sum(values)}}")
        return sum(values)
"""


@pytest.fixture
def results_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def setup(
    tmp_path: Path, results_server: RedisServer, no_celeriac_env: None
) -> Iterator[tuple[Celeriac, Path]]:
    broker, ledger = sqlite_url(tmp_path / "broker.sqlite3"), tmp_path / "ledger.txt"
    source = TASKS.format(broker=broker, results=results_server.url, ledger=str(ledger))
    write_module(tmp_path, MODULE, source)
    app = Celeriac("producer", broker=broker, result_backend=results_server.url)
    yield app, ledger
    app.close()


def _ledger(ledger: Path, kind: str) -> list[str]:
    if not ledger.exists():
        return []
    return [line for line in ledger.read_text().splitlines() if line.split()[0] == kind]


def test_a_chord_part_that_cannot_be_recorded_runs_again(
    setup: tuple[Celeriac, Path], results_server: RedisServer, start_worker_process: StartWorker
) -> None:
    app, ledger = setup
    worker = start_worker_process(MODULE, "-P", "prefork", "-c", "1")
    header = [signature(f"{MODULE}.part", (1, 1.0), app=app)]
    body = chord(header, signature(f"{MODULE}.tsum", app=app)).apply_async()
    wait_until(lambda: _ledger(ledger, "part"), 30, "the header task to start")
    results_server.stop()  # while it runs: its chord part cannot be recorded
    wait_until(lambda: "will run again" in worker.log(), 30, "the worker to give the task back")
    results_server.start()
    assert body.get(timeout=30) == 1
    assert _ledger(ledger, "body") == ["body 1"]  # once
    assert _ledger(ledger, "part") == ["part 1", "part 1"]  # the header task ran again
    assert "chord accounting failed; the task will run again" in worker.log()


DYING = """
    import os

    from celeriac import Celeriac, signals

    app = Celeriac("dying_proc", broker={broker!r})
    LEDGER = {ledger!r}


    def note(line):
        with open(LEDGER, "a") as handle:
            handle.write(line + "\\n")


    @signals.before_task_publish.connect
    def die_before_the_first_body(sender=None, **_):
        # The window between finding the chord complete and publishing its body.
        if sender == "dying_proc.tsum" and not os.path.exists(LEDGER + ".died"):
            open(LEDGER + ".died", "w").close()
            os._exit(1)


    @app.task
    def part(index):
        note(f"part {{index}}")
        return index


    @app.task
    def tsum(values):
        note(f"body {{sum(values)}}")
        return sum(values)
"""


def test_a_process_that_dies_before_sending_the_body_leaves_it_to_the_next_run(
    tmp_path: Path, start_worker_process: StartWorker, no_celeriac_env: None
) -> None:
    broker, ledger = sqlite_url(tmp_path / "broker.sqlite3"), tmp_path / "ledger.txt"
    write_module(tmp_path, "dying_proc", DYING.format(broker=broker, ledger=str(ledger)))
    app = Celeriac("producer", broker=broker)
    worker = start_worker_process("dying_proc", "-P", "prefork", "-c", "1")
    header = [signature("dying_proc.part", (index,), app=app) for index in range(3)]
    body = chord(header, signature("dying_proc.tsum", app=app)).apply_async()
    assert body.get(timeout=30) == 3
    assert (tmp_path / "ledger.txt.died").exists()  # the first try died in the window
    assert "died" in worker.log()
    assert _ledger(ledger, "body") == ["body 3"]  # sent by the header task's next run, once
    assert len(_ledger(ledger, "part")) == 4  # the last header task ran again
    app.close()
