"""What only the SQLite engine promises: several processes on one file, forks, file paths."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

import pytest

from celeriac.errors import TransportError
from celeriac.transports import Delivery, open_transport
from celeriac.transports.sqlite import SQLiteTransport, _claim_sql

ROOT = Path(__file__).resolve().parents[2]

PRODUCER = textwrap.dedent(
    """
    import sys
    from celeriac.transports import open_transport

    url, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    transport = open_transport(url)
    for start in range(0, count, 100):
        if start % 200:
            transport.publish_many(
                [("work", f"{name}-{i}".encode(), None, i % 3) for i in range(start, start + 100)]
            )
        else:
            for i in range(start, start + 100):
                transport.publish("work", f"{name}-{i}".encode(), priority=i % 3)
    """
)

CONSUMER = textwrap.dedent(
    """
    import json, sys
    from celeriac.transports import open_transport

    transport = open_transport(sys.argv[1])
    seen = []
    while True:
        deliveries = transport.fetch(["work"], limit=50, timeout=0.05)
        if deliveries:
            assert all(transport.ack_many(deliveries)), "lost a lease"
            seen += [(d.message_id, d.body.decode(), d.deliveries) for d in deliveries]
        elif transport.get("producers-done"):
            break
    print(json.dumps(seen))
    """
)


def run_python(code: str, *args: str) -> subprocess.Popen[str]:
    """Start a Python process that runs ``code`` against this checkout."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE, text=True
    )


