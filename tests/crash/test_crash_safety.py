"""Crash safety: real workers, real faults, and a ledger kept outside the system under test.

Each test writes a task module into its tmp_path, starts real ``python -m celeriac worker``
processes on it (each in its own process group), sends tasks by name from this process, and
then harms the workers: SIGKILL to a whole process group, a task that kills its own pool
process, SIGSTOP, SIGTERM. The tasks append every start and finish to a ledger (``ledger.py``,
one append-only file per process), and the test holds that ledger against what it enqueued and
the faults it caused: lost = enqueued - finished - dead-lettered must be empty, and every task
that ran twice must have been in flight in a process group the test killed or froze.

Every test runs on each engine: SQLite (a file in tmp_path) and Redis (a private server).
Leases are 1 s, so that recovery is quick. Linux only: the tests read ``/proc``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import WorkerProcess, wait_until, write_module
from ledger import Fault, Ledger, Run

from celeriac import Celeriac, TaskError, states
from celeriac.message import decode
from celeriac.transports.base import DeadLetter

pytestmark = pytest.mark.timeout(150)

LEASE = 1.0
MODULE = "crash_tasks"
QUEUE = "celeriac"
#: Seconds past the lease a killed task may take to run again: the broker notices the expiry
#: (SQLite sweeps expired leases every 0.5 s), a worker fetches, a pool process starts it.
RECOVERY_SLACK = 1.5

TASKS = """
    import os
    import resource
    import signal
    import time

    import ledger
    from celeriac import Celeriac, signals

    app = Celeriac("crash", broker={url!r}, broker_transport_options={{"lease_timeout": {lease}}})
    LEDGER = {ledger!r}


    @signals.worker_process_init.connect
    def spawned(**_):
        ledger.record(LEDGER, "spawn", "-", 0)


    def begin(request):
        ledger.record(LEDGER, "start", request.id, request.delivery_info["delivery_count"])


    def end(request):
        ledger.record(LEDGER, "finish", request.id, request.delivery_info["delivery_count"])
        return [request.hostname, os.getpid()]


    @app.task(bind=True)
    def work(self, seconds):
        # Small sleeps, so that time spent stopped by SIGSTOP does not count as work done.
        begin(self.request)
        left = seconds
        while left > 0:
            time.sleep(min(left, 0.05))
            left -= 0.05
        return end(self.request)


    @app.task(bind=True)
    def hold_gil(self, seconds):
        # sum() over a range runs in C and never lets another thread of its process run.
        # Sized by the fastest of three trials, so that it holds the GIL at least that long.
        begin(self.request)
        per_million = min(timed_sum(4_000_000) for _ in range(3))
        sum(range(int(seconds / per_million * 1_000_000)))
        return end(self.request)


    def timed_sum(n):
        started = time.perf_counter()
        sum(range(n))
        return (time.perf_counter() - started) * 1_000_000 / n


    @app.task(bind=True)
    def crash(self, how):
        begin(self.request)
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif how == "exit":
            os._exit(1)
        blow_up()


    def blow_up():
        # Grow until the test's out-of-memory killer ends this process. RLIMIT_AS caps the
        # growth even without it; a MemoryError then waits here to be killed.
        size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (size + 512 * 2**20, hard))
        chunks = []
        try:
            while True:
                chunks.append(b"x" * (16 * 2**20))
                time.sleep(0.01)
        except MemoryError:
            time.sleep(60)
