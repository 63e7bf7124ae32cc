"""Events: the sender's batches, the kept history, the receiver, task and worker events from
real workers (in a thread on memory, and in processes on SQLite and Redis), and the monitor's
state."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import StartWorker
from helpers import wait_until, write_module

from celeriac import Celeriac, Reject, states
from celeriac.events import (
    TOPIC,
    EventReceiver,
    EventSender,
    decode_batch,
    encode_batch,
    message_event,
)
from celeriac.history import History
from celeriac.monitor import State
from celeriac.testing import start_worker

pytestmark = pytest.mark.timeout(60)

Event = dict[str, Any]


def collect(receiver: EventReceiver, done: Any, timeout: float = 10.0) -> list[Event]:
    """Events from ``receiver`` until ``done(events)`` is true (AssertionError at timeout)."""
    seen: list[Event] = []

    def enough() -> bool:
        seen.extend(receiver.get(0.05))
        return bool(done(seen))

    wait_until(enough, timeout, "events")
    return seen


def of_task(events: list[Event], task_id: str) -> dict[str, Event]:
    return {e["type"]: e for e in events if e.get("uuid") == task_id}


# -- the kept history ----------------------------------------------------------------------


def test_history_keeps_the_last_entries_in_order(app: Celeriac) -> None:
    history = History(app.broker, "h", length=3, age=60)
    for n in range(1, 6):
        assert history.append(f"entry {n}".encode()) == n
    assert history.read() == [(3, b"entry 3"), (4, b"entry 4"), (5, b"entry 5")]


def test_a_history_of_length_zero_keeps_nothing(app: Celeriac) -> None:
    history = History(app.broker, "h", length=0, age=60)
    assert history.append(b"x") == 0
    assert history.read() == []


def test_a_slot_from_an_older_turn_of_the_counter_is_not_read(app: Celeriac) -> None:
    history = History(app.broker, "h", length=4, age=60)
    for n in range(6):
        history.append(f"{n}".encode())
    app.broker.put("h-seq", b"2")  # the counter was lost and started again
    assert history.read() == []  # slots 1 and 2 hold entries 5 and 6, not 1 and 2


# -- the sender and the receiver -------------------------------------------------------------


def test_sent_events_arrive_in_one_batch_with_clocks(app: Celeriac) -> None:
    sender = EventSender(app, "me@here").start()
    with app.broker.listen([TOPIC]) as subscription:
        for n in range(50):
            sender.send("task-received", uuid=f"t{n}")
        bodies = []
        wait_until(lambda: bodies.extend(subscription.get(0.05)) or bodies, 5, "a batch")
    sender.stop()
    assert len(bodies) == 1  # sent within one flush interval: one broadcast
    assert not bodies[0][1].startswith(b"{")  # a large batch is compressed
    origin, events = decode_batch(bodies[0][1])
    assert origin == sender.id
    assert [e["uuid"] for e in events] == [f"t{n}" for n in range(50)]
    assert [e["clock"] for e in events] == list(range(1, 51))
    assert {e["hostname"] for e in events} == {"me@here"}
    assert all(isinstance(e["timestamp"], float) for e in events)


def test_a_receiver_started_later_replays_the_history_once(app: Celeriac) -> None:
    sender = EventSender(app, "me@here").start()
    for n in range(5):
        sender.send("task-succeeded", uuid=f"early{n}")
    sender.flush()
    with EventReceiver(app) as receiver:
        sender.send("task-succeeded", uuid="late")
        events = collect(receiver, lambda seen: any(e["uuid"] == "late" for e in seen))
        # The second look at the history finds nothing new: nothing is yielded twice.
        events += list(receiver.iter(timeout=1.5))
    sender.stop()
    assert [e["uuid"] for e in events] == [*(f"early{n}" for n in range(5)), "late"]


def test_events_broadcast_just_before_a_receiver_opened_are_found(app: Celeriac) -> None:
    sender = EventSender(app, "me@here").start()
    sender.send("task-succeeded", uuid="just-before")
    sender.flush(keep=False)  # broadcast, not in the history yet
    with EventReceiver(app) as receiver:
        assert receiver.get(0.01) == []
        sender.flush()  # the sender keeps it about a second later
        events = collect(receiver, lambda seen: seen, timeout=5)
    sender.stop()
    assert [e["uuid"] for e in events] == ["just-before"]


def test_a_receiver_without_history_sees_only_new_events(app: Celeriac) -> None:
    sender = EventSender(app, "me@here").start()
    sender.send("task-succeeded", uuid="old")
    sender.flush()
    with EventReceiver(app, history=False) as receiver:
        sender.send("task-succeeded", uuid="new")
        events = collect(receiver, lambda seen: seen)
    sender.stop()
    assert [e["uuid"] for e in events] == ["new"]


def test_event_history_length_bounds_what_is_kept(app: Celeriac) -> None:
    app.conf.event_history_length = 2
    sender = EventSender(app, "me@here")
    for n in range(4):
        sender.send("task-succeeded", uuid=f"t{n}")
        sender.flush()
    assert [e["uuid"] for e in EventReceiver(app).history()] == ["t2", "t3"]
    app.conf.event_history_length = 0
    assert EventReceiver(app).history() == []


def test_events_written_as_text_read_back_exactly(app: Celeriac) -> None:
    message = app.build_message(
        "t.say", ('he said "hi" \u2713\n\\',), {"k": "v"}, countdown=10, expires=60
    )
    body = encode_batch("s", "h@x", 1, 1, [message_event("task-received", message)])
    [event] = decode_batch(body)[1]
    assert (event["uuid"], event["name"], event["args"], event["kwargs"]) == (
        message.id, "t.say", message.argsrepr, message.kwargsrepr,
    )  # fmt: skip
    assert event["eta"] == message.eta.isoformat() and "expires" in event
    assert event["type"] == "task-received" and isinstance(event["timestamp"], float)


@pytest.mark.parametrize(
    "body", [b"not json", b"[1, 2]", b'{"events": "no"}', b'{"events": [1, {"no": "type"}]}']
)
def test_a_bad_batch_gives_no_events(body: bytes) -> None:
    assert decode_batch(body)[1] == []


def test_a_bad_batch_on_the_topic_does_not_stop_a_receiver(app: Celeriac) -> None:
    with EventReceiver(app, history=False) as receiver:
        app.broker.broadcast(TOPIC, b"garbage")
        app.broker.broadcast(TOPIC, encode_batch("s", "h@x", 1, 7, [{"type": "task-sent"}]))
        [event] = collect(receiver, lambda seen: seen)
    assert (event["type"], event["hostname"], event["pid"], event["clock"]) == (
        "task-sent", "h@x", 1, 7,
    )  # fmt: skip


def test_task_sent_events_when_asked_for(app: Celeriac) -> None:
    app.conf.task_send_sent_event = True
    with EventReceiver(app, history=False) as receiver:
        result = app.send_task("proj.add", (2, 2), queue="elsewhere", countdown=60)
        events = collect(receiver, lambda seen: seen)
    [sent] = events
    assert sent["type"] == "task-sent" and sent["uuid"] == result.id
    assert (sent["name"], sent["args"], sent["queue"]) == ("proj.add", "(2, 2)", "elsewhere")
    assert sent["eta"] and "root_id" not in sent  # a task that is its own root


@pytest.mark.parametrize("many", [False, True])
def test_task_sent_is_stamped_before_the_publish(
    app: Celeriac, monkeypatch: pytest.MonkeyPatch, many: bool
) -> None:
    # A worker can receive the message, and stamp task-received, before the publish
    # returns: task-sent carries the time the publish began, so it sorts first.
    app.conf.task_send_sent_event = True
    broker = app.broker
    name = "publish_many" if many else "publish"
    publish = getattr(broker, name)

    def slow_publish(*args: object, **kwargs: object) -> object:
        time.sleep(0.2)
        return publish(*args, **kwargs)

    monkeypatch.setattr(broker, name, slow_publish)
    with EventReceiver(app, history=False) as receiver:
        before = time.time()
        if many:
            [result] = app.send_many([("proj.add", (1, 1), {}, {"countdown": 1})])
        else:
            result = app.send_task("proj.add", (1, 1), countdown=1)
        events = collect(receiver, lambda seen: seen)
    [sent] = events
    assert sent["uuid"] == result.id
    assert before <= sent["timestamp"] < before + 0.1


def test_events_sent_after_a_worker_in_this_process_stopped_still_go_out(app: Celeriac) -> None:
    with start_worker(app):
        pass  # the worker's sender served this process while it ran
    app.conf.task_send_sent_event = True
    with EventReceiver(app, history=False) as receiver:
        result = app.send_task("proj.add", (1, 1))
        events = collect(receiver, lambda seen: seen)
    assert [(e["type"], e["uuid"]) for e in events] == [("task-sent", result.id)]


def test_no_task_sent_events_by_default(app: Celeriac) -> None:
    with EventReceiver(app, history=False) as receiver:
        app.send_task("proj.add", (2, 2))
        assert list(receiver.iter(timeout=0.3)) == []


# -- task events from a worker in a thread ---------------------------------------------------


@pytest.fixture
def events_app(app: Celeriac) -> Iterator[Celeriac]:
    """``app`` with task events on and a few tasks."""
    app.conf.worker_send_task_events = True
    gate = threading.Event()

    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="t.fail")
    def fail() -> None:
        raise ValueError("on purpose")

    @app.task(name="t.retry", bind=True, max_retries=1, default_retry_delay=0)
    def retry(self: Any) -> None:
        raise self.retry(exc=KeyError("again"))

    @app.task(name="t.reject")
    def reject() -> None:
        raise Reject("no thanks")

    @app.task(name="t.progress", bind=True)
    def progress(self: Any) -> int:
        self.update_state(state="PROGRESS", meta={"done": 1, "of": 2})
        return 2

    @app.task(name="t.wait")
    def wait() -> bool:
        return gate.wait(10)

    yield app
    gate.set()


def test_a_task_reports_received_started_succeeded(events_app: Celeriac) -> None:
    with EventReceiver(events_app, history=False) as receiver, start_worker(events_app):
        result = events_app.send_task("t.add", (2, 3))
        events = collect(receiver, lambda seen: "task-succeeded" in of_task(seen, result.id))
    mine = of_task(events, result.id)
    received, started, succeeded = (
        mine["task-received"],
        mine["task-started"],
        mine["task-succeeded"],
    )
    assert (received["name"], received["args"], received["kwargs"]) == ("t.add", "(2, 3)", "{}")
    assert (received["queue"], received["retries"]) == ("celeriac", 0)
    assert succeeded["result"] == "5" and succeeded["runtime"] >= 0
    assert received["timestamp"] <= started["timestamp"] <= succeeded["timestamp"]
    assert received["hostname"] == succeeded["hostname"] and "@" in received["hostname"]


def test_failures_retries_rejections_and_progress_are_reported(events_app: Celeriac) -> None:
    with EventReceiver(events_app, history=False) as receiver, start_worker(events_app):
        ids = {name: events_app.send_task(f"t.{name}").id
               for name in ("fail", "retry", "reject", "progress")}  # fmt: skip
        wanted = {("fail", "task-failed"), ("retry", "task-retried"),
                  ("reject", "task-rejected"), ("progress", "task-succeeded")}  # fmt: skip
        events = collect(receiver, lambda seen: all(
            kind in of_task(seen, ids[name]) for name, kind in wanted
        ))  # fmt: skip
    failed = of_task(events, ids["fail"])["task-failed"]
    assert failed["exception"] == "ValueError(on purpose)"
    assert "Traceback" in failed["traceback"] and "on purpose" in failed["traceback"]
    retried = of_task(events, ids["retry"])["task-retried"]
    assert "KeyError" in retried["exception"]
    assert of_task(events, ids["reject"])["task-rejected"]["requeue"] is False
    progress = of_task(events, ids["progress"])["task-progress"]
    assert (progress["state"], progress["meta"]) == ("PROGRESS", {"done": 1, "of": 2})


def test_without_task_events_only_worker_events_are_sent(app: Celeriac) -> None:
    @app.task(name="t.quiet")
    def quiet() -> int:
        return 1

    with EventReceiver(app, history=False) as receiver, start_worker(app) as worker:
        assert worker.consumer.task_events is None
        app.send_task("t.quiet").get(timeout=5)
        events = list(receiver.iter(timeout=0.5))
    assert all(not e["type"].startswith("task-") for e in events)


def test_worker_events_online_heartbeat_offline(app: Celeriac) -> None:
    with EventReceiver(app, history=False) as receiver:
        with start_worker(app):
            online = collect(receiver, lambda seen: seen)[0]
            beat = collect(receiver, lambda s: any(e["type"] == "worker-heartbeat" for e in s))
        offline = collect(receiver, lambda s: any(e["type"] == "worker-offline" for e in s))
    assert online["type"] == "worker-online" and online["sw_ident"] == "celeriac"
    heartbeat = next(e for e in beat if e["type"] == "worker-heartbeat")
    assert {"active", "processed", "loadavg", "pool_size", "freq"} <= set(heartbeat)
    assert heartbeat["freq"] == 2.0 and heartbeat["pool_size"] == 2
    assert offline[-1]["hostname"] == online["hostname"]


# -- the monitor's state ---------------------------------------------------------------------


def test_state_follows_a_task_through_its_events() -> None:
    state = State()
    for kind, at, extra in [
        ("task-received", 1.0, {"name": "t.add", "args": "(1, 2)"}),
        ("task-started", 2.0, {}),
        ("task-succeeded", 3.0, {"result": "3", "runtime": 0.5}),
    ]:
        state.event({"type": kind, "uuid": "a", "timestamp": at, "hostname": "w1", **extra})
    task = state.tasks["a"]
    assert (task.state, task.name, task.args, task.result, task.runtime, task.worker) == (
        states.SUCCESS, "t.add", "(1, 2)", "3", 0.5, "w1",
    )  # fmt: skip
    assert (task.received, task.started, task.succeeded) == (1.0, 2.0, 3.0)


def test_state_keeps_a_finished_task_finished_when_older_events_come_late() -> None:
    state = State()
    state.event({"type": "task-succeeded", "uuid": "a", "timestamp": 3.0, "hostname": "w1"})
    state.event({"type": "task-sent", "uuid": "a", "timestamp": 1.0, "name": "t.add"})
    state.event({"type": "task-started", "uuid": "a", "timestamp": 2.0, "hostname": "w1"})
    assert (state.tasks["a"].state, state.tasks["a"].name) == (states.SUCCESS, "t.add")


def test_state_keeps_a_finished_task_finished_when_its_sent_event_is_stamped_later() -> None:
    """A client stamps task-sent after publishing; a quick worker can finish the task first."""
    state = State()
    for kind, at in [("task-received", 1.0), ("task-succeeded", 1.2), ("task-sent", 1.5)]:
        state.event({"type": kind, "uuid": "a", "timestamp": at, "hostname": "w1"})
    assert state.tasks["a"].state == states.SUCCESS
    assert state.tasks["a"].sent == 1.5
    state.event({"type": "task-sent", "uuid": "b", "timestamp": 1.0})
    state.event({"type": "task-received", "uuid": "b", "timestamp": 0.9, "hostname": "w1"})
    assert state.tasks["b"].state == states.RECEIVED  # later in life, though stamped earlier


def test_state_follows_a_retry_and_a_custom_state() -> None:
    state = State()
    for kind, at, extra in [
        ("task-received", 1.0, {}), ("task-retried", 2.0, {"exception": "KeyError()"}),
        ("task-received", 3.0, {"retries": 1}),
        ("task-progress", 4.0, {"state": "PROGRESS", "meta": {"done": 1}}),
    ]:  # fmt: skip
        state.event({"type": kind, "uuid": "a", "timestamp": at, **extra})
    task = state.tasks["a"]
    assert (task.state, task.retries, task.meta) == ("PROGRESS", 1, {"done": 1})
    assert task.exception == "KeyError()"


def test_state_is_bounded_and_skips_what_it_does_not_know() -> None:
    state = State(max_tasks=3)
    for n in range(5):
        state.event({"type": "task-received", "uuid": f"t{n}", "timestamp": float(n)})
    state.event({"type": "task-received"})  # no uuid
    state.event({"type": "something-else", "uuid": "x"})
    assert list(state.tasks) == ["t2", "t3", "t4"]
    assert [t.uuid for t in state.tasks_by_time(2)] == ["t4", "t3"]
    assert state.event_count == 7


def test_state_marks_a_worker_offline_after_missed_heartbeats_or_offline() -> None:
    state = State()
    state.event({"type": "worker-online", "hostname": "w1", "timestamp": 100.0, "freq": 2.0})
    state.event({"type": "worker-heartbeat", "hostname": "w1", "timestamp": 102.0, "freq": 2.0,
                 "active": 1, "processed": 7, "loadavg": [0.5, 0.4, 0.3]})  # fmt: skip
    worker = state.workers["w1"]
    assert (worker.active, worker.processed, worker.loadavg) == (1, 7, [0.5, 0.4, 0.3])
    assert worker.alive(now=107.0) and not worker.alive(now=108.5)  # three beats missed
    assert [w.hostname for w in state.alive_workers(now=103.0)] == ["w1"]
    state.event({"type": "worker-offline", "hostname": "w1", "timestamp": 103.0})
    assert not worker.alive(now=103.5) and worker.status(now=103.5) == "offline"


# -- real worker processes on SQLite ----------------------------------------------------------

TASKS = """
    from celeriac import Celeriac

    app = Celeriac("evproc", broker={url!r})


    @app.task
    def add(x, y):
        return x + y


    @app.task
    def fail():
        raise ValueError("from a process")


    @app.task(bind=True)
    def progress(self):
        self.update_state(state="PROGRESS", meta={{"done": 1}})
        return "done"
