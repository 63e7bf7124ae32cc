"""Real worker processes on a real SQLite file: pools, bad messages, limits, shutdown, crashes.

Each test writes a task module into its tmp_path, starts ``python -m celeriac -A proc_tasks
worker ...`` there, and talks to it through a producer app on the same SQLite file. The test
process never imports the task module: it sends by name, as a separate client would.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import StartWorker
from helpers import run_cli, sqlite_url, wait_until, write_module

from celeriac import Celeriac, TaskError, states
from celeriac.errors import TaskRevokedError

pytestmark = pytest.mark.timeout(60)

MODULE = "proc_tasks"
QUEUE = "celeriac"

TASKS = """
    import os
    import time
    from pathlib import Path

    from celeriac import Celeriac, SoftTimeLimitExceeded

    app = Celeriac("proc", broker={url!r})


    @app.task
    def add(x, y):
        return x + y


    @app.task
    def add_pid(x, y):
        return [x + y, os.getpid()]


    @app.task
    def pid():
        return os.getpid()


    @app.task
    def fail(message):
        raise ValueError(message)


    @app.task
    def returns_object():
        return object()


    @app.task
    def sleep_marked(seconds, started, runs):
        Path(started).write_text(str(os.getpid()))
        time.sleep(seconds)
        with open(runs, "a") as handle:
            handle.write(f"{{os.getpid()}}\\n")
        return seconds


    @app.task
    def die_once(marker):
        path = Path(marker)
        if not path.exists():
            path.write_text(str(os.getpid()))
            os.kill(os.getpid(), 9)
        return os.getpid()


    @app.task
    def sleep_once(seconds, marker):
        path = Path(marker)
        if not path.exists():
            path.write_text(str(os.getpid()))
            time.sleep(seconds)
        return "done"


    @app.task
    def die_always():
        os.kill(os.getpid(), 9)


    @app.task(soft_time_limit=0.3)
    def soft_limited(seconds):
        try:
            time.sleep(seconds)
        except SoftTimeLimitExceeded:
            return "soft limit caught"
        return "not interrupted"


    @app.task(time_limit=0.5)
    def hard_limited(seconds):
        time.sleep(seconds)
        return "not stopped"


    @app.task
    def sleep(seconds):
        time.sleep(seconds)
        return seconds
"""


@pytest.fixture
def producer(tmp_path: Path, no_celeriac_env: None) -> Iterator[Celeriac]:
    """Writes the task module into tmp_path; the client app on the same SQLite file."""
    url = sqlite_url(tmp_path / "broker.sqlite3")
    write_module(tmp_path, MODULE, TASKS.format(url=url))
    app = Celeriac("producer", broker=url)
    yield app
    app.close()


def send(app: Celeriac, name: str, *args: Any, **options: Any) -> Any:
    """Send ``proc_tasks.<name>`` by name."""
    return app.send_task(f"{MODULE}.{name}", args, **options)


def get_all(results: list[Any], timeout: float = 30.0) -> list[Any]:
    """Every result's value, within one overall deadline."""
    deadline = time.monotonic() + timeout
    return [r.get(timeout=max(0.1, deadline - time.monotonic())) for r in results]


# -- the pools


@pytest.mark.parametrize(
    "options", [("-P", "prefork", "-c", "2"), ("-P", "threads", "-c", "4"), ("-P", "solo")]
)
def test_each_pool_runs_200_tasks(
    producer: Celeriac, start_worker_process: StartWorker, options: tuple[str, ...]
) -> None:
    worker = start_worker_process(MODULE, *options)
    results = [send(producer, "add_pid", i, i) for i in range(200)]
    values = get_all(results)
    assert [total for total, _ in values] == [2 * i for i in range(200)]
    pids = {pid for _, pid in values}
    if options[1] == "prefork":
        assert worker.pid not in pids and 1 <= len(pids) <= 2  # run in the pool's children
    else:
        assert pids == {worker.pid}
    assert all(r.state == states.SUCCESS for r in results)
    assert producer.broker.size(QUEUE) == 0


# -- bad input at the worker


