"""Rate limits, concurrency limits, unique tasks and ``control rate_limit`` with real worker
processes, on a real SQLite file and on a real Redis server.

Each test writes a task module into its tmp_path and starts ``python -m celeriac -A
limits_proc worker ...`` there; the test process sends tasks by name from a producer app.
Tasks append lines to a ledger file (one ``write`` in append mode per line), with the time
and the worker; the limits are checked on those lines, with a tolerance loose enough for a
busy two-core machine (the benchmark measures the rate limit to 5%).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import StartWorker
from helpers import lines, run_cli, wait_until, write_module

from celeriac import Celeriac, TaskError

pytestmark = pytest.mark.timeout(120)

MODULE = "limits_proc"

TASKS = """
    import time

    from celeriac import Celeriac

    app = Celeriac(
        "limits_proc", broker={url!r},
        broker_transport_options={{"lease_timeout": 2.0, "max_deliveries": 1}},
    )
    LEDGER = {ledger!r}


    def note(*words):
        with open(LEDGER, "a") as handle:
            handle.write(" ".join(str(word) for word in words) + "\\n")


    @app.task(bind=True, rate_limit="10/s")
    def stamp(self, i):
        note("stamp", i, time.time(), self.request.hostname)


    @app.task(bind=True, rate_limit="4/s", rate_limit_scope="worker")
    def local_stamp(self, i):
        note("local", i, time.time(), self.request.hostname)


    @app.task(bind=True)
    def free(self, i):
        note("free", i, time.time(), self.request.hostname)


    @app.task(concurrency_key=lambda customer, seconds: customer, concurrency_limit=2)
    def visit(customer, seconds):
        note("start", customer, time.time())
        time.sleep(seconds)
        note("end", customer, time.time())


    @app.task(concurrency_limit=1)
    def hold(name, seconds):
        note("hold", name, time.time())
        time.sleep(seconds)


    @app.task(concurrency_key=lambda customer: customer["id"], concurrency_limit=1)
    def keyed(customer):
        note("keyed", customer["id"])


    @app.task(bind=True)
    def once(self, seconds):
        note("once", self.request.id, time.time())
        time.sleep(seconds)
        return self.request.id
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


def send(app: Celeriac, name: str, *args: Any, **options: Any) -> Any:
    return app.send_task(f"{MODULE}.{name}", args, **options)


def rate(times: list[float]) -> float:
    """Starts per second, from the first start to the last."""
    times = sorted(times)
    return (len(times) - 1) / (times[-1] - times[0])


def two_workers(start: StartWorker, *args: str) -> None:
    for name in ("w1", "w2"):
        start(MODULE, "-P", "threads", "-c", "4", "-n", f"{name}@%h", *args)


# -- rate limits ------------------------------------------------------------------------------


def test_a_rate_limit_holds_across_two_workers(
    producer: Celeriac, start_worker_process: StartWorker, ledger: Path
) -> None:
    two_workers(start_worker_process)
    for i in range(30):
        send(producer, "stamp", i)
    done = wait_until(lambda: len(lines(ledger, "stamp")) == 30 and lines(ledger, "stamp"), 30,
                      "30 rate-limited tasks")  # fmt: skip
    assert sorted(int(words[0]) for words in done) == list(range(30))
    assert 10 * 0.7 < rate([float(words[1]) for words in done]) < 10 * 1.1
    assert {words[2].split("@")[0] for words in done} == {"w1", "w2"}  # both took part
    assert producer.broker.size("celeriac") == 0


def test_a_per_worker_rate_limit_holds_for_each_worker(
    producer: Celeriac, start_worker_process: StartWorker, ledger: Path
) -> None:
    two_workers(start_worker_process)
    for i in range(24):
        send(producer, "local_stamp", i)
    done = wait_until(lambda: len(lines(ledger, "local")) == 24 and lines(ledger, "local"), 40,
                      "24 tasks limited per worker")  # fmt: skip
    for host in {words[2] for words in done}:
        mine = [float(words[1]) for words in done if words[2] == host]
        if len(mine) > 2:
            assert rate(mine) < 4 * 1.1, host


def test_control_rate_limit_changes_the_limit_for_every_worker(
    producer: Celeriac, start_worker_process: StartWorker, ledger: Path
) -> None:
    two_workers(start_worker_process)
    replies = producer.control.rate_limit(f"{MODULE}.free", "5/s", reply=True, timeout=5)
    assert replies is not None and len(replies) == 2
    assert all("set successfully" in reply["ok"] for one in replies for reply in one.values())
    for i in range(15):
        send(producer, "free", i)
    done = wait_until(lambda: len(lines(ledger, "free")) == 15 and lines(ledger, "free"), 30,
                      "15 tasks at the new limit")  # fmt: skip
    assert 5 * 0.7 < rate([float(words[1]) for words in done]) < 5 * 1.1

    producer.control.rate_limit(f"{MODULE}.free", None, reply=True, timeout=5)  # back to none
    started = time.monotonic()
    for i in range(15, 45):
        send(producer, "free", i)
    wait_until(lambda: len(lines(ledger, "free")) == 45, 30, "30 tasks without a limit")
    assert time.monotonic() - started < 2.5  # 30 at 5/s would take 6 s