"""


# -- fixtures ------------------------------------------------------------------------------


@dataclass
class Cluster:
    """The test's side: a producer app, a way to start workers, what it sent and did."""

    app: Celeriac
    ledger_dir: Path
    start_worker: Callable[..., WorkerProcess]
    enqueued: list[str] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)

    def start(self, name: str, *options: str, ready: bool = True) -> WorkerProcess:
        """A worker named ``name@host`` (prefork, 2 processes unless ``options`` say else)."""
        args = ["-P", "prefork", "-c", "2", *options, "-n", f"{name}@%h"]
        return self.start_worker(MODULE, *args, ready=ready)

    def send(self, task: str, *args: Any, **options: Any) -> str:
        """Send ``crash_tasks.<task>`` by name; its id is recorded as enqueued."""
        task_id = str(self.app.send_task(f"{MODULE}.{task}", args, **options).id)
        self.enqueued.append(task_id)
        return task_id

    def send_many(self, task: str, calls: list[tuple[Any, ...]]) -> list[str]:
        """Send one task per argument tuple in one batch; ids recorded as enqueued."""
        results = self.app.send_many([(f"{MODULE}.{task}", args, {}) for args in calls])
        ids = [result.id for result in results]
        self.enqueued.extend(ids)
        return ids

    def ledger(self) -> Ledger:
        """The ledger as the workers have written it so far."""
        return Ledger.read(self.ledger_dir)

    def dead(self) -> dict[str, DeadLetter]:
        """The dead letters, by task id."""
        letters = self.app.broker.dead_letters(limit=100_000)
        return {decode(d.body, self.app.conf.accept_content).id: d for d in letters}

    def settled(self, timeout: float) -> Ledger:
        """Wait until every enqueued task finished or was dead-lettered and the queue is empty."""

        def check() -> Ledger | None:
            ledger = self.ledger()
            if ledger.lost(self.enqueued, self.dead()) or self.app.broker.size(QUEUE):
                return None
            return ledger

        ledger = wait_until(check, timeout, "every task finished and acknowledged")
        assert ledger is not None
        return ledger

    def kill(self, worker: WorkerProcess) -> Fault:
        """SIGKILL the worker's whole process group (its pool too); recorded as a fault."""
        os.killpg(worker.pid, signal.SIGKILL)
        fault = Fault(worker.pid, time.time(), "kill")
        self.faults.append(fault)
        worker.stop()
        return fault

    def freeze(self, worker: WorkerProcess, group: bool = True) -> Fault:
        """SIGSTOP the worker's whole process group, or its main process; a fault."""
        (os.killpg if group else os.kill)(worker.pid, signal.SIGSTOP)
        fault = Fault(worker.pid, time.time(), "freeze")
        self.faults.append(fault)
        return fault

    def result(self, task_id: str) -> tuple[str, Any]:
        """The stored state and value of a task."""
        result = self.app.AsyncResult(task_id)
        return result.state, result.result


@pytest.fixture
def cluster(
    tmp_path: Path,
    engine_url: str,
    no_celeriac_env: None,
    start_worker_process: Callable[..., WorkerProcess],
) -> Iterator[Cluster]:
    """The task module and ledger in tmp_path, and the producer; workers die at teardown."""
    ledger_dir = tmp_path / "ledger"
    ledger_dir.mkdir()
    shutil.copy(Path(__file__).with_name("ledger.py"), tmp_path / "ledger.py")
    source = TASKS.format(url=engine_url, lease=LEASE, ledger=str(ledger_dir))
    write_module(tmp_path, MODULE, source)
    app = Celeriac("producer", broker=engine_url)
    yield Cluster(app, ledger_dir, start_worker_process)
    app.close()


# -- checks shared by the tests ------------------------------------------------------------


def assert_accounted(cluster: Cluster, ledger: Ledger) -> None:
    """Nothing lost, every duplicate explained by a fault, every finished task stored."""
    dead = cluster.dead()
    assert ledger.lost(cluster.enqueued, dead) == set()
    assert ledger.unexplained(cluster.faults) == {}
    assert cluster.app.broker.size(QUEUE) == 0
    for task_id in set(cluster.enqueued) - set(dead):
        assert cluster.result(task_id)[0] == states.SUCCESS, task_id


def assert_ran_once(cluster: Cluster, ledger: Ledger) -> None:
    """No faults at all: every task ran exactly once, on its first delivery."""
    assert_accounted(cluster, ledger)
    assert ledger.duplicates() == {}
    assert ledger.delivery_counts() == {1}
    assert cluster.dead() == {}


# -- 1. baseline ---------------------------------------------------------------------------


def test_baseline_runs_every_task_once(cluster: Cluster) -> None:
    workers = [cluster.start("a"), cluster.start("b")]
    ids = cluster.send_many("work", [(0,)] * 5000)

    ledger = cluster.settled(timeout=60)
    assert_ran_once(cluster, ledger)
    assert len(ledger.runs) == len(ids)
    assert {run.pgid for runs in ledger.runs.values() for run in runs} == {w.pid for w in workers}