def test_bad_messages_are_dead_lettered_with_one_log_line_each(
    producer: Celeriac, start_worker_process: StartWorker
) -> None:
    worker = start_worker_process(MODULE, "-P", "threads", "-c", "2")
    unknown = producer.send_task("no.such.task", (1,))
    producer.broker.publish(QUEUE, b"\x00garbage")
    wrong_shape = {
        "v": 2,
        "headers": {"task": f"{MODULE}.add", "id": "wrong-shape-1"},
        "properties": {"delivery_info": {"routing_key": QUEUE}},
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "body": {"args": [1, 2]},  # must be [args, kwargs, embed]
    }
    producer.broker.publish(QUEUE, json.dumps(wrong_shape).encode())
    after = send(producer, "add", 2, 3)

    assert after.get(timeout=20) == 5
    dead = wait_until(
        lambda: len(producer.broker.dead_letters()) >= 3 and producer.broker.dead_letters(),
        10,
        "three dead letters",
    )
    assert sorted(d.reason for d in dead) == ["bad_shape", "undecodable", "unknown_task"]
    by_reason = {d.reason: d for d in dead}
    assert unknown.id.encode() in by_reason["unknown_task"].body
    assert by_reason["undecodable"].body == b"\x00garbage"
    assert by_reason["bad_shape"].queue == QUEUE
    reasons = ("unknown_task", "undecodable", "bad_shape")
    lines = [line for line in worker.log().splitlines() if any(r in line for r in reasons)]
    assert len(lines) == 3, lines  # one line each
    for reason in reasons:
        assert sum(reason in line for line in lines) == 1, (reason, lines)
    assert "Traceback" not in worker.log()
    assert unknown.state == states.PENDING
    assert producer.broker.size(QUEUE) == 0


def test_a_failing_task_is_a_failure_with_traceback_and_the_worker_goes_on(
    producer: Celeriac, start_worker_process: StartWorker
) -> None:
    worker = start_worker_process(MODULE, "-P", "prefork", "-c", "2")
    failed = send(producer, "fail", "broken on purpose")
    unserializable = send(producer, "returns_object")
    with pytest.raises(ValueError, match="broken on purpose") as caught:
        failed.get(timeout=20)
    assert isinstance(caught.value, TaskError)
    assert failed.state == states.FAILURE
    assert failed.traceback and "raise ValueError(message)" in failed.traceback
    assert failed.traceback.rstrip().endswith("ValueError: broken on purpose")
    with pytest.raises(TaskError, match="cannot serialize"):
        unserializable.get(timeout=20)
    assert send(producer, "add", 1, 1).get(timeout=20) == 2
    worker.wait_for_log("raised unexpected")


def test_a_task_expired_at_receipt_is_revoked(
    producer: Celeriac, start_worker_process: StartWorker
) -> None:
    expired = send(producer, "add", 1, 2, expires=datetime.now(UTC) - timedelta(seconds=1))
    worker = start_worker_process(MODULE, "-P", "threads", "-c", "2")
    fresh = send(producer, "add", 3, 4, expires=60)
    assert fresh.get(timeout=20) == 7
    with pytest.raises(TaskRevokedError):
        expired.get(timeout=20)
    assert expired.state == states.REVOKED
    assert "expired" in worker.wait_for_log("Discarding expired task")


# -- countdown and ETA


def test_countdown_is_held_by_the_broker_not_the_worker(
    producer: Celeriac, start_worker_process: StartWorker
) -> None:
    worker = start_worker_process(MODULE, "-P", "threads", "-c", "2")
    sent = datetime.now(UTC)
    delayed = send(producer, "add", 1, 1, countdown=1)
    # A later task runs at once; the worker fetched it after the delayed one was published,
    # so had the broker handed out the delayed one the worker would have received it too.
    assert send(producer, "add", 2, 2).get(timeout=20) == 4
    assert delayed.state == states.PENDING
    assert producer.broker.size(QUEUE) == 1
    assert f"Received task: {MODULE}.add[{delayed.id}]" not in worker.log()

    assert delayed.get(timeout=20) == 2
    assert delayed.date_done is not None
    assert delayed.date_done - sent >= timedelta(seconds=1)
    assert delayed.date_done - sent < timedelta(seconds=10)
    assert f"Received task: {MODULE}.add[{delayed.id}]" in worker.log()


def test_eta_runs_no_earlier_than_asked(
    producer: Celeriac, start_worker_process: StartWorker
) -> None:
    start_worker_process(MODULE, "-P", "threads", "-c", "2")
    eta = datetime.now(UTC) + timedelta(seconds=0.8)
    result = send(producer, "add", 5, 5, eta=eta)
    assert result.get(timeout=20) == 10
    assert result.date_done is not None and result.date_done >= eta


