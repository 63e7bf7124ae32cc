"""Canvas with real worker processes, on a real SQLite file and on a real Redis server.

Each test writes a task module into its tmp_path and starts ``python -m celeriac -A
canvas_proc worker ...`` there; the test process sends signatures by name from a producer app,
as a separate client would. Tasks append lines to a ledger file outside the system under test
(one ``write`` in append mode per line), which is how body runs are counted.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import StartWorker
from helpers import lines, wait_until, write_module

from celeriac import (
    Celeriac,
    GroupResult,
    Signature,
    TaskError,
    chain,
    chord,
    group,
    signals,
    signature,
)

pytestmark = pytest.mark.timeout(120)

MODULE = "canvas_proc"

TASKS = """
    import os
    import time

    from celeriac import Celeriac

    app = Celeriac("canvas_proc", broker={url!r}, broker_transport_options={{"lease_timeout": 2.0}})
    LEDGER = {ledger!r}


    def note(line):
        with open(LEDGER, "a") as handle:
            handle.write(line + "\\n")


    @app.task
    def add(x, y):
        return x + y


    @app.task
    def mul(x, y):
        return x * y


    @app.task
    def tsum(values):
        note(f"body {{sum(values)}}")
        return sum(values)


    @app.task
    def boom(*args):
        raise ValueError(f"boom {{list(args)}}")


    @app.task
    def on_error(request, exc, traceback):
        note(f"on_error {{request.id}} {{type(exc).__name__}} {{os.getpid()}}")


    @app.task
    def on_error_id(task_id):
        note(f"on_error_id {{task_id}}")


    @app.task(time_limit=0.5)
    def stuck(*args):
        time.sleep(30)


    @app.task
    def part(index, delay):
        note(f"part {{index}} {{os.getpid()}}")
        time.sleep(delay)
        return index