# -- 2. kill storm -------------------------------------------------------------------------


def test_kill_storm_loses_nothing_and_reruns_only_what_was_in_flight(cluster: Cluster) -> None:
    cluster.start("steady")
    victim = cluster.start("victim")
    rng = random.Random(2)
    cluster.send_many("work", [(rng.uniform(0.02, 0.2),) for _ in range(400)])

    storm_ends = time.monotonic() + 8
    while time.monotonic() < storm_ends:
        time.sleep(1.5)  # a timed fault, not a wait for work
        cluster.kill(victim)
        victim = cluster.start("victim", ready=False)

    ledger = cluster.settled(timeout=60)
    assert_accounted(cluster, ledger)
    interrupted = ledger.interrupted(cluster.faults)
    assert interrupted, "the storm never hit a running task"
    delays = _recovery_delays(ledger, interrupted, cluster.faults, set(cluster.dead()))
    assert delays and max(delays) < LEASE + RECOVERY_SLACK, delays
    assert all(d.reason == "lease_expired" for d in cluster.dead().values())


def _recovery_delays(
    ledger: Ledger, interrupted: list[tuple[Run, Fault]], faults: list[Fault], dead: set[str]
) -> list[float]:
    """Seconds from each kill to the next run of a task it cut short.

    Only direct redeliveries count: when the delivery count jumped by more than one, a
    delivery in between was prefetched by a worker that a later kill took down, unstarted.
    """
    delays = []
    for run, fault in interrupted:
        if run.finished is not None or run.task_id in dead:
            continue  # finished before the kill (maybe acknowledged), or out of deliveries
        again = ledger.rerun_after(run, fault)
        assert again is not None, run
        if again.deliveries == run.deliveries + 1:
            delays.append(again.started - fault.at)
        else:
            assert any(fault.at < f.at < again.started for f in faults), (run, again)
    return delays


# -- 3. a task that kills its own pool process ---------------------------------------------


class OutOfMemoryKiller:
    """Plays the kernel's OOM killer for some workers: SIGKILL to a pool process too big."""

    def __init__(self, workers: list[WorkerProcess], limit: int) -> None:
        self.workers = workers
        self.limit = limit
        #: when each process it killed died, by pid
        self.killed: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> OutOfMemoryKiller:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.wait(0.01):
            for pid in (p for w in self.workers for p in _children(w.pid)):
                if _resident_pages(pid) * page > self.limit:
                    # The time before the kill: read after it, it may come later than the
                    # replacement's start when this thread is not scheduled in between.
                    at = time.time()
                    _signal(pid, signal.SIGKILL)
                    self.killed[pid] = at


def _children(pid: int) -> list[int]:
    """The child processes of ``pid``, whichever of its threads forked them."""
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children += [int(p) for p in (task / "children").read_text().split()]
    return children


def _resident_pages(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError):
        return 0


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _late_replacements(
    ledger: Ledger, crashes: list[Run], deaths: dict[int, float], within: float
) -> list[tuple[Run, float, list[float]]]:
    """Crashes whose pool process was not replaced ``within`` seconds of dying.

    A process died when it was killed (``deaths``, by pid), else right after its start line.
    Each crash is matched with the first unused ``spawn`` of its worker after the death.
    """
    late = []
    spawns = {pgid: sorted(ledger.spawns(pgid)) for pgid in {run.pgid for run in crashes}}
    for run in sorted(crashes, key=lambda r: deaths.get(r.pid, r.started)):
        died = deaths.get(run.pid, run.started)
        replacement = next((t for t in spawns[run.pgid] if t > died), None)
        if replacement is None or replacement - died > within:
            late.append((run, died, spawns[run.pgid]))
        else:
            spawns[run.pgid].remove(replacement)
    return late