"""


@pytest.fixture
def client(tmp_path: Path, engine_url: str, no_celeriac_env: None) -> Iterator[Celeriac]:
    """A client of a fresh broker of each engine, and the task module ``evproc`` on it."""
    url = engine_url
    write_module(tmp_path, "evproc", TASKS.format(url=url))
    application = Celeriac("client", broker=url)
    yield application
    application.close()


def test_events_flow_from_a_prefork_worker_process(
    client: Celeriac, start_worker_process: StartWorker
) -> None:
    start_worker_process("evproc", "-E", "-c", "2", "-n", "ev1@%h")
    ok, bad = client.send_task("evproc.add", (1, 2)), client.send_task("evproc.fail")
    busy = client.send_task("evproc.progress")
    with EventReceiver(client) as receiver:  # opened after the fact: the history has it
        events = collect(receiver, lambda seen: "task-succeeded" in of_task(seen, ok.id)
                         and "task-failed" in of_task(seen, bad.id)
                         and "task-progress" in of_task(seen, busy.id))  # fmt: skip
    progress = of_task(events, busy.id)["task-progress"]  # sent by the pool process
    assert progress["meta"] == {"done": 1} and progress["hostname"].startswith("ev1@")
    assert of_task(events, ok.id)["task-succeeded"]["result"] == "3"
    failed = of_task(events, bad.id)["task-failed"]
    assert failed["exception"] == "ValueError(from a process)"
    assert failed["hostname"].startswith("ev1@")
    online = [e for e in events if e["type"] == "worker-online"]
    assert online and online[0]["hostname"].startswith("ev1@")
    state = State()
    for event in events:
        state.event(event)
    assert state.tasks[ok.id].state == states.SUCCESS
    assert state.tasks[bad.id].state == states.FAILURE
    assert [w.hostname for w in state.alive_workers()] == [online[0]["hostname"]]


def test_workers_find_each_other_and_go_offline(
    client: Celeriac, start_worker_process: StartWorker
) -> None:
    first = start_worker_process("evproc", "-P", "solo", "-n", "alpha@%h")
    assert "No other workers online: this worker is alone." in first.log()
    second = start_worker_process("evproc", "-P", "solo", "-n", "beta@%h")
    line = next(ln for ln in second.log().splitlines() if "Other workers online" in ln)
    assert "alpha@" in line and "beta@" not in line
    first.terminate()
    assert first.wait() == 0
    with EventReceiver(client) as receiver:
        events = collect(receiver, lambda seen: any(e["type"] == "worker-offline" for e in seen))
    state = State()
    for event in events:
        state.event(event)
    assert [w.hostname.split("@")[0] for w in state.alive_workers()] == ["beta"]
    assert json.dumps(events, default=str)  # events are plain data