# -- shutdown and crashes


def test_sigterm_lets_running_tasks_finish_and_loses_nothing(
    producer: Celeriac, start_worker_process: StartWorker, tmp_path: Path
) -> None:
    first = start_worker_process(MODULE, "-P", "prefork", "-c", "2")
    runs = tmp_path / "runs.txt"
    started = [tmp_path / f"started-{i}" for i in range(2)]
    long = [send(producer, "sleep_marked", 2, str(path), str(runs)) for path in started]
    wait_until(lambda: all(p.exists() for p in started), 20, "both long tasks to start")
    # Sent once both processes are busy: an idle process fetches what it can run.
    quick = [send(producer, "add", i, 1) for i in range(20)]

    first.terminate()
    assert first.wait(timeout=30) == 0
    log = first.log()
    assert "Shutting down gracefully" in log
    assert [r.state for r in long] == [states.SUCCESS, states.SUCCESS]
    assert [r.get(timeout=1) for r in long] == [2, 2]
    # The quick ones never started: each is still on the queue for the next worker.
    assert all(r.state == states.PENDING for r in quick)
    assert producer.broker.size(QUEUE) == 20
    assert producer.broker.dead_letters() == []

    start_worker_process(MODULE, "-P", "threads", "-c", "4")
    assert get_all(quick) == [i + 1 for i in range(20)]
    assert len(runs.read_text().splitlines()) == 2  # the long ones did not run again
    assert producer.broker.size(QUEUE) == 0


def test_sigterm_gives_back_at_once_what_a_child_fetched_and_had_not_started(
    producer: Celeriac, start_worker_process: StartWorker, tmp_path: Path
) -> None:
    runs, marker = tmp_path / "runs.txt", tmp_path / "started"
    long = send(producer, "sleep_marked", 2, str(marker), str(runs))
    quick = [send(producer, "add", i, 1) for i in range(3)]
    # Queued before the worker starts: its one child takes all four in one batch.
    first = start_worker_process(MODULE, "-P", "prefork", "-c", "1", "--prefetch-multiplier", "4")
    wait_until(marker.exists, 20, "the long task to start")
    log = first.log()
    assert all(f"Received task: {MODULE}.add[{r.id}]" in log for r in quick)  # held, waiting

    first.terminate()
    first.wait_for_log("Handed back 3 prefetched task(s)")
    assert not long.ready()  # handed back at once, while the long task still runs
    assert first.wait(timeout=30) == 0
    assert long.get(timeout=1) == 2
    assert all(r.state == states.PENDING for r in quick)
    assert producer.broker.dead_letters() == []

    start_worker_process(MODULE, "-P", "threads", "-c", "2")
    assert get_all(quick) == [1, 2, 3]
    assert len(runs.read_text().splitlines()) == 1


def test_a_second_sigterm_stops_at_once_and_the_running_task_goes_back(
    producer: Celeriac, start_worker_process: StartWorker, tmp_path: Path
) -> None:
    first = start_worker_process(MODULE, "-P", "prefork", "-c", "1")
    marker = tmp_path / "started"
    result = send(producer, "sleep_once", 30, str(marker))
    wait_until(marker.exists, 20, "the long task to start")
    first.terminate()
    first.wait_for_log("Shutting down gracefully")
    started = time.monotonic()
    first.terminate()
    assert first.wait(timeout=10) != 0
    assert time.monotonic() - started < 5
    assert result.state == states.PENDING
    assert producer.broker.size(QUEUE) == 1  # given back, not lost

    start_worker_process(MODULE, "-P", "threads", "-c", "1")
    assert result.get(timeout=20) == "done"


def test_sigint_stops_an_idle_worker_cleanly(
    producer: Celeriac, start_worker_process: StartWorker
) -> None:
    worker = start_worker_process(MODULE, "-P", "prefork", "-c", "2")
    assert send(producer, "add", 1, 2).get(timeout=20) == 3
    worker.process.send_signal(signal.SIGINT)
    assert worker.wait(timeout=20) == 0
    assert "stopped" in worker.log() and "Traceback" not in worker.log()