def test_processes_share_one_file_and_deliver_each_message_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    # Everyone starts on a file that does not exist yet: creating the schema is raced too.
    consumers = [run_python(CONSUMER, url) for _ in range(2)]
    producers = [run_python(PRODUCER, url, name, "2000") for name in ("p1", "p2")]
    for producer in producers:
        assert producer.wait(timeout=60) == 0
    open_transport(url).put("producers-done", b"1")

    seen = []
    for consumer in consumers:
        out, _ = consumer.communicate(timeout=60)
        assert consumer.returncode == 0
        seen += json.loads(out)

    bodies = Counter(body for _, body, _ in seen)
    expected = {f"{name}-{i}" for name in ("p1", "p2") for i in range(2000)}
    assert set(bodies) == expected
    assert max(bodies.values()) == 1
    assert len({message_id for message_id, _, _ in seen}) == len(seen) == 4000
    assert {deliveries for _, _, deliveries in seen} == {1}
    assert open_transport(url).size("work") == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_reopens_the_connection(tmp_path: Path) -> None:
    transport = SQLiteTransport(f"sqlite:///{tmp_path / 'fork.sqlite3'}")
    transport.publish("work", b"for the child")
    transport.put("parent", b"here")  # the connection is open before the fork

    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            [delivery] = transport.fetch(["work"])
            transport.ack(delivery)
            transport.put("child", delivery.body)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

    # The parent's connection still works after the child used and left its own.
    assert transport.get("child") == b"for the child"
    assert transport.size("work") == 0
    transport.publish("work", b"after")
    assert [d.body for d in transport.fetch(["work"])] == [b"after"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_while_another_thread_writes_can_write(tmp_path: Path) -> None:
    """A worker forks replacement pool processes while its other threads use the broker.

    A fork in the middle of another thread's write transaction once left the child waiting
    for a lock no one would release, for the whole busy timeout.
    """
    transport = SQLiteTransport(f"sqlite:///{tmp_path / 'fork.sqlite3'}", {"busy_timeout": 5})
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            transport.put("parent", os.urandom(64))
            time.sleep(0.0002)  # room for the child's writes: busy waiting is not fair

    writer = threading.Thread(target=write)
    writer.start()
    codes = []
    try:
        for index in range(30):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                code = 1
                try:
                    transport.put(f"child-{index}", b"written")
                    code = 0
                except BaseException as exc:  # the test's message shows why
                    (tmp_path / f"child-{index}.error").write_text(repr(exc))
                finally:
                    os._exit(code)
            codes.append(_exit_code_within(pid, 15.0))
    finally:
        stop.set()
        writer.join()
    errors = [path.read_text() for path in sorted(tmp_path.glob("child-*.error"))]
    assert codes == [0] * 30, errors
    assert all(transport.get(f"child-{index}") == b"written" for index in range(30))


def _exit_code_within(pid: int, seconds: float) -> int | str:
    """A child's exit code, or 'hung' (and the child killed) if it did not exit in time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "hung"


def test_relative_path_is_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    transport = open_transport("sqlite:///relative.sqlite3")
    transport.publish("work", b"x")
    assert (tmp_path / "relative.sqlite3").exists()

    # The path was fixed when the transport was made, not when it is used.
    monkeypatch.chdir(tmp_path.parent)
    assert transport.size("work") == 1
    transport.close()
    assert transport.size("work") == 1


def test_absolute_path(tmp_path: Path) -> None:
    path = tmp_path / "absolute.sqlite3"
    transport = open_transport(f"sqlite:///{path}")
    assert isinstance(transport, SQLiteTransport)
    assert transport.path == str(path)
    transport.publish("work", b"x")
    assert path.exists()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite://:memory:", "sqlite://h/x"])
def test_bad_sqlite_urls(url: str) -> None:
    with pytest.raises(TransportError, match="sqlite:///"):
        open_transport(url)


def test_missing_directory_is_a_transport_error(tmp_path: Path) -> None:
    transport = open_transport(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.sqlite3'}")
    with pytest.raises(TransportError, match="cannot open"):
        transport.publish("work", b"x")


def test_file_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "wal.sqlite3"
    open_transport(f"sqlite:///{path}").publish("work", b"x")
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("queues", [1, 3])
def test_claim_reads_ready_messages_through_the_index(tmp_path: Path, queues: int) -> None:
    path = tmp_path / "plan.sqlite3"
    open_transport(f"sqlite:///{path}").publish("work", b"x")
    with closing(sqlite3.connect(path)) as conn:
        params = ["token", 0.0, *(["work", 1] * queues), 1]
        plan = conn.execute(f"EXPLAIN QUERY PLAN {_claim_sql(queues)}", params).fetchall()
    details = [row[3] for row in plan]
    assert sum("USING INDEX messages_ready" in d for d in details) == queues
    assert not any(d.startswith("SCAN messages") for d in details)


def test_expired_leases_are_reclaimed_only_now_and_then(tmp_path: Path) -> None:
    transport = open_transport(f"sqlite:///{tmp_path / 'r.sqlite3'}", {"reclaim_interval": 0.5})
    transport.publish("work", b"x")
    start = time.monotonic()
    assert transport.fetch(["work"], lease=0.05)
    # The first fetch swept; the lease runs out at once, but the next sweep is 0.5 s later.
    [again] = transport.fetch(["work"], timeout=3.0)
    assert again.deliveries == 2
    assert 0.45 <= time.monotonic() - start < 2.0


def test_old_topic_rows_and_expired_keys_are_swept(tmp_path: Path) -> None:
    path = tmp_path / "sweep.sqlite3"
    options = {"sweep_interval": 0, "topic_keep": 5}
    transport = open_transport(f"sqlite:///{path}", options)
    with transport.listen(["events"]) as subscription:
        for i in range(20):
            transport.broadcast("events", b"%d" % i)
        assert len(subscription.get(timeout=1.0)) == 5  # a slow listener loses the oldest
    transport.put("short", b"x", ttl=0.05)
    time.sleep(0.1)
    transport.put("long", b"x")

    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM topics").fetchone()[0] == 5
        assert conn.execute("SELECT key FROM keys").fetchall() == [("long",)]

    aged = open_transport(f"sqlite:///{path}", {"sweep_interval": 0, "topic_max_age": 0.05})
    time.sleep(0.1)
    aged.broadcast("events", b"new")
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT body FROM topics").fetchall() == [(b"new",)]


PROBE = textwrap.dedent(
    """
    import sys, time
    from celeriac.transports import open_transport

    transport = open_transport(sys.argv[1], {"busy_timeout": 60})
    transport.put("probe", b"0")
    print("ready", flush=True)
    longest, end = 0.0, time.monotonic() + float(sys.argv[2])
    while time.monotonic() < end:
        started = time.monotonic()
        transport.put("probe", b"1")
        longest = max(longest, time.monotonic() - started)
        time.sleep(0.01)
    print(longest, flush=True)
    """
)


def _hold_gil(seconds: float) -> None:
    """Keep the GIL for about ``seconds``: sum() over a range runs in C and never lets go."""
    started = time.perf_counter()
    sum(range(2_000_000))
    per_item = (time.perf_counter() - started) / 2_000_000
    sum(range(int(seconds / per_item)))


def test_a_thread_holding_the_gil_does_not_keep_other_processes_from_writing(
    tmp_path: Path,
) -> None:
    # A worker's fetcher, finisher and lease checks write while a task of the same process
    # holds the GIL (the threads pool). No write may keep SQLite's lock across Python code,
    # or the lease helper process could not renew that worker's leases until the task let go.
    url = f"sqlite:///{tmp_path / 'gil.sqlite3'}"
    transport = open_transport(url)
    transport.publish_many([("work", b"x", None, 0)] * 20_000)
    probe = run_python(PROBE, url, "7.5")
    assert probe.stdout is not None and probe.stdout.readline().strip() == "ready"
    stop, done = threading.Event(), []

    def consume() -> None:
        while not stop.is_set():
            deliveries = transport.fetch(["work"], limit=8, timeout=0.01)
            assert transport.extend(deliveries, 30.0) == deliveries  # as a worker confirms
            done.extend(
                transport.complete([(d, (f"r-{d.message_id}", b"ok", None)) for d in deliveries])
            )

    consumer = threading.Thread(target=consume)
    consumer.start()
    try:
        time.sleep(0.5)
        for _ in range(6):  # each may begin inside a transaction of the consumer's, or not
            _hold_gil(1.0)
            time.sleep(0.05)
    finally:
        stop.set()
        consumer.join()
    out, _ = probe.communicate(timeout=30)
    assert probe.returncode == 0
    assert done and all(done)
    longest = float(out)
    # A lock kept across Python code would make it wait about a second (a hold of the GIL);
    # a busy machine alone has delayed one write by 0.3 s here.
    assert longest < 0.6, f"a write of another process waited {longest:.2f} s"


def test_opening_a_file_with_its_tables_takes_no_write_lock(tmp_path: Path) -> None:
    # Creating the tables is a transaction of several statements (see _create_schema): a
    # process that opens the file while another writes must not queue behind it, nor hold
    # the lock while its threads run Python code.
    path = tmp_path / "open.sqlite3"
    open_transport(f"sqlite:///{path}").publish("q", b"x")
    with closing(sqlite3.connect(path, isolation_level=None)) as writer:
        writer.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
        late = open_transport(f"sqlite:///{path}", {"busy_timeout": 0.2})
        assert late.size("q") == 1
        writer.execute("ROLLBACK")


def test_a_file_made_by_a_release_with_fewer_tables_gets_the_missing_ones(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.sqlite3"
    open_transport(f"sqlite:///{path}").broadcast("events", b"x")
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("DROP TABLE topics")
        conn.execute("PRAGMA user_version = 0")  # as a file made before the mark
    transport = open_transport(f"sqlite:///{path}")
    with transport.listen(["events"]) as subscription:
        transport.broadcast("events", b"y")
        assert subscription.get(timeout=1.0) == [("events", b"y")]
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] != 0


def test_renewing_leases_holds_the_write_lock_for_one_statement_only(tmp_path: Path) -> None:
    transport = open_transport(f"sqlite:///{tmp_path / 'renew.sqlite3'}")
    transport.publish_many([("q", b"x", None, 0)] * 3)
    deliveries = transport.fetch(["q"], limit=3)
    assert isinstance(transport, SQLiteTransport)
    statements: list[str] = []
    with transport._guard():
        transport._connection().set_trace_callback(statements.append)
    assert transport.extend(deliveries, 10.0) == deliveries
    assert statements and not any("BEGIN" in s for s in statements), statements


def test_threads_renewing_at_once_each_learn_their_own_lost_leases(tmp_path: Path) -> None:
    # A refused row stays in the connection's temp table until read back: two threads that
    # renew at once must not read each other's (a lost lease taken for kept, or the reverse).
    transport = open_transport(f"sqlite:///{tmp_path / 'race.sqlite3'}")
    transport.publish_many([("q", b"x", None, 0)] * 4)
    held_a, gone_a, held_b, gone_b = transport.fetch(["q"], limit=4)
    assert transport.release(gone_a) and transport.release(gone_b)  # their leases are lost
    wrong: list[object] = []

    def renew(held: Delivery, gone: Delivery) -> None:
        for _ in range(1000):
            kept = transport.extend([gone, held], 30.0)
            if kept != [held]:
                wrong.append(kept)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns between any two bytecodes
    try:
        threads = [threading.Thread(target=renew, args=pair)
                   for pair in ((held_a, gone_a), (held_b, gone_b))]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switch)
    assert wrong == []