"""


@pytest.fixture
def producer(
    tmp_path: Path, engine_url: str, ledger: Path, no_celeriac_env: None
) -> Iterator[Celeriac]:
    """Writes the task module into tmp_path; the client app on the same broker."""
    write_module(tmp_path, MODULE, TASKS.format(url=engine_url, ledger=str(ledger)))
    app = Celeriac("producer", broker=engine_url)
    yield app
    app.close()


def sig(app: Celeriac, name: str, *args: Any) -> Signature:
    """A signature of ``canvas_proc.<name>`` by name: the producer never imports the tasks."""
    return signature(f"{MODULE}.{name}", args, app=app)


def test_chain_group_and_chord_across_processes(
    producer: Celeriac, start_worker_process: StartWorker, ledger: Path
) -> None:
    start_worker_process(MODULE, "-P", "prefork", "-c", "2")
    result = (sig(producer, "add", 1, 2) | sig(producer, "mul", 10) | sig(producer, "add", 5))()
    assert result.get(timeout=30) == 35
    assert result.parent.get(timeout=30) == 30 and result.parent.parent.get(timeout=30) == 3

    members = group(sig(producer, "add", i, i) for i in range(20)).apply_async()
    assert isinstance(members, GroupResult)
    assert members.get(timeout=30) == [2 * i for i in range(20)]

    body = chord(sig(producer, "add", i, 1) for i in range(10))(sig(producer, "tsum"))
    assert body.get(timeout=30) == sum(range(1, 11))
    assert body.parent.get(timeout=30) == list(range(1, 11))

    nested = chain(
        sig(producer, "add", 1, 1),
        chord([sig(producer, "mul", 2), sig(producer, "mul", 3)], sig(producer, "tsum")),
        sig(producer, "add", 100),
    ).apply_async()
    assert nested.get(timeout=30) == 110
    assert [words[0] for words in lines(ledger, "body")] == ["55", "10"]


def test_errbacks_and_a_failed_chord_across_processes(
    producer: Celeriac, start_worker_process: StartWorker, ledger: Path
) -> None:
    worker = start_worker_process(MODULE, "-P", "prefork", "-c", "2")
    failing = chain(sig(producer, "add", 1, 1), sig(producer, "boom"), sig(producer, "add", 1))
    failing.on_error(sig(producer, "on_error")).on_error(sig(producer, "on_error_id"))
    result = failing.apply_async()
    with pytest.raises(TaskError, match="boom"):
        result.get(timeout=30)
    boom_id = result.parent.id
    wait_until(lambda: lines(ledger, "on_error_id"), 20, "the old-style errback")
    (new_style,) = wait_until(lambda: lines(ledger, "on_error"), 20, "the new-style errback")
    assert new_style[:2] == [boom_id, "ValueError"]
    assert int(new_style[2]) != worker.pid  # called in the pool process that ran the task
    assert lines(ledger, "on_error_id") == [[boom_id]]

    canvas = chord([sig(producer, "add", 1, 1), sig(producer, "boom", 2)], sig(producer, "tsum"))
    canvas.link_error(sig(producer, "on_error"))
    body = canvas.apply_async()
    with pytest.raises(TaskError) as caught:
        body.get(timeout=30)
    assert caught.value.type_name == "ChordError" and "boom [2]" in str(caught.value)
    wait_until(lambda: len(lines(ledger, "on_error")) == 2, 20, "the chord's errback")
    assert lines(ledger, "on_error")[1][:2] == [body.id, "ChordError"]
    assert lines(ledger, "body") == []
    assert body.parent.results[0].get(timeout=30) == 2


def test_a_task_stopped_at_its_hard_time_limit_fails_its_chord_and_its_chain(
    producer: Celeriac, start_worker_process: StartWorker, ledger: Path
) -> None:
    """The worker, not the task, records this failure: the canvas must still hear of it."""
    start_worker_process(MODULE, "-P", "prefork", "-c", "2")
    body = chord([sig(producer, "add", 1, 1), sig(producer, "stuck")], sig(producer, "tsum"))()
    with pytest.raises(TaskError) as caught:
        body.get(timeout=30)
    assert caught.value.type_name == "ChordError" and "TimeLimitExceeded" in str(caught.value)

    steps = chain(sig(producer, "add", 1, 1), sig(producer, "stuck"), sig(producer, "add", 1))
    result = steps.on_error(sig(producer, "on_error_id")).apply_async()
    with pytest.raises(TaskError) as caught:
        result.get(timeout=30)
    assert caught.value.type_name == "TimeLimitExceeded"
    wait_until(lambda: lines(ledger, "on_error_id") == [[result.parent.id]], 20, "the errback")
    assert lines(ledger, "body") == []


@pytest.mark.parametrize("kill", ["worker", "pool_process"])
def test_a_chord_of_50_runs_its_body_once_when_a_worker_is_killed_mid_chord(
    producer: Celeriac, start_worker_process: StartWorker, ledger: Path, kill: str
) -> None:
    first = start_worker_process(MODULE, "-P", "prefork", "-c", "4")
    # Parts of 0.3 s keep the kill far from the last part, whose process completes the chord:
    # a process killed between claiming the completion and publishing the body loses the
    # body (a known gap, see workflow.py), which this test is not about.
    header = [sig(producer, "part", index, 0.3) for index in range(50)]
    body = chord(header, sig(producer, "tsum")).apply_async()
    wait_until(lambda: len(lines(ledger, "part")) >= 8, 30, "part of the header to run")
    if kill == "worker":
        first.stop()  # SIGKILL to the worker and its pool: its leases must run out
        start_worker_process(MODULE, "-P", "threads", "-c", "4")
    else:
        busy = int(lines(ledger, "part")[-1][1])  # a pool process in the middle of a task
        os.kill(busy, signal.SIGKILL)  # the supervisor replaces it; its task is redelivered
    assert body.get(timeout=60) == sum(range(50))
    assert body.parent.get(timeout=30) == list(range(50))
    assert lines(ledger, "body") == [[str(sum(range(50)))]]  # exactly once
    ran = [int(words[0]) for words in lines(ledger, "part")]
    assert set(ran) == set(range(50))
    assert len(ran) > 50  # the killed task(s) ran again, and the body still ran once
    if kill == "pool_process":
        assert "died" in first.log()


def test_every_header_message_delivered_twice_still_runs_the_body_once(
    producer: Celeriac, start_worker_process: StartWorker, ledger: Path
) -> None:
    """A redelivery is the same bytes delivered again, also after the task counted its part."""
    sent: list[tuple[str, bytes]] = []

    def keep(sender: Any, message: Any, body: bytes, **_: Any) -> None:
        sent.append((message.queue, body))

    signals.before_task_publish.connect(keep)
    try:
        body = chord([sig(producer, "part", i, 0.0) for i in range(20)], sig(producer, "tsum"))()
    finally:
        signals.before_task_publish.disconnect(keep)
    for queue, message in sent:
        producer.broker.publish(queue, message)
    start_worker_process(MODULE, "-P", "prefork", "-c", "4")
    assert body.get(timeout=30) == sum(range(20))
    wait_until(lambda: len(lines(ledger, "part")) == 40, 20, "every header task to run twice")
    assert lines(ledger, "body") == [[str(sum(range(20)))]]