def test_a_killed_pool_process_is_replaced_and_its_task_redelivered(
    producer: Celeriac, start_worker_process: StartWorker, tmp_path: Path
) -> None:
    worker = start_worker_process(MODULE, "-P", "prefork", "-c", "2")
    marker = tmp_path / "killed-pid"
    result = send(producer, "die_once", str(marker))
    survivor_pid = result.get(timeout=30)
    killed_pid = int(marker.read_text())
    assert survivor_pid != killed_pid
    assert "died" in worker.wait_for_log("died")
    # The pool is whole again: two processes serve tasks, neither of them the dead one.
    pids = set(get_all([send(producer, "pid") for _ in range(10)]))
    assert killed_pid not in pids and worker.pid not in pids
    assert producer.broker.dead_letters() == []


def test_a_task_that_kills_every_process_is_dead_lettered_after_its_budget(
    producer: Celeriac, start_worker_process: StartWorker
) -> None:
    worker = start_worker_process(MODULE, "-P", "prefork", "-c", "2")
    poison = send(producer, "die_always")
    with pytest.raises(TaskError) as caught:
        poison.get(timeout=30)
    assert caught.value.type_name == "WorkerLostError"
    (dead,) = producer.broker.dead_letters()
    assert poison.id.encode() in dead.body
    assert dead.reason == "worker_lost" and dead.deliveries == producer.broker.max_deliveries
    assert worker.log().count(f"{MODULE}.die_always[{poison.id}] died") == dead.deliveries
    assert send(producer, "add", 1, 2).get(timeout=20) == 3  # the worker goes on


def test_a_killed_worker_s_task_runs_again_within_one_lease(
    tmp_path: Path, producer: Celeriac, start_worker_process: StartWorker
) -> None:
    source = (
        (tmp_path / f"{MODULE}.py")
        .read_text()
        .replace(
            'Celeriac("proc", ',
            'Celeriac("proc", broker_transport_options={"lease_timeout": 1.0}, ',
        )
    )
    (tmp_path / "short_lease.py").write_text(source)
    first = start_worker_process("short_lease", "-P", "prefork", "-c", "1")
    marker = tmp_path / "started"
    result = producer.send_task("short_lease.sleep_once", (30, str(marker)))
    wait_until(marker.exists, 20, "the task to start")
    first.stop()  # SIGKILL to the worker and its pool: no chance to give anything back
    killed = time.monotonic()
    assert result.state == states.PENDING

    start_worker_process("short_lease", "-P", "threads", "-c", "1")
    assert result.get(timeout=20) == "done"
    assert time.monotonic() - killed < 10  # one lease (1 s) and a fetch, not 30 s


def test_soft_and_hard_time_limits(producer: Celeriac, start_worker_process: StartWorker) -> None:
    worker = start_worker_process(MODULE, "-P", "prefork", "-c", "2")
    soft = send(producer, "soft_limited", 10, soft_time_limit=0.3)
    hard = send(producer, "hard_limited", 10, time_limit=0.5)
    assert soft.get(timeout=20) == "soft limit caught"

    started = time.monotonic()
    with pytest.raises(TaskError) as caught:
        hard.get(timeout=20)
    assert time.monotonic() - started < 8  # stopped at 0.5 s, not after its 10 s sleep
    assert caught.value.type_name == "TimeLimitExceeded"
    assert hard.state == states.FAILURE
    assert send(producer, "add", 4, 4).get(timeout=20) == 8  # the worker goes on
    worker.wait_for_log("Hard time limit")
    assert producer.broker.size(QUEUE) == 0  # the timed-out task is not redelivered


def test_time_limits_declared_on_the_task_apply_when_sent_by_name(
    producer: Celeriac, start_worker_process: StartWorker
) -> None:
    start_worker_process(MODULE, "-P", "prefork", "-c", "2")
    soft = send(producer, "soft_limited", 2)  # @app.task(soft_time_limit=0.3)
    hard = send(producer, "hard_limited", 2)  # @app.task(time_limit=0.5)
    assert soft.get(timeout=20) == "soft limit caught"
    with pytest.raises(TaskError, match="TimeLimitExceeded"):
        hard.get(timeout=20)


