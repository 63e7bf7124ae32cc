"""What crosses the wire: refused at the sender, refused at the worker, or carried exactly."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celeriac, TaskError, states
from celeriac.backend import meta_key
from celeriac.errors import MessageError, SerializationError
from celeriac.testing import WorkerThread, start_worker


def echo(*args: Any, **kwargs: Any) -> list[Any]:
    return [list(args), kwargs]


class OpensFileWhenUnpickled:
    """Pickles as a call to ``open(path, "w")``: loading it leaves a file behind."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


# -- refused at the sender: nothing is published


@pytest.mark.parametrize(
    ("args", "kwargs", "where", "what"),
    [
        ((object(),), {}, "args[0]", "object"),
        ((lambda: 1,), {}, "args[0]", "function"),
        (({1, 2},), {}, "args[0]", "set"),
        ((1, [2, {"deep": object()}]), {}, "args[1][1]['deep']", "object"),
        ((), {"when": float("nan")}, "kwargs['when']", "nan"),
        ((), {"key": {(1, 2): "tuple key"}}, "kwargs['key']", "tuple"),
    ],
)
def test_arguments_that_cannot_be_serialized_fail_at_delay(
    app: Celeriac, args: tuple[Any, ...], kwargs: dict[str, Any], where: str, what: str
) -> None:
    task = app.task(name="ser.echo")(echo)
    queue = app.conf.task_default_queue
    with pytest.raises(SerializationError) as caught:
        task.delay(*args, **kwargs)
    assert isinstance(caught.value, TypeError)  # as json.dumps would raise
    text = str(caught.value)
    assert where in text and what in text.lower(), text
    assert app.broker.size(queue) == 0


@pytest.mark.parametrize("serializer", ["msgpack", "pickle"])
def test_other_serializers_also_refuse_before_publishing(app: Celeriac, serializer: str) -> None:
    if serializer == "msgpack":
        pytest.importorskip("msgpack")
    task = app.task(name="ser.echo")(echo)
    with pytest.raises(SerializationError):
        task.apply_async((lambda: 1,), serializer=serializer)
    assert app.broker.size(app.conf.task_default_queue) == 0


def test_a_circular_argument_fails_at_delay(app: Celeriac) -> None:
    task = app.task(name="ser.echo")(echo)
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(SerializationError, match="circular"):
        task.delay(loop)
    assert app.broker.size(app.conf.task_default_queue) == 0


def test_an_unknown_serializer_fails_at_delay(app: Celeriac) -> None:
    task = app.task(name="ser.echo")(echo)
    with pytest.raises(SerializationError, match="unknown serializer 'yaml'"):
        task.apply_async((1,), serializer="yaml")
    assert app.broker.size(app.conf.task_default_queue) == 0


# -- carried exactly


def test_tagged_types_round_trip_through_a_worker(worker_app: Celeriac) -> None:
    task = worker_app.task(name="ser.roundtrip")(echo)
    values = [
        datetime(2024, 5, 1, 12, 0, 0, 1, tzinfo=UTC),
        datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=-5))),
        datetime(2024, 5, 1, 12, 0),
        date(2024, 2, 29),
        time(23, 59, 59, 999999),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        Decimal("3.14159265358979323846264338327950288"),
        b"\x00\xffbytes",
        {"__type__": "mine", "__value__": "a user dict that looks like a tag"},
        "unicode: \u00e9\u4e2d\U0001f600",
        2**62,
    ]
    args, kwargs = task.delay(*values, nested={"at": values[0]}).get(timeout=10)
    assert args == values
    assert kwargs == {"nested": {"at": values[0]}}


# -- results that cannot be serialized


def test_a_result_that_cannot_be_serialized_is_a_failure_and_the_worker_goes_on(
    worker_app: Celeriac,
) -> None:
    @worker_app.task(name="ser.returns_object")
    def returns_object() -> object:
        return object()

    @worker_app.task(name="ser.returns_set")
    def returns_set() -> set[int]:
        return {1, 2}

    add = worker_app.task(name="ser.add")(lambda x, y: x + y)

    bad = returns_object.delay()
    with pytest.raises(TaskError) as caught:
        bad.get(timeout=10)
    assert bad.state == states.FAILURE
    assert caught.value.type_name == "SerializationError"
    assert "cannot serialize" in caught.value.message and "object" in caught.value.message
    assert bad.traceback

    with pytest.raises(TaskError, match="set"):
        returns_set.delay().get(timeout=10)
    assert add.delay(2, 3).get(timeout=10) == 5


# -- pickle: refused unless accepted


def test_pickle_is_refused_by_a_worker_that_does_not_accept_it(
    worker_app: Celeriac, worker_thread: WorkerThread, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    worker_app.task(name="ser.pickled")(echo)  # accept_content is json and msgpack
    producer = Celeriac("producer", broker=worker_app.broker_url, accept_content=["json", "pickle"])
    result = producer.send_task(
        "ser.pickled", (OpensFileWhenUnpickled(marker),), serializer="pickle"
    )
    worker_thread.join()

    dead = [d for d in worker_app.broker.dead_letters() if result.id.encode() in d.body]
    assert [d.reason for d in dead] == ["content_refused"]
    assert not marker.exists()  # the pickle was never loaded
    assert result.state == states.PENDING


def test_pickle_runs_on_a_worker_that_accepts_it(
    memory_url: str, no_celeriac_env: None, tmp_path: Path
) -> None:
    app = Celeriac("pickles", broker=memory_url, accept_content=["json", "pickle"])

    @app.task(name="ser.pickle_len")
    def pickle_len(items: set[int]) -> int:
        return len(items)

    with start_worker(app) as worker:
        assert pickle_len.apply_async(({1, 2, 3},), serializer="pickle").get(timeout=10) == 3
        worker.join()
    app.close()


def test_a_pickled_result_is_not_loaded_by_a_client_that_does_not_accept_it(
    app: Celeriac, tmp_path: Path
) -> None:
    import pickle

    marker = tmp_path / "unpickled"
    meta = {"task_id": "p1", "status": "SUCCESS", "result": OpensFileWhenUnpickled(marker)}
    raw = b"application/x-python-serialize\n" + pickle.dumps(meta)
    app.results.transport.put(meta_key("p1"), raw)

    result = app.AsyncResult("p1")
    with pytest.raises(MessageError) as caught:
        result.get(timeout=1)
    assert caught.value.reason == "content_refused"
    with pytest.raises(MessageError):
        _ = result.state
    assert not marker.exists()