def test_a_task_that_kills_its_pool_process_is_dead_lettered_after_its_budget(
    cluster: Cluster,
) -> None:
    workers = [cluster.start("a"), cluster.start("b")]
    with OutOfMemoryKiller(workers, limit=256 * 2**20) as oom:
        poison = {how: cluster.send("crash", how) for how in ("kill", "exit", "memory")}
        rng = random.Random(3)
        others = cluster.send_many("work", [(rng.uniform(0.01, 0.1),) for _ in range(100)])
        ledger = cluster.settled(timeout=60)
    assert oom.killed, "the memory blow-up was never killed"

    dead = cluster.dead()
    assert set(dead) == set(poison.values())
    assert ledger.lost(cluster.enqueued, dead) == set()
    assert set(ledger.duplicates()) == set(poison.values())  # the crashes are the only faults
    assert all(cluster.result(task_id)[0] == states.SUCCESS for task_id in others)
    budget = cluster.app.broker.max_deliveries
    for task_id in poison.values():
        assert dead[task_id].reason == "worker_lost"
        assert dead[task_id].deliveries == budget
        assert [(r.deliveries, r.finished) for r in ledger.runs[task_id]] == [
            (n, None) for n in range(1, budget + 1)
        ]
        state, error = cluster.result(task_id)
        assert state == states.FAILURE and isinstance(error, TaskError)
        assert error.type_name == "WorkerLostError"
    crashes = [run for task_id in poison.values() for run in ledger.runs[task_id]]
    assert _late_replacements(ledger, crashes, oom.killed, within=2.0) == []
    logs = "".join(w.log() for w in workers)
    assert f"crash[{poison['exit']}] died (exit code 1" in logs
    assert f"crash[{poison['kill']}] died (signal 9" in logs
    assert f"crash[{poison['memory']}] died (signal 9" in logs


def test_a_crash_dead_letter_names_the_exit_and_the_pids(cluster: Cluster) -> None:
    worker = cluster.start("a")
    task_id = cluster.send("crash", "exit")
    ledger = cluster.settled(timeout=30)

    history = cluster.dead()[task_id].history
    assert "exit code 1" in json.dumps(history)
    details = [entry["detail"] for entry in history]
    assert [d["exitcode"] for d in details] == [1] * len(ledger.runs[task_id])
    assert [d["pid"] for d in details] == [run.pid for run in ledger.runs[task_id]]
    assert {d["worker_pid"] for d in details} == {worker.pid}


# -- 4. long tasks and far ETAs ------------------------------------------------------------


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_long_tasks_and_far_etas_run_once(cluster: Cluster, pool: str) -> None:
    workers = [cluster.start(name, "-P", pool, "-c", "4") for name in ("a", "b")]
    long = [cluster.send("work", 4.0) for _ in range(3)]  # renewed about ten times each
    due = {}
    for countdown in (2.0, 3.0, 4.0, 5.0):
        not_before = time.time() + countdown
        due[cluster.send("work", 0.1, countdown=countdown)] = not_before

    ledger = cluster.settled(timeout=30)
    assert_ran_once(cluster, ledger)
    for task_id, at in due.items():
        assert ledger.runs[task_id][0].started >= at
    for task_id in long:
        (run,) = ledger.runs[task_id]
        assert run.finished is not None and run.finished - run.started >= 4.0
    assert not any("lease lost" in w.log() for w in workers)


# In prefork the lease keeper is a thread of the parent, out of the tasks' reach; in the
# threads and solo pools (asyncio runs sync tasks in threads too) the task holds the GIL of
# the worker process itself, and the leases are renewed by the worker's lease helper process.
# On SQLite the worker's writes must not hold the file's lock while the task holds the GIL
# (tests/transports/test_sqlite.py checks that on its own).
@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_a_task_holding_the_gil_keeps_its_lease(cluster: Cluster, pool: str) -> None:
    # Sent before the workers start, so that a worker holds both leases before either task
    # runs. A fetch that completes while a task of that process holds the GIL is a known
    # window of the in-process pools: its leases are registered only once the GIL is free.
    held = [cluster.send("hold_gil", 3 * LEASE) for _ in range(2)]
    workers = [cluster.start(name, "-P", pool) for name in ("a", "b")]

    ledger = cluster.settled(timeout=40)
    assert_ran_once(cluster, ledger)
    for task_id in held:
        (run,) = ledger.runs[task_id]
        assert run.finished is not None and run.finished - run.started > 1.5 * LEASE
    assert not any("lease lost" in w.log() for w in workers)


# -- 5. a frozen worker --------------------------------------------------------------------


