"""Canvas on the memory transport with a worker in a thread: signatures, chain, group, chord,
callbacks, map/starmap/chunks, nested canvases, root/parent ids, bad input, eager mode."""

from __future__ import annotations

import json
import pickle
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import CELERIAC_ENV, wait_until

from celeriac import (
    Celeriac,
    ChordError,
    GroupResult,
    Reject,
    Signature,
    TaskError,
    chain,
    chord,
    chunks,
    group,
    signature,
    states,
)
from celeriac.errors import NotRegistered, SerializationError
from celeriac.result import AsyncResult
from celeriac.task import Request
from celeriac.testing import WorkerThread, start_worker

pytestmark = pytest.mark.timeout(60)

T = "canvas."  # every task of this module is registered under this prefix


class Ledger:
    """What tasks recorded, shared with the worker's threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: list[tuple[Any, ...]] = []

    def add(self, *entry: Any) -> None:
        with self.lock:
            self.entries.append(entry)

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        with self.lock:
            return [entry[1:] for entry in self.entries if entry[0] == kind]

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()


LEDGER = Ledger()


def register(app: Celeriac) -> None:
    """The tasks the tests compose, under names of this module's own."""

    @app.task(name=T + "add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name=T + "mul")
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task(name=T + "tsum")
    def tsum(values: list[int]) -> int:
        LEDGER.add("tsum", list(values))
        return sum(values)

    @app.task(name=T + "boom")
    def boom(*args: Any) -> None:
        raise ValueError(f"boom {list(args)}")

    @app.task(name=T + "slow_add")
    def slow_add(x: int, y: int, delay: float) -> int:
        time.sleep(delay)
        return x + y

    @app.task(name=T + "record")
    def record(*args: Any) -> list[Any]:
        LEDGER.add("record", *args)
        return list(args)

    @app.task(name=T + "on_error")
    def on_error(request: Request, exc: BaseException, traceback: str) -> None:
        LEDGER.add("on_error", request.id, request.task, type(exc).__name__, str(exc), traceback)

    @app.task(name=T + "on_error_id")
    def on_error_id(task_id: str) -> None:
        LEDGER.add("on_error_id", task_id)

    @app.task(name=T + "on_error_note")
    def on_error_note(task_id: str, note: str) -> None:
        LEDGER.add("on_error_note", task_id, note)

    @app.task(name=T + "refuse")
    def refuse(*args: Any) -> None:
        raise Reject("not for me", requeue=False)

    @app.task(name=T + "ids", bind=True)
    def ids(self: Any, *args: Any) -> dict[str, Any]:
        request = self.request
        return {"id": request.id, "parent": request.parent_id, "root": request.root_id}

    @app.task(name=T + "spawn")
    def spawn() -> list[str]:
        result = group(add.s(1, 1), add.s(2, 2)).apply_async()
        return [member.id for member in result]

    @app.task(name=T + "returns_object")
    def returns_object(*args: Any) -> object:
        return object()


def task(app: Celeriac, name: str) -> Any:
    return app.tasks[T + name]


@pytest.fixture(scope="module")
def _canvas_worker() -> Iterator[tuple[Celeriac, WorkerThread]]:
    with pytest.MonkeyPatch.context() as patch:
        for name in CELERIAC_ENV:
            patch.delenv(name, raising=False)
        app = Celeriac("canvas", broker=f"memory://canvas-{uuid.uuid4().hex}")
        register(app)
        with start_worker(app, concurrency=4) as worker:
            yield app, worker
        app.close()


@pytest.fixture
def capp(_canvas_worker: tuple[Celeriac, WorkerThread]) -> Iterator[Celeriac]:
    """The app of a worker in a thread (4 threads) that has this module's tasks."""
    LEDGER.clear()
    app, worker = _canvas_worker
    yield app
    worker.join()


@pytest.fixture
def worker(_canvas_worker: tuple[Celeriac, WorkerThread]) -> WorkerThread:
    return _canvas_worker[1]


@pytest.fixture
def eager_app(app: Celeriac) -> Celeriac:
    """An app with no worker, for ``apply()`` and eager mode."""
    register(app)
    LEDGER.clear()
    return app


def meta(app: Celeriac, result: Any) -> dict[str, Any]:
    return app.results.get_meta(result.id if not isinstance(result, str) else result)


# -- signatures ------------------------------------------------------------------------------


def test_a_signature_is_a_dict_that_round_trips_through_json(capp: Celeriac) -> None:
    add = task(capp, "add")
    sig = add.s(2, y=3).set(countdown=1, priority=5)
    assert isinstance(sig, dict) and isinstance(sig, Signature)
    assert sig == {
        "task": T + "add", "args": [2], "kwargs": {"y": 3},
        "options": {"countdown": 1, "priority": 5}, "subtask_type": None, "immutable": False,
    }  # fmt: skip
    assert (sig.task, sig.args, sig.kwargs, sig.immutable) == (T + "add", (2,), {"y": 3}, False)
    back = signature(json.loads(json.dumps(sig)), app=capp)
    assert back == sig and type(back) is Signature
    pickled = pickle.loads(pickle.dumps(chain(sig, add.s(1))))  # the app is not pickled
    assert isinstance(pickled, chain) and pickled == chain(sig, add.s(1))
    assert back.apply_async(countdown=0).get(timeout=5) == 5
    assert repr(add.si(1, 2)) == f"%{T}add(1, 2)"


def test_signature_by_name_and_by_task_object(capp: Celeriac) -> None:
    add = task(capp, "add")
    by_name = signature(T + "add", (1, 2), app=capp)
    assert by_name == add.signature((1, 2)) == add.s(1, 2) == add.subtask((1, 2))
    assert signature(T + "add", [1], {"y": 2}, {"queue": "celeriac"}, app=capp).delay().get(
        timeout=5
    ) == 3
    assert by_name.delay().get(timeout=5) == 3
    assert add.signature((1, 2), countdown=0).options == {"countdown": 0}


def test_partial_arguments_clone_and_immutability(capp: Celeriac) -> None:
    add = task(capp, "add")
    partial = add.s(10)
    assert partial.delay(5).get(timeout=5) == 15  # new args come before the partial ones
    clone = partial.clone(args=(1,), queue="celeriac")
    assert clone.args == (1, 10) and clone.options == {"queue": "celeriac"}
    assert partial.args == (10,) and partial.options == {}  # the original is untouched
    frozen = add.si(2, 2)
    assert frozen.immutable and frozen.clone(args=(99,)).args == (2, 2)
    assert frozen.apply_async((99,)).get(timeout=5) == 4
    assert add.s(1, 1).set(immutable=True).immutable


def test_options_given_to_apply_async_win_over_the_signature_s(capp: Celeriac) -> None:
    sig = task(capp, "add").s(1, 1).set(priority=3, task_id="opt-1")
    result = sig.apply_async(task_id="opt-2")
    assert result.id == "opt-2" and result.get(timeout=5) == 2


def test_the_pipe_operator_builds_chains_and_a_group_piped_is_a_chord(capp: Celeriac) -> None:
    add, mul, tsum = task(capp, "add"), task(capp, "mul"), task(capp, "tsum")
    pipeline = add.s(1, 1) | mul.s(3) | add.s(4)
    assert isinstance(pipeline, chain) and len(pipeline.tasks) == 3  # flattened
    assert pipeline.apply_async().get(timeout=5) == 10
    upgraded = group(add.s(1, 1), add.s(2, 2)) | tsum.s()
    assert isinstance(upgraded, chord)
    assert upgraded.apply_async().get(timeout=5) == 6


def test_canvases_round_trip_through_json(capp: Celeriac) -> None:
    add, tsum = task(capp, "add"), task(capp, "tsum")
    canvas = chain(add.s(1, 1), chord([add.s(1), add.s(2)], tsum.s()), add.s(10))
    data = json.loads(json.dumps(canvas))
    back = signature(data, app=capp)
    assert isinstance(back, chain) and back == canvas
    assert isinstance(back.tasks[1], chord) and isinstance(back.tasks[1].header, group)
    assert back.apply_async().get(timeout=5) == (2 + 1) + (2 + 2) + 10


# -- chain ---------------------------------------------------------------------------------


def test_a_chain_feeds_each_result_to_the_next_and_parent_walks_back(capp: Celeriac) -> None:
    add, mul = task(capp, "add"), task(capp, "mul")
    result = chain(add.s(1, 2), mul.s(10), add.s(5)).apply_async()
    assert result.get(timeout=5) == 35
    assert result.parent is not None and result.parent.get(timeout=5) == 30
    assert result.parent.parent.get(timeout=5) == 3
    assert result.parent.parent.parent is None


def test_a_chain_takes_arguments_for_its_first_task(capp: Celeriac) -> None:
    add, mul = task(capp, "add"), task(capp, "mul")
    assert chain(add.s(1), mul.s(2)).apply_async((4,)).get(timeout=5) == 10
    assert chain(add.s(1), mul.s(2))(4).get(timeout=5) == 10
    assert chain([add.s(1, 1), mul.s(5)]).delay().get(timeout=5) == 10


def test_an_immutable_step_ignores_the_previous_result(capp: Celeriac) -> None:
    add = task(capp, "add")
    assert (add.s(1, 1) | add.si(10, 10) | add.s(1)).delay().get(timeout=5) == 21


def test_a_failing_step_stops_the_chain_and_runs_its_errbacks(
    capp: Celeriac, worker: WorkerThread
) -> None:
    add, boom, on_error = task(capp, "add"), task(capp, "boom"), task(capp, "on_error")
    result = chain(add.s(1, 2), boom.s(), add.s(5), add.s(6)).on_error(on_error.s()).delay()
    with pytest.raises(TaskError) as caught:  # the last step is stored as failed: no hang
        result.get(timeout=5)
    assert caught.value.type_name == "ValueError" and "boom [3]" in str(caught.value)
    for failed in (result.parent, result.parent.parent):
        with pytest.raises(TaskError, match="boom"):
            failed.get(timeout=5)
    assert result.parent.parent.parent.get(timeout=5) == 3
    worker.join()
    ((failed_id, name, kind, text, traceback),) = LEDGER.of("on_error")  # once: the failing task
    assert failed_id == result.parent.parent.id and name == T + "boom"
    assert (kind, text) == ("ValueError", "boom [3]") and "Traceback" in traceback


def test_a_chain_link_gets_the_last_result(capp: Celeriac, worker: WorkerThread) -> None:
    add, record = task(capp, "add"), task(capp, "record")
    result = chain(add.s(1, 1), add.s(2)).apply_async(link=record.s("after"))
    assert result.get(timeout=5) == 4
    worker.join()
    assert LEDGER.of("record") == [(4, "after")]


# -- group ---------------------------------------------------------------------------------


def test_a_group_returns_results_in_call_order(capp: Celeriac) -> None:
    slow_add = task(capp, "slow_add")
    delays = [0.2, 0.1, 0.0, 0.05]
    result = group(slow_add.s(i, i, delay) for i, delay in enumerate(delays)).apply_async()
    assert isinstance(result, GroupResult) and len(result) == 4
    assert result.get(timeout=5) == [0, 2, 4, 6]
    assert result.join(timeout=5) == [0, 2, 4, 6]
    assert [r.id for r in result] == [r.id for r in result.results]


def test_group_result_counts_and_states(capp: Celeriac, worker: WorkerThread) -> None:
    add, boom = task(capp, "add"), task(capp, "boom")
    result = group(add.s(1, 1), boom.s(1), add.s(2, 2)).apply_async()
    worker.join()
    assert result.ready() and not result.waiting()
    assert result.completed_count() == 2
    assert result.failed() and not result.successful()
    with pytest.raises(TaskError):
        result.get(timeout=5)
    assert result.get(timeout=5, propagate=False)[0::2] == [2, 4]
    ok = group(add.s(1, 1), add.s(2, 2)).apply_async()
    assert ok.get(timeout=5) == [2, 4] and ok.successful() and not ok.failed()


def test_a_group_is_saved_and_restored(capp: Celeriac) -> None:
    add = task(capp, "add")
    result = group(add.s(i, 1) for i in range(3)).apply_async()
    assert result.save() is result
    restored = GroupResult.restore(result.id, app=capp)
    assert restored is not None and restored == result
    assert restored.get(timeout=5) == [1, 2, 3]
    assert GroupResult.restore("no-such-group", app=capp) is None
    restored.forget()
    assert GroupResult.restore(result.id, app=capp) is None


def test_a_group_takes_partial_arguments_and_an_empty_group_is_fine(capp: Celeriac) -> None:
    add = task(capp, "add")
    assert group(add.s(1), add.s(2)).apply_async((10,)).get(timeout=5) == [11, 12]
    empty = group().apply_async()
    assert empty.get(timeout=1) == [] and empty.ready()


def test_linking_a_group_is_refused_with_the_way_to_do_it(capp: Celeriac) -> None:
    add, tsum = task(capp, "add"), task(capp, "tsum")
    with pytest.raises(TypeError, match="chord"):
        group(add.s(1, 1)).link(tsum.s())
    with pytest.raises(TypeError, match="chord"):
        group(add.s(1, 1)).apply_async(link=tsum.s())


# -- chord ---------------------------------------------------------------------------------


def test_a_chord_body_gets_the_header_results_in_order(capp: Celeriac) -> None:
    slow_add, tsum = task(capp, "slow_add"), task(capp, "tsum")
    header = [slow_add.s(i, 0, 0.05 * (5 - i)) for i in range(5)]
    result = chord(header)(tsum.s())
    assert result.get(timeout=5) == 10
    assert LEDGER.of("tsum") == [([0, 1, 2, 3, 4],)]
    assert isinstance(result.parent, GroupResult)
    assert result.parent.get(timeout=5) == [0, 1, 2, 3, 4]
    assert chord(header, tsum.s()).apply_async().get(timeout=5) == 10


def test_a_chord_with_an_empty_header_runs_its_body_with_an_empty_list(capp: Celeriac) -> None:
    assert chord([], task(capp, "tsum").s()).apply_async().get(timeout=5) == 0


def test_a_failed_header_task_fails_the_chord_and_runs_its_errbacks_once(
    capp: Celeriac, worker: WorkerThread
) -> None:
    add, boom, tsum = task(capp, "add"), task(capp, "boom"), task(capp, "tsum")
    on_error, on_error_id = task(capp, "on_error"), task(capp, "on_error_id")
    canvas = chord([add.s(1, 1), boom.s(7), boom.s(8)], tsum.s())
    canvas.link_error(on_error.s())
    canvas.link_error(on_error_id.s())
    result = canvas.apply_async()
    with pytest.raises(TaskError) as caught:
        result.get(timeout=5)
    assert caught.value.type_name == "ChordError"
    assert "header task canvas.boom[" in str(caught.value) and "ValueError: boom [" in str(
        caught.value
    )
    worker.join()
    assert LEDGER.of("tsum") == []  # the body never ran
    ((body_id, _, kind, text, _),) = LEDGER.of("on_error")  # once, though two tasks failed
    assert body_id == result.id and kind == "ChordError" and text == str(caught.value).split(
        ": ", 1
    )[1]
    assert LEDGER.of("on_error_id") == [(result.id,)]
    assert result.parent.results[0].get(timeout=5) == 2  # the header's results are intact


def test_a_chord_whose_body_raises_stores_the_body_failure_and_keeps_the_header(
    capp: Celeriac,
) -> None:
    add, boom = task(capp, "add"), task(capp, "boom")
    result = chord([add.s(1, 1), add.s(2, 2)], boom.s()).apply_async()
    with pytest.raises(TaskError) as caught:
        result.get(timeout=5)
    assert caught.value.type_name == "ValueError" and "boom [[2, 4]]" in str(caught.value)
    assert result.state == states.FAILURE
    assert result.parent.get(timeout=5) == [2, 4] and result.parent.successful()


def test_a_rejected_header_task_fails_the_chord(capp: Celeriac) -> None:
    add, refuse, tsum = task(capp, "add"), task(capp, "refuse"), task(capp, "tsum")
    result = chord([add.s(1, 1), refuse.s()], tsum.s()).apply_async()
    with pytest.raises(TaskError, match="Reject"):
        result.get(timeout=5)
    (dead,) = wait_until(
        lambda: [d for d in capp.broker.dead_letters() if d.reason == "not for me"],
        message="the rejected header task in the dead-letter queue",
    )
    assert result.parent.results[1].id.encode() in dead.body


def test_header_messages_delivered_twice_run_the_body_once(
    capp: Celeriac, worker: WorkerThread
) -> None:
    """Redelivery after a crash is the same bytes delivered again: the body still runs once."""
    add, tsum = task(capp, "add"), task(capp, "tsum")
    originals: list[tuple[str, bytes]] = []

    def keep(sender: Any, message: Any, body: bytes, **_: Any) -> None:
        originals.append((message.queue, body))

    from celeriac import signals

    signals.before_task_publish.connect(keep)
    try:
        result = chord([add.s(i, i) for i in range(10)], tsum.s()).apply_async()
    finally:
        signals.before_task_publish.disconnect(keep)
    assert len(originals) == 10
    for queue, body in originals:  # every header task runs again, some after the body was sent
        capp.broker.publish(queue, body)
    assert result.get(timeout=5) == 90
    worker.join()
    assert LEDGER.of("tsum") == [([2 * i for i in range(10)],)]


# -- callbacks -----------------------------------------------------------------------------


def test_a_link_callback_gets_the_result_as_its_first_argument(
    capp: Celeriac, worker: WorkerThread
) -> None:
    add, record, mul = task(capp, "add"), task(capp, "record"), task(capp, "mul")
    sig = add.s(2, 2)
    sig.link(record.s("x"))
    sig.link(record.si("immutable"))
    first = sig.delay()
    add.apply_async((1, 1), link=[record.s("y")], link_error=record.s("never"))
    assert first.get(timeout=5) == 4
    follow = mul.s(10)
    add.apply_async((3, 3), link=follow.set(task_id="followed"))
    assert AsyncResult("followed", capp).get(timeout=5) == 60
    worker.join()
    assert sorted(LEDGER.of("record"), key=repr) == sorted(
        [(4, "x"), ("immutable",), (2, "y")], key=repr
    )


def test_new_style_errbacks_get_request_exception_and_traceback(
    capp: Celeriac, worker: WorkerThread
) -> None:
    boom, on_error = task(capp, "boom"), task(capp, "on_error")
    result = boom.apply_async((5,), link_error=on_error.s())
    with pytest.raises(TaskError):
        result.get(timeout=5)
    worker.join()
    ((task_id, name, kind, text, traceback),) = LEDGER.of("on_error")
    assert (task_id, name, kind, text) == (result.id, T + "boom", "ValueError", "boom [5]")
    assert "Traceback (most recent call last)" in traceback and "boom [5]" in traceback


def test_old_style_errbacks_get_the_failed_task_id(capp: Celeriac, worker: WorkerThread) -> None:
    boom, on_error_id = task(capp, "boom"), task(capp, "on_error_id")
    sig = boom.s(1)
    sig.link_error(on_error_id.s())
    sig.link_error(task(capp, "on_error_note").s("partial"))  # (task_id, note): old style
    result = sig.delay()
    with pytest.raises(TaskError):
        result.get(timeout=5)
    worker.join()
    assert LEDGER.of("on_error_id") == [(result.id,)]
    assert LEDGER.of("on_error_note") == [(result.id, "partial")]


# -- map, starmap, chunks ----------------------------------------------------------------------


def test_map_starmap_and_chunks(capp: Celeriac) -> None:
    add, tsum = task(capp, "add"), task(capp, "tsum")
    assert tsum.map([[1, 2], [3, 4, 5]]).delay().get(timeout=5) == [3, 12]
    assert add.starmap([(1, 2), (3, 4)]).apply_async().get(timeout=5) == [3, 7]
    pieces = add.chunks([(i, i) for i in range(10)], 4)
    assert isinstance(pieces, chunks) and len(pieces.group().tasks) == 3
    result = pieces.apply_async()
    assert isinstance(result, GroupResult)
    assert result.get(timeout=5) == [[0, 2, 4, 6], [8, 10, 12, 14], [16, 18]]
    with pytest.raises(ValueError, match="chunk size"):
        add.chunks([(1, 1)], 0)


# -- nested canvases ------------------------------------------------------------------------


def test_a_chain_of_groups(capp: Celeriac) -> None:
    add, mul, tsum = task(capp, "add"), task(capp, "mul"), task(capp, "tsum")
    canvas = chain(group(add.s(1, 1), add.s(2, 2)), tsum.s(), group(mul.s(1), mul.s(2)))
    result = canvas.apply_async()
    assert isinstance(result, GroupResult) and result.get(timeout=5) == [6, 12]
    assert result.parent.get(timeout=5) == 6
    assert result.parent.parent.get(timeout=5) == [2, 4]
    two_groups = chain(group(add.s(1, 1), add.s(2, 2)), group(tsum.s(), tsum.s()))
    assert two_groups.apply_async().get(timeout=5) == [6, 6]  # a group after a group: a chord


def test_a_group_of_chains(capp: Celeriac) -> None:
    add, mul = task(capp, "add"), task(capp, "mul")
    canvas = group(chain(add.s(1, 1), mul.s(2)), add.s(2, 2) | mul.s(3), add.s(0, 1))
    result = canvas.apply_async()
    assert result.get(timeout=5) == [4, 12, 1]
    assert result.results[0].parent.get(timeout=5) == 2


def test_a_chord_in_a_chain(capp: Celeriac) -> None:
    add, mul, tsum = task(capp, "add"), task(capp, "mul"), task(capp, "tsum")
    canvas = add.s(1, 1) | chord([mul.s(2), mul.s(3)], tsum.s()) | add.s(100)
    result = canvas.apply_async()
    assert result.get(timeout=5) == 110
    assert result.parent.get(timeout=5) == 10  # the chord's body
    assert result.parent.parent.get(timeout=5) == [4, 6]  # its header
    assert result.parent.parent.parent.get(timeout=5) == 2


def test_a_chord_of_chains_and_a_chord_in_a_group(capp: Celeriac) -> None:
    add, mul, tsum = task(capp, "add"), task(capp, "mul"), task(capp, "tsum")
    of_chains = chord([add.s(1, 1) | mul.s(2), add.s(3, 3), chain(add.s(0, 1), mul.s(5))], tsum.s())
    assert of_chains.apply_async().get(timeout=5) == 4 + 6 + 5
    in_group = group(chord([add.s(1, 1), add.s(2, 2)], tsum.s()), add.s(5, 5))
    assert in_group.apply_async().get(timeout=5) == [6, 10]
    nested = chord([chord([add.s(1, 1), add.s(1, 2)], tsum.s()), add.s(10, 10)], tsum.s())
    assert nested.apply_async().get(timeout=5) == 25


def test_a_chord_header_member_ending_in_a_group_is_refused(capp: Celeriac) -> None:
    add, tsum = task(capp, "add"), task(capp, "tsum")
    with pytest.raises(TypeError, match="cannot end with a group"):
        chord([add.s(1, 1) | group(add.s(1), add.s(2))], tsum.s()).apply_async()
    assert capp.broker.size("celeriac") == 0


# -- root and parent ids --------------------------------------------------------------------


def test_every_message_carries_root_and_parent_ids(capp: Celeriac) -> None:
    ids = task(capp, "ids")
    result = chain(ids.s(), ids.s(), ids.s()).apply_async()
    third = result.get(timeout=5)
    second = result.parent.get(timeout=5)
    first = result.parent.parent.get(timeout=5)
    assert first == {"id": first["id"], "parent": None, "root": first["id"]}
    assert second == {"id": result.parent.id, "parent": first["id"], "root": first["id"]}
    assert third == {"id": result.id, "parent": second["id"], "root": first["id"]}
    assert meta(capp, result)["parent_id"] == second["id"]

    canvas = chord([ids.s(), ids.s()], ids.s().set(immutable=True))
    body = canvas.apply_async()
    header = [r.get(timeout=5) for r in body.parent]
    root = header[0]["id"]
    assert all(h["root"] == root and h["parent"] is None for h in header)
    values = body.get(timeout=5)
    assert values["root"] == root and values["parent"] in {h["id"] for h in header}


def test_a_canvas_applied_inside_a_task_has_that_task_as_parent(capp: Celeriac) -> None:
    spawner = task(capp, "spawn").delay()
    members = [AsyncResult(member, capp) for member in spawner.get(timeout=5)]
    assert [m.get(timeout=5) for m in members] == [2, 4]
    for member in members:
        assert meta(capp, member)["parent_id"] == spawner.id
        assert meta(capp, member)["root_id"] == spawner.id


# -- bad input -----------------------------------------------------------------------------


def test_an_unknown_task_in_a_chain_is_dead_lettered_and_earlier_results_stay(
    capp: Celeriac, worker: WorkerThread
) -> None:
    add = task(capp, "add")
    result = chain(add.s(1, 1), signature("canvas.no_such_task", app=capp), add.s(1)).delay()
    worker.join()
    assert result.parent.parent.get(timeout=5) == 2
    dead = [d for d in capp.broker.dead_letters() if d.reason == "unknown_task"]
    assert len(dead) == 1 and result.parent.id.encode() in dead[0].body
    assert result.state == states.PENDING


def test_an_unknown_task_is_refused_when_run_eagerly(eager_app: Celeriac) -> None:
    add = task(eager_app, "add")
    with pytest.raises(NotRegistered, match=r"canvas\.no_such_task"):
        chain(add.s(1, 1), signature("canvas.no_such_task", app=eager_app)).apply()


@pytest.mark.parametrize("kind", ["chain", "group", "chord", "link"])
def test_a_signature_that_cannot_be_serialized_fails_at_apply_async_and_sends_nothing(
    capp: Celeriac, kind: str
) -> None:
    add = task(capp, "add")
    bad = add.s(object())
    canvases = {
        "chain": chain(add.s(1, 1), add.s(2), bad),
        "group": group(add.s(1, 1), add.s(2, 2), bad),
        "chord": chord([add.s(1, 1), add.s(2, 2)], bad),
        "link": add.s(1, 1).set(link=bad),
    }
    with pytest.raises(SerializationError, match="object"):
        canvases[kind].apply_async()
    assert capp.broker.size("celeriac") == 0


def test_bad_options_and_parts_are_refused_before_anything_is_sent(capp: Celeriac) -> None:
    add = task(capp, "add")
    with pytest.raises(TypeError, match="did you mean 'countdown'"):
        chain(add.s(1, 1), add.s(2).set(countdwn=1)).apply_async()
    with pytest.raises(TypeError, match="link takes a signature"):
        add.apply_async((1, 1), link="canvas.add")
    with pytest.raises(TypeError, match="made of signatures"):
        chain(add.s(1, 1), "canvas.add")
    with pytest.raises(TypeError, match="callback must be a signature"):
        add.s(1, 1).link(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="args must be a list"):
        signature("canvas.add", "12", app=capp)
    with pytest.raises(TypeError, match="not a chain signature"):
        signature({"task": "celeriac.chain", "subtask_type": "chain", "kwargs": {}}, app=capp)
    assert capp.broker.size("celeriac") == 0


def test_a_result_that_cannot_be_passed_on_fails_the_rest_of_the_chain(capp: Celeriac) -> None:
    returns_object, add = task(capp, "returns_object"), task(capp, "add")
    result = chain(returns_object.s(), add.s(1)).delay()
    with pytest.raises(TaskError) as caught:
        result.get(timeout=5)
    assert caught.value.type_name == "SerializationError"


# -- eager ---------------------------------------------------------------------------------


def test_apply_runs_chains_groups_and_chords_in_process(eager_app: Celeriac) -> None:
    add, mul, tsum = task(eager_app, "add"), task(eager_app, "mul"), task(eager_app, "tsum")
    result = chain(add.s(1, 2), mul.s(10), add.s(5)).apply()
    assert result.get() == 35 and result.parent.get() == 30 and result.parent.parent.get() == 3
    assert group(add.s(i, i) for i in range(3)).apply().get() == [0, 2, 4]
    body = chord([add.s(1, 1), add.s(2, 2)], tsum.s()).apply()
    assert body.get() == 6 and body.parent.get() == [2, 4]
    nested = (add.s(1, 1) | chord([mul.s(2), mul.s(3)], tsum.s()) | add.s(100)).apply()
    assert nested.get() == 110
    assert add.starmap([(1, 2)]).apply().get() == [3]
    assert add.chunks([(1, 1), (2, 2), (3, 3)], 2).apply().get() == [[2, 4], [6]]
    assert eager_app.broker.size("celeriac") == 0  # nothing was sent


def test_task_always_eager_runs_canvases_and_callbacks_in_process(eager_app: Celeriac) -> None:
    eager_app.conf.task_always_eager = True
    add, record, boom, on_error = (
        task(eager_app, "add"), task(eager_app, "record"), task(eager_app, "boom"),
        task(eager_app, "on_error"),
    )  # fmt: skip
    assert (add.s(1, 1) | add.s(2)).apply_async().get() == 4
    assert group(add.s(1, 1), add.s(2, 2)).delay().get() == [2, 4]
    add.apply_async((2, 2), link=record.s("eager"))
    failed = boom.apply_async((1,), link_error=on_error.s())
    assert failed.failed()
    assert LEDGER.of("record") == [(4, "eager")]
    ((task_id, _, kind, _, _),) = LEDGER.of("on_error")
    assert task_id == failed.id and kind == "ValueError"
    assert eager_app.broker.size("celeriac") == 0


def test_an_eager_chord_with_a_failed_header_fails_with_chord_error(eager_app: Celeriac) -> None:
    add, boom, tsum = task(eager_app, "add"), task(eager_app, "boom"), task(eager_app, "tsum")
    on_error = task(eager_app, "on_error")
    canvas = chord([add.s(1, 1), boom.s(2)], tsum.s())
    canvas.link_error(on_error.s())
    result = canvas.apply()
    assert result.failed()
    with pytest.raises(ChordError, match="boom"):
        result.get()
    assert LEDGER.of("tsum") == []
    assert [entry[2] for entry in LEDGER.of("on_error")] == ["ChordError"]
    stopped = chain(add.s(1, 1), boom.s(), add.s(1)).apply()
    assert stopped.failed() and stopped.parent.get() == 2