def test_max_tasks_per_child_replaces_processes(
    producer: Celeriac, start_worker_process: StartWorker
) -> None:
    start_worker_process(MODULE, "-P", "prefork", "-c", "2", "--max-tasks-per-child", "5")
    results = [send(producer, "pid") for _ in range(20)]
    pids = get_all(results)
    assert all(r.state == states.SUCCESS for r in results)
    counts = {pid: pids.count(pid) for pid in set(pids)}
    assert len(counts) >= 4 and max(counts.values()) <= 5, counts


def test_retiring_pool_processes_lose_no_delivery(
    producer: Celeriac, start_worker_process: StartWorker
) -> None:
    worker = start_worker_process(MODULE, "-P", "prefork", "-c", "2", "--max-tasks-per-child", "1")
    results = [send(producer, "pid") for _ in range(20)]
    outcomes = []
    for result in results:
        try:
            outcomes.append(result.get(timeout=20) and states.SUCCESS)
        except TaskError as exc:
            outcomes.append(exc.type_name)
    lost = [line for line in worker.log().splitlines() if "died" in line]
    assert lost == [], lost  # recycling a process is not a crash
    assert outcomes == [states.SUCCESS] * 20
    assert producer.broker.dead_letters() == []


def test_a_solo_worker_enforces_soft_time_limits_in_its_main_thread(
    producer: Celeriac, start_worker_process: StartWorker
) -> None:
    start_worker_process(MODULE, "-P", "solo")
    soft = send(producer, "soft_limited", 10, soft_time_limit=0.3)
    assert soft.get(timeout=20) == "soft limit caught"
    assert send(producer, "add", 4, 4).get(timeout=20) == 8


def test_max_memory_per_child_replaces_a_process_past_its_budget(
    producer: Celeriac, start_worker_process: StartWorker
) -> None:
    # 1 KiB: every child is past its budget after its first task, so each is replaced.
    worker = start_worker_process(
        MODULE, "-P", "prefork", "-c", "2", "--max-memory-per-child", "1"
    )
    results = [send(producer, "pid") for _ in range(10)]
    pids = get_all(results)
    assert len(set(pids)) == 10  # one task per process
    assert all(r.state == states.SUCCESS for r in results)
    assert producer.broker.dead_letters() == []
    assert "(limit 1 KiB): replacing it" in worker.log()


def test_bad_worker_limits_are_usage_errors(tmp_path: Path) -> None:
    for option in ("--max-memory-per-child", "--max-tasks-per-child"):
        run = run_cli(["-A", "nothing_here", "worker", option, "0"], cwd=tmp_path)
        assert run.returncode == 2
        assert "at least 1" in run.stderr


def test_the_health_file_is_kept_fresh_and_removed_at_shutdown(
    tmp_path: Path, producer: Celeriac, start_worker_process: StartWorker
) -> None:
    health = tmp_path / "healthy"
    worker = start_worker_process(MODULE, "-P", "threads", "--health-file", str(health))
    first = wait_until(lambda: health.exists() and health.stat().st_mtime, 10, "health file")
    wait_until(lambda: health.stat().st_mtime > first, 10, "the health file to be touched again")
    assert send(producer, "add", 1, 1).get(timeout=20) == 2
    worker.terminate()
    assert worker.wait() == 0
    assert not health.exists()


def test_autoscale_grows_the_pool_with_the_backlog(
    producer: Celeriac, start_worker_process: StartWorker
) -> None:
    worker = start_worker_process(MODULE, "-P", "threads", "--autoscale", "4,1")
    assert "concurrency: 1..4 (threads, autoscale)" in worker.log()
    started = time.monotonic()
    results = [send(producer, "sleep", 1.0) for _ in range(8)]
    get_all(results)
    # One thread would need 8 s; the grown pool needs far less.
    assert time.monotonic() - started < 7.0
    assert "growing the pool 1 -> " in worker.log()


def test_autoscale_is_refused_for_pools_that_cannot_resize(tmp_path: Path) -> None:
    write_module(tmp_path, "scaled", "from celeriac import Celeriac\napp = Celeriac('s')\n")
    run = run_cli(["-A", "scaled", "worker", "-P", "solo", "--autoscale", "4,1"], cwd=tmp_path)
    assert run.returncode == 2
    assert "--autoscale works with the prefork and threads pools" in run.stderr
    run = run_cli(["-A", "scaled", "worker", "--autoscale", "2,5"], cwd=tmp_path)
    assert run.returncode == 2
    assert "MIN (5) is larger than MAX (2)" in run.stderr