# prefork: the whole process group is frozen. threads: only the worker process, which runs
# the tasks, so that its lease helper process, still running, must notice and stop renewing.
@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_frozen_worker_s_tasks_are_taken_over_and_its_late_results_refused(
    cluster: Cluster, pool: str
) -> None:
    frozen = cluster.start("frozen", "-P", pool)
    taken = [cluster.send("work", 2.5) for _ in range(2)]
    wait_until(lambda: len(cluster.ledger().runs) == 2, 15, "both tasks to start")
    other = cluster.start("other")

    fault = cluster.freeze(frozen, group=pool == "prefork")
    try:
        wait_until(
            lambda: _all_started_by(cluster.ledger(), taken, other.pid),
            3 * LEASE + RECOVERY_SLACK,
            "the other worker to take the frozen worker's tasks",
        )
        time.sleep(max(0.0, fault.at + 3 * LEASE - time.time()))  # frozen for three leases
    finally:
        os.killpg(frozen.pid, signal.SIGCONT)

    cluster.settled(timeout=15)
    wait_until(
        lambda: _all_finished_by(cluster.ledger(), taken, frozen.pid), 15, "the late results"
    )
    ledger = cluster.ledger()
    assert_accounted(cluster, ledger)
    for task_id in taken:
        old, new = ledger.runs[task_id]
        assert (old.pgid, new.pgid) == (frozen.pid, other.pid)
        assert new.started - fault.at < LEASE + RECOVERY_SLACK
        assert old.finished is not None and new.finished is not None
        assert old.finished > new.finished  # the frozen worker's result came later...
        hostname = f"other@{socket.gethostname()}"
        assert cluster.result(task_id) == (states.SUCCESS, [hostname, new.pid])
    refused = "refused: its lease was lost"  # ...and was refused, as was renewing the lease
    wait_until(lambda: frozen.log().count(refused) >= len(taken), 10, "refused late results")
    assert "lease lost on message" in frozen.log()


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_frozen_worker_skips_the_fetched_tasks_it_had_not_started(
    cluster: Cluster, pool: str
) -> None:
    # One slot: the second task waits in the frozen worker, fetched and not started. Both are
    # sent first: a prefork child fetches only when it is free, and takes both at once.
    running = cluster.send("work", 2.5)
    waiting = cluster.send("work", 0.1)
    frozen = cluster.start("frozen", "-P", pool, "-c", "1")
    wait_until(lambda: len(cluster.ledger().runs) == 1, 15, "the first task to start")
    inspect = cluster.app.control.inspect(f"frozen@{socket.gethostname()}", timeout=1.0)
    wait_until(
        lambda: [t["id"] for ts in (inspect.reserved() or {}).values() for t in ts] == [waiting],
        10,
        "the second task to be fetched and held",
    )
    other = cluster.start("other")

    fault = cluster.freeze(frozen, group=pool == "prefork")
    try:
        wait_until(
            lambda: _all_started_by(cluster.ledger(), [running, waiting], other.pid),
            3 * LEASE + RECOVERY_SLACK,
            "the other worker to take both tasks",
        )
        time.sleep(max(0.0, fault.at + 3 * LEASE - time.time()))
    finally:
        os.killpg(frozen.pid, signal.SIGCONT)

    cluster.settled(timeout=15)
    late = lambda: _all_finished_by(cluster.ledger(), [running], frozen.pid)  # noqa: E731
    wait_until(late, 15, "the late result")
    wait_until(
        lambda: "lease ran out before it could start" in frozen.log()
        or len(cluster.ledger().runs[waiting]) > 1,
        10,
        "the frozen worker to skip the task it held, or to run it",
    )
    ledger = cluster.ledger()
    assert_accounted(cluster, ledger)
    assert [run.pgid for run in ledger.runs[waiting]] == [other.pid]  # never started twice
    assert [run.pgid for run in ledger.runs[running]] == [frozen.pid, other.pid]