def test_control_rate_limit_from_the_command_line(
    producer: Celeriac, start_worker_process: StartWorker, tmp_path: Path
) -> None:
    start_worker_process(MODULE, "-P", "threads", "-c", "2")
    shown = run_cli(["-A", MODULE, "control", "rate_limit", f"{MODULE}.free", "100/m",
                     "-t", "5"], tmp_path)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "OK new rate limit of limits_proc.free set successfully: 100/m" in shown.stdout
    assert producer.broker.get(f"celeriac-rate-limit-{MODULE}.free") == b"100/m"

    bad = run_cli(["-A", MODULE, "control", "rate_limit", f"{MODULE}.free", "10/d"], tmp_path)
    assert bad.returncode == 2
    assert "bad rate limit '10/d'" in bad.stderr
    unknown = run_cli(["-A", MODULE, "control", "rate_limit", "no.such.task", "1/s", "-t", "5"],
                      tmp_path)  # fmt: skip
    assert unknown.returncode == 1 and "unknown task 'no.such.task'" in unknown.stdout


# -- concurrency limits -----------------------------------------------------------------------


def most_at_once(ledger: Path, customer: str) -> int:
    """The most runs of one customer's tasks that overlapped in time."""
    edges = [(float(w[1]), 1) for w in lines(ledger, "start") if w[0] == customer]
    edges += [(float(w[1]), -1) for w in lines(ledger, "end") if w[0] == customer]
    running = peak = 0
    for _, step in sorted(edges):  # an end sorts before a start at the same time
        running += step
        peak = max(peak, running)
    return peak


def test_a_concurrency_limit_holds_per_key_across_two_workers(
    producer: Celeriac, start_worker_process: StartWorker, ledger: Path
) -> None:
    two_workers(start_worker_process)
    results = [send(producer, "visit", "acme", 0.3) for _ in range(6)]
    results += [send(producer, "visit", "zeta", 0.3) for _ in range(2)]
    for result in results:
        result.get(timeout=30)
    assert most_at_once(ledger, "acme") == 2
    assert most_at_once(ledger, "zeta") == 2  # another key: not held back by acme's
    acme = sorted(float(w[1]) for w in lines(ledger, "start") if w[0] == "acme")
    assert acme[-1] - acme[0] < 0.3 * 3 + 1.5  # woken when a slot frees, not by polling


def test_a_slot_held_by_a_killed_worker_comes_back_within_a_lease(
    producer: Celeriac, start_worker_process: StartWorker, ledger: Path
) -> None:
    first = start_worker_process(MODULE, "-P", "threads", "-c", "2")
    send(producer, "hold", "first", 60)
    wait_until(lambda: lines(ledger, "hold"), 15, "the first task to hold the slot")
    first.stop()  # SIGKILL: its slot is renewed no more (its message is dead-lettered)
    killed = time.time()
    send(producer, "hold", "second", 0)
    start_worker_process(MODULE, "-P", "threads", "-c", "2")
    second = wait_until(lambda: [w for w in lines(ledger, "hold") if w[0] == "second"], 20,
                        "the second task to get the slot")  # fmt: skip
    assert float(second[0][1]) - killed < 2.0 + 3.0  # the lease (2 s), and time to start


def test_a_concurrency_key_that_raises_fails_that_task_only(
    producer: Celeriac, start_worker_process: StartWorker, ledger: Path
) -> None:
    start_worker_process(MODULE, "-P", "threads", "-c", "2")
    bad = send(producer, "keyed", {"name": "no id"})  # by name: no key check on this side
    good = send(producer, "keyed", {"id": 7})
    with pytest.raises(TaskError) as caught:
        bad.get(timeout=20)
    assert caught.value.type_name == "ConcurrencyKeyError"
    assert "KeyError" in str(caught.value)
    good.get(timeout=20)
    assert lines(ledger, "keyed") == [["7"]]
    [letter] = producer.broker.dead_letters()
    assert letter.reason == "concurrency_key_failed"


# -- unique tasks -----------------------------------------------------------------------------


def test_a_unique_task_is_queued_once_while_queued_or_running(
    producer: Celeriac, start_worker_process: StartWorker, ledger: Path
) -> None:
    first = send(producer, "once", 0.5, task_id="report-2024", unique=True)
    again = send(producer, "once", 0.5, task_id="report-2024", unique=True)  # queued
    assert again.id == first.id == "report-2024"
    assert producer.broker.size("celeriac") == 1
    start_worker_process(MODULE, "-P", "threads", "-c", "2")
    wait_until(lambda: lines(ledger, "once"), 15, "the task to start")
    send(producer, "once", 0.5, task_id="report-2024", unique=True)  # running
    assert first.get(timeout=15) == "report-2024"
    assert len(lines(ledger, "once")) == 1

    send(producer, "once", 0.0, task_id="report-2024", unique=True)  # finished: runs again
    wait_until(lambda: len(lines(ledger, "once")) == 2, 15, "the second run")