def test_a_killed_threads_worker_s_lease_helper_stops_with_it(cluster: Cluster) -> None:
    # SIGKILL to the worker process alone (as the kernel's OOM killer would): its lease
    # helper must not keep the dead worker's leases alive, and must exit.
    victim = cluster.start("victim", "-P", "threads")
    (helper,) = _children(victim.pid)
    task_id = cluster.send("work", 3 * LEASE)
    wait_until(lambda: cluster.ledger().runs.get(task_id), 15, "the task to start")
    cluster.start("other")
    os.kill(victim.pid, signal.SIGKILL)
    fault = Fault(victim.pid, time.time(), "kill")
    cluster.faults.append(fault)

    ledger = cluster.settled(timeout=15)
    assert_accounted(cluster, ledger)
    old, new = ledger.runs[task_id]
    assert old.finished is None and new.started - fault.at < LEASE + RECOVERY_SLACK
    wait_until(lambda: _exited(helper), 5, "the lease helper to exit")


def _exited(pid: int) -> bool:
    """Whether process ``pid`` is gone (or a zombie, waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] in "ZX"
    except OSError:
        return True


def _all_started_by(ledger: Ledger, task_ids: list[str], pgid: int) -> bool:
    """Whether a process of group ``pgid`` started each of ``task_ids``."""
    return all(any(r.pgid == pgid for r in ledger.runs.get(t, [])) for t in task_ids)


def _all_finished_by(ledger: Ledger, task_ids: list[str], pgid: int) -> bool:
    """Whether the group's run of each of ``task_ids`` finished."""
    runs = [r for t in task_ids for r in ledger.runs.get(t, []) if r.pgid == pgid]
    return len(runs) == len(task_ids) and all(r.finished for r in runs)


# -- 6. graceful shutdown under a steady load ----------------------------------------------


class SteadyLoad:
    """A thread that sends a batch of short tasks every ``interval`` seconds until stopped."""

    def __init__(self, cluster: Cluster, batch: int, interval: float) -> None:
        self.cluster = cluster
        self.batch = batch
        self.interval = interval
        self.rng = random.Random(6)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send, daemon=True)

    def __enter__(self) -> SteadyLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise self.error

    def _send(self) -> None:
        try:
            while not self._stop.is_set():
                calls = [(self.rng.uniform(0.05, 0.15),) for _ in range(self.batch)]
                self.cluster.send_many("work", calls)
                self._stop.wait(self.interval)
        except BaseException as exc:  # reported by __exit__, in the test's thread
            self.error = exc


def _received(worker: WorkerProcess) -> set[str]:
    """The task ids a worker logged as received."""
    return set(re.findall(rf"Received task: {MODULE}\.\w+\[([\w-]+)\]", worker.log()))


def _waiting_in(worker: WorkerProcess, cluster: Cluster) -> set[str]:
    """Task ids the worker received and has not started: its prefetched work."""
    started = {t for t, runs in cluster.ledger().runs.items() if runs[0].pgid == worker.pid}
    return _received(worker) - started


def test_sigterm_under_load_hands_back_prefetched_work_at_once(cluster: Cluster) -> None:
    leaving = cluster.start("leaving")
    staying = cluster.start("staying")
    with SteadyLoad(cluster, batch=8, interval=0.8):
        wait_until(lambda: len(_waiting_in(leaving, cluster)) >= 4, 20, "prefetched work")
        leaving.terminate()
        stopped_at = time.time()
        assert leaving.wait(timeout=20) == 0
        time.sleep(2.0)  # the load goes on for a while after the shutdown
    ledger = cluster.settled(timeout=30)

    assert_ran_once(cluster, ledger)
    mine = {t for t, runs in ledger.runs.items() if runs[0].pgid == leaving.pid}
    released = _received(leaving) - mine
    assert released, "the leaving worker had nothing prefetched to hand back"
    assert f"Handed back {len(released)} prefetched task(s)" in leaving.log()
    for task_id in released:
        (run,) = ledger.runs[task_id]
        assert run.pgid == staying.pid
        assert run.started - stopped_at < 1.0, task_id


def test_sigterm_keeps_renewing_the_leases_of_running_tasks(cluster: Cluster) -> None:
    # A task longer than the lease, running when its worker is told to stop.
    leaving = cluster.start("leaving")
    task_id = cluster.send("work", 3 * LEASE)
    wait_until(lambda: cluster.ledger().runs.get(task_id), 15, "the task to start")
    cluster.start("staying")
    leaving.terminate()
    assert leaving.wait(timeout=20) == 0

    assert_ran_once(cluster, cluster.settled(timeout=15))
