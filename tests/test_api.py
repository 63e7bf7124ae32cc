"""The public API a Celery user expects: tasks, calling, results, errors, routing.

Everything runs for real: tasks go through a memory broker to a worker in a thread
(``celeriac.testing.start_worker``), results come back through the result store.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_until

import celeriac
from celeriac import Celeriac, TaskError, shared_task, states
from celeriac.backend import meta_key
from celeriac.errors import CeleriacError, MessageError, SerializationError
from celeriac.errors import TimeoutError as CeleriacTimeoutError
from celeriac.message import decode
from celeriac.result import AsyncResult, EagerResult
from celeriac.task import Task
from celeriac.testing import WorkerThread

# -- module-level functions, so that automatic names are "<this module>.<function>"


def add(x: int, y: int) -> int:
    return x + y


def explode(message: str) -> None:
    raise ValueError(message)


class CustomBoom(Exception):
    """An exception class that only this test module defines."""


# -- the public surface


def test_public_surface_is_pinned() -> None:
    assert sorted(celeriac.__all__) == [
        "AsyncResult",
        "Celeriac",
        "CeleriacError",
        "ChordError",
        "GroupResult",
        "Ignore",
        "MaxRetriesExceededError",
        "Reject",
        "Retry",
        "Signature",
        "SoftTimeLimitExceeded",
        "Task",
        "TaskError",
        "TimeLimitExceeded",
        "__version__",
        "chain",
        "chord",
        "chunks",
        "current_app",
        "group",
        "shared_task",
        "signature",
        "states",
    ]
    for name in celeriac.__all__:
        assert hasattr(celeriac, name), name
    assert isinstance(celeriac.__version__, str) and celeriac.__version__


# -- declaring tasks


def test_task_decorator_bare_registers_under_module_and_function_name(app: Celeriac) -> None:
    task = app.task(add)
    assert isinstance(task, Task)
    assert task.name == f"{__name__}.add"
    assert app.tasks[task.name] is task
    assert task.__wrapped__ is add
    assert "@task" in repr(task) and task.name in repr(task)


def test_task_decorator_with_options(app: Celeriac) -> None:
    @app.task(
        name="custom.sum", max_retries=7, default_retry_delay=1.5, queue="math", priority=4,
        ignore_result=True, time_limit=10, soft_time_limit=5, acks_late=True, serializer="json",
    )  # fmt: skip
    def total(*numbers: int) -> int:
        return sum(numbers)

    assert total.name == "custom.sum"
    assert app.get_task("custom.sum") is total
    assert (total.max_retries, total.default_retry_delay) == (7, 1.5)
    assert (total.queue, total.priority, total.ignore_result) == ("math", 4, True)
    assert (total.time_limit, total.soft_time_limit, total.acks_late) == (10, 5, True)
    assert total(1, 2, 3) == 6


def test_task_decorator_with_base_class(app: Celeriac) -> None:
    class Audited(Task[Any, Any]):
        audited = True

    @app.task(base=Audited)
    def step() -> str:
        return "ok"

    assert isinstance(step, Audited) and step.audited


def test_unknown_task_option_is_a_type_error(app: Celeriac) -> None:
    with pytest.raises(TypeError, match="retires"):
        app.task(retires=3)
    with pytest.raises(TypeError, match="retires"):
        shared_task(retires=3)
    assert not any(name.endswith("add") for name in app.tasks)


def test_shared_task_registers_with_existing_and_later_apps(
    app: Celeriac, no_celeriac_env: None
) -> None:
    name = f"shared.{uuid.uuid4().hex}"

    @shared_task(name=name, bind=True)
    def whoami(self: Task[Any, Any]) -> str:
        return self.name

    assert name in app.tasks
    later = Celeriac("later", broker=f"memory://later-{uuid.uuid4().hex}")
    try:
        assert name in later.tasks
        assert later.tasks[name].app is later
        assert whoami() == name
    finally:
        later.close()


def test_direct_call_runs_in_this_thread_without_a_broker(app: Celeriac) -> None:
    seen: list[Any] = []

    @app.task(bind=True)
    def where(self: Task[Any, Any], value: int) -> int:
        seen.append((threading.get_ident(), self.request.called_directly, self.request.id))
        return value * 2

    assert where(21) == 42
    assert seen == [(threading.get_ident(), True, None)]
    assert app.broker.size(app.conf.task_default_queue) == 0


# -- running on a worker


def test_bound_task_sees_its_request_on_a_worker(worker_app: Celeriac) -> None:
    @worker_app.task(bind=True, name="api.request")
    def request_fields(self: Task[Any, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        r = self.request
        return {
            "id": r.id, "task": r.task, "args": r.args, "kwargs": r.kwargs,
            "retries": r.retries, "hostname": r.hostname, "is_eager": r.is_eager,
            "root_id": r.root_id, "parent_id": r.parent_id, "group": r.group,
            "origin": r.origin, "correlation_id": r.correlation_id, "eta": r.eta,
            "expires": r.expires, "timelimit": r.timelimit, "headers": r.headers,
            "delivery_info": r.delivery_info, "called_directly": r.called_directly,
            "callbacks": r.callbacks, "errbacks": r.errbacks, "chain": r.chain,
            "chord": r.chord, "reply_to": r.reply_to,
        }  # fmt: skip

    result = request_fields.apply_async(
        (1, "two"), {"three": 3}, task_id="fixed-id-1", queue="other", priority=5,
        expires=60, headers={"x-trace": "abc"}, time_limit=30, soft_time_limit=20,
    )  # fmt: skip
    fields = result.get(timeout=10)

    assert result.id == "fixed-id-1"
    assert fields["id"] == "fixed-id-1" and fields["task"] == "api.request"
    assert fields["args"] == [1, "two"] and fields["kwargs"] == {"three": 3}
    assert fields["retries"] == 0 and fields["is_eager"] is False
    assert fields["called_directly"] is False
    assert fields["hostname"] and "@" in fields["hostname"]
    assert fields["root_id"] == "fixed-id-1" and fields["parent_id"] is None
    assert fields["group"] is None and fields["reply_to"] is None
    assert fields["correlation_id"] == "fixed-id-1"
    assert fields["origin"] and "@" in fields["origin"]
    assert fields["eta"] is None
    assert isinstance(fields["expires"], datetime)
    assert fields["expires"] > datetime.now(UTC) + timedelta(seconds=30)
    assert list(fields["timelimit"]) == [30, 20]
    assert fields["headers"] == {"x-trace": "abc"}
    assert fields["delivery_info"]["routing_key"] == "other"
    assert fields["delivery_info"]["priority"] == 5
    for key in ("callbacks", "errbacks", "chain", "chord"):
        assert fields[key] is None


def test_task_sent_from_a_task_records_its_parent_and_root(worker_app: Celeriac) -> None:
    @worker_app.task(bind=True, name="api.child")
    def child(self: Task[Any, Any]) -> list[str | None]:
        return [self.request.parent_id, self.request.root_id]

    @worker_app.task(bind=True, name="api.parent")
    def parent(self: Task[Any, Any]) -> str:
        return child.delay().id

    result = parent.delay()
    child_id = result.get(timeout=10)
    assert worker_app.AsyncResult(child_id).get(timeout=10) == [result.id, result.id]


def test_delay_passes_only_user_arguments(worker_app: Celeriac) -> None:
    @worker_app.task(name="api.echo")
    def echo(*args: Any, **kwargs: Any) -> list[Any]:
        return [list(args), kwargs]

    # Names that are apply_async options are plain keyword arguments to delay().
    result = echo.delay(1, queue="elsewhere", countdown=100, task_id="not-an-id")
    assert result.get(timeout=10) == [
        [1],
        {"queue": "elsewhere", "countdown": 100, "task_id": "not-an-id"},
    ]
    assert result.id != "not-an-id"
    assert worker_app.broker.size("elsewhere") == 0


def test_apply_async_countdown_and_eta_are_held_by_the_broker(app: Celeriac) -> None:
    task = app.task(add)
    queue = app.conf.task_default_queue
    task.apply_async((1, 2), countdown=60)
    task.apply_async((1, 2), eta=datetime.now(UTC) + timedelta(minutes=5))
    assert app.broker.size(queue) == 2
    assert app.broker.fetch([queue], limit=10) == []  # not due: nothing is deliverable


def test_apply_async_options_reach_the_message(app: Celeriac) -> None:
    task = app.task(add)
    before = datetime.now(UTC)
    result = task.apply_async(
        [2], {"y": 3}, queue="opts", priority=7, task_id="opt-id", expires=timedelta(minutes=1),
        headers={"tenant": "t1"}, ignore_result=True, serializer="json",
    )  # fmt: skip
    assert isinstance(result, AsyncResult) and result.id == "opt-id"
    (delivery,) = app.broker.fetch(["opts"], limit=10)
    message = decode(delivery.body)
    assert message.id == "opt-id" and message.task == f"{__name__}.add"
    assert message.args == (2,) and message.kwargs == {"y": 3}
    assert (message.queue, message.priority, message.ignore_result) == ("opts", 7, True)
    assert message.headers == {"tenant": "t1"}
    assert message.expires is not None
    assert before + timedelta(seconds=59) <= message.expires <= before + timedelta(seconds=61)
    assert message.eta is None


def test_apply_async_ignore_result_runs_but_stores_nothing(
    worker_app: Celeriac, worker_thread: WorkerThread
) -> None:
    ran: list[int] = []

    @worker_app.task(name="api.note")
    def note(value: int) -> int:
        ran.append(value)
        return value

    result = note.apply_async((5,), ignore_result=True)
    stored = note.delay(6)
    assert stored.get(timeout=10) == 6
    worker_thread.join()
    assert sorted(ran) == [5, 6]
    assert result.state == states.PENDING


def test_apply_async_serializer_option(app: Celeriac, worker_app: Celeriac) -> None:
    pytest.importorskip("msgpack")
    task = app.task(add)
    task.apply_async((2, 5), serializer="msgpack")
    (delivery,) = app.broker.fetch([app.conf.task_default_queue])
    assert b"application/x-msgpack" in delivery.body

    on_worker = worker_app.task(name="api.msgpack_add")(add)  # the worker accepts msgpack
    assert on_worker.apply_async((2, 5), serializer="msgpack").get(timeout=10) == 7


def test_unknown_apply_async_option_is_a_type_error_with_a_suggestion(app: Celeriac) -> None:
    task = app.task(add)
    with pytest.raises(TypeError, match=r"'countdwn'.*did you mean 'countdown'"):
        task.apply_async((1, 2), countdwn=5)
    with pytest.raises(TypeError, match=r"'task_ud'.*did you mean 'task_id'"):
        app.send_task(task.name, (1, 2), task_ud="x")
    assert app.broker.size(app.conf.task_default_queue) == 0


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"priority": 10}, ValueError),
        ({"countdown": "soon"}, TypeError),
        ({"countdown": 1, "eta": datetime.now(UTC)}, TypeError),
        ({"eta": "tomorrow"}, TypeError),
        ({"expires": "later"}, TypeError),
        ({"queue": "bad queue!"}, ValueError),
        ({"headers": {"task": "other.task"}}, ValueError),
    ],
)
def test_bad_option_values_fail_before_publishing(
    app: Celeriac, options: dict[str, Any], error: type[Exception]
) -> None:
    task = app.task(add)
    with pytest.raises(error):
        task.apply_async((1, 2), **options)
    assert app.broker.size(app.conf.task_default_queue) == 0


@pytest.mark.parametrize("args", [1, "ab", {"x": 1}])
def test_args_must_be_a_list_or_tuple(app: Celeriac, args: Any) -> None:
    task = app.task(add)
    with pytest.raises(TypeError, match="args must be a list or tuple"):
        task.apply_async(args)
    assert app.broker.size(app.conf.task_default_queue) == 0


# -- apply() and eager mode


def test_apply_runs_in_process_as_a_worker_would(app: Celeriac) -> None:
    @app.task(bind=True, name="api.eager_info")
    def eager_info(self: Task[Any, Any], x: int) -> list[Any]:
        return [x, self.request.is_eager, self.request.called_directly, self.request.id]

    result = eager_info.apply((3,))
    assert isinstance(result, EagerResult)
    value = result.get()
    assert value[:3] == [3, True, False] and value[3] == result.id
    assert result.successful() and result.ready() and result.state == states.SUCCESS
    assert app.broker.size(app.conf.task_default_queue) == 0


def test_apply_of_a_failing_task_gives_a_failed_result_with_the_original_exception(
    app: Celeriac,
) -> None:
    task = app.task(explode)
    result = task.apply(("kaboom",))
    assert result.failed() and result.state == states.FAILURE
    assert type(result.result) is ValueError and str(result.result) == "kaboom"
    assert result.traceback and "kaboom" in result.traceback
    with pytest.raises(ValueError, match="kaboom"):
        result.get()
    assert result.get(propagate=False) is result.result


def test_apply_retries_run_again_at_once(app: Celeriac) -> None:
    attempts: list[int] = []

    @app.task(bind=True, name="api.eager_retry", max_retries=5)
    def flaky(self: Task[Any, Any]) -> int:
        attempts.append(self.request.retries)
        if len(attempts) < 3:
            raise self.retry(exc=KeyError("again"), countdown=60)
        return len(attempts)

    started = time.monotonic()
    result = flaky.apply()
    assert result.get() == 3 and attempts == [0, 1, 2]
    assert time.monotonic() - started < 5  # the 60 s countdown is not waited for in-process


def test_always_eager_runs_delay_in_process(app: Celeriac) -> None:
    app.conf.task_always_eager = True
    task = app.task(add)
    result = task.delay(2, 3)
    assert isinstance(result, EagerResult) and result.get() == 5
    assert app.broker.size(app.conf.task_default_queue) == 0

    failing = app.task(explode)
    failed = failing.delay("quiet")
    assert failed.failed() and isinstance(failed.result, ValueError)

    app.conf.task_eager_propagates = True
    with pytest.raises(ValueError, match="loud"):
        failing.delay("loud")
    with pytest.raises(ValueError, match="loud"):
        failing.apply(("loud",))


# -- retries


def test_retry_reaches_success_after_retries(worker_app: Celeriac) -> None:
    attempts: list[int] = []

    @worker_app.task(bind=True, name="api.flaky")
    def flaky(self: Task[Any, Any]) -> str:
        attempts.append(self.request.retries)
        if len(attempts) < 3:
            raise self.retry(exc=ConnectionError("not yet"), countdown=0.05, max_retries=5)
        return "done"

    result = flaky.delay()
    assert result.get(timeout=10) == "done"
    assert attempts == [0, 1, 2]
    assert result.retries == 2 and result.state == states.SUCCESS


def test_retry_countdown_is_honoured(worker_app: Celeriac) -> None:
    times: list[float] = []

    @worker_app.task(bind=True, name="api.slow_retry")
    def slow_retry(self: Task[Any, Any]) -> None:
        times.append(time.monotonic())
        if len(times) == 1:
            raise self.retry(countdown=0.3)

    slow_retry.delay().get(timeout=10)
    assert len(times) == 2 and times[1] - times[0] >= 0.3


def test_exhausted_retries_fail_with_the_original_exception(worker_app: Celeriac) -> None:
    attempts: list[int] = []

    @worker_app.task(bind=True, name="api.hopeless")
    def hopeless(self: Task[Any, Any]) -> None:
        attempts.append(self.request.retries)
        raise self.retry(exc=ValueError("still broken"), countdown=0.01, max_retries=2)

    result = hopeless.delay()
    with pytest.raises(ValueError, match="still broken") as caught:
        result.get(timeout=10)
    assert attempts == [0, 1, 2]
    assert isinstance(caught.value, TaskError) and caught.value.type_name == "ValueError"
    assert result.state == states.FAILURE


def test_retry_without_exc_past_max_retries_raises_max_retries_exceeded(
    worker_app: Celeriac,
) -> None:
    @worker_app.task(bind=True, name="api.no_exc", max_retries=1)
    def no_exc(self: Task[Any, Any]) -> None:
        raise self.retry(countdown=0.01)

    result = no_exc.delay()
    with pytest.raises(TaskError) as caught:
        result.get(timeout=10)
    assert caught.value.type_name == "MaxRetriesExceededError"


def test_autoretry_for_with_backoff(worker_app: Celeriac) -> None:
    attempts: list[int] = []

    @worker_app.task(
        bind=True, name="api.auto", autoretry_for=(ConnectionError,), retry_backoff=0.01,
        retry_backoff_max=0.05, max_retries=4,
    )  # fmt: skip
    def auto(self: Task[Any, Any]) -> int:
        attempts.append(self.request.retries)
        if len(attempts) < 3:
            raise ConnectionError("flaky network")
        return self.request.retries

    @worker_app.task(name="api.auto_hopeless", autoretry_for=(KeyError,), retry_backoff=0.01,
              max_retries=2)  # fmt: skip
    def auto_hopeless() -> None:
        raise KeyError("gone")

    @worker_app.task(name="api.auto_other", autoretry_for=(KeyError,), retry_backoff=0.01)
    def auto_other() -> None:
        raise ValueError("not listed")

    assert auto.delay().get(timeout=10) == 2
    with pytest.raises(KeyError):
        auto_hopeless.delay().get(timeout=10)
    other = auto_other.delay()
    with pytest.raises(ValueError):
        other.get(timeout=10)
    assert attempts == [0, 1, 2]
    assert other.retries == 0  # an exception not listed fails at once


def test_retry_backoff_delays_grow_and_stop_at_the_maximum(app: Celeriac) -> None:
    @app.task(retry_backoff=2, retry_backoff_max=10, retry_jitter=False)
    def steady() -> None: ...

    @app.task(retry_backoff=True, retry_backoff_max=600, retry_jitter=True)
    def jittery() -> None: ...

    assert [steady.backoff_delay(n) for n in range(5)] == [2, 4, 8, 10, 10]
    for n in range(6):
        assert 0 <= jittery.backoff_delay(n) <= 2**n


# -- progress


def test_update_state_is_visible_while_the_task_runs(worker_app: Celeriac) -> None:
    release = threading.Event()

    @worker_app.task(bind=True, name="api.progress")
    def progress(self: Task[Any, Any], total: int) -> int:
        self.update_state(state="PROGRESS", meta={"current": 1, "total": total})
        release.wait(10)
        return total

    result = progress.delay(10)
    wait_until(lambda: result.state == "PROGRESS", 10, "the PROGRESS state")
    assert result.info == {"current": 1, "total": 10}
    assert not result.ready()
    release.set()
    assert result.get(timeout=10) == 10
    assert result.state == states.SUCCESS


def test_track_started_shows_started_while_the_task_runs(worker_app: Celeriac) -> None:
    release = threading.Event()

    @worker_app.task(name="api.tracked", track_started=True)
    def tracked() -> str:
        release.wait(10)
        return "finished"

    result = tracked.delay()
    wait_until(lambda: result.state == states.STARTED, 10, "the STARTED state")
    assert not result.ready()
    assert result.info["pid"] and "@" in result.info["hostname"]
    release.set()
    assert result.get(timeout=10) == "finished"


# -- AsyncResult


def test_async_result_api_before_the_task_runs(app: Celeriac) -> None:
    result = app.task(add).delay(2, 2)  # no worker consumes this app's queue
    assert repr(result) == f"<AsyncResult: {result.id}>" and str(result) == result.id
    assert result.state == result.status == states.PENDING
    assert not result.ready() and not result.successful() and not result.failed()
    assert result.result is None and result.info is None and result.traceback is None
    assert result.date_done is None


def test_async_result_api_for_a_success(worker_app: Celeriac) -> None:
    task = worker_app.task(name="api.result_add")(add)  # the worker app has result_extended
    sent = datetime.now(UTC)
    result = task.delay(2, 2)
    assert result.get(timeout=10, propagate=True, interval=0.01) == 4

    assert result.state == result.status == states.SUCCESS
    assert result.result == result.info == 4
    assert result.ready() and result.successful() and not result.failed()
    assert result.traceback is None
    assert result.name == "api.result_add"
    assert result.retries == 0
    assert result.worker and "@" in result.worker
    assert result.args == [2, 2] and result.kwargs == {}
    assert result.date_done is not None and sent <= result.date_done <= datetime.now(UTC)
    again = worker_app.AsyncResult(result.id)
    assert again == result and again == result.id and hash(again) == hash(result)
    assert again.get(timeout=1) == 4

    result.forget()
    fresh = worker_app.AsyncResult(result.id)
    assert fresh.state == states.PENDING and fresh.result is None


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ("2026-11-26T08:30:00.250000+00:00", datetime(2026, 11, 26, 8, 30, 0, 250000, UTC)),
        ("2026-11-26T08:30:00", datetime(2026, 11, 26, 8, 30, tzinfo=UTC)),  # naive: UTC
        (datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("not a date", None),
        (12345, None),
        (None, None),
    ],
)
def test_date_done_reads_iso_text_and_the_tagged_datetime_of_earlier_stores(
    app: Celeriac, stored: Any, expected: datetime | None
) -> None:
    meta = {"task_id": "t-1", "status": states.SUCCESS, "result": 1, "date_done": stored}
    app.results.transport.put(meta_key("t-1"), app.results.encode(meta), None)
    assert app.AsyncResult("t-1").date_done == expected


def test_date_done_is_stored_as_iso_text_as_celery_stores_it(app: Celeriac) -> None:
    before = datetime.now(UTC)
    app.results.store("t-2", states.SUCCESS, 4)
    stored = app.results.get_meta("t-2")["date_done"]
    assert isinstance(stored, str)
    assert before <= datetime.fromisoformat(stored) <= datetime.now(UTC)


def test_a_remote_builtin_exception_comes_back_typed(worker_app: Celeriac) -> None:
    task = worker_app.task(explode)
    result = task.delay("bad value")
    with pytest.raises(ValueError) as caught:
        result.get(timeout=10)

    error = caught.value
    assert isinstance(error, TaskError) and isinstance(error, CeleriacError)
    assert error.type_name == "ValueError" and error.message == "bad value"
    assert str(error) == "ValueError: bad value"
    assert error.remote_traceback and "raise ValueError(message)" in error.remote_traceback
    assert result.state == states.FAILURE and result.failed() and result.ready()
    assert result.traceback and "explode" in result.traceback
    assert isinstance(result.result, TaskError) and result.info.message == "bad value"
    assert isinstance(result.get(propagate=False), ValueError)
    assert result.date_done is not None


def test_a_task_raising_system_exit_is_a_failure(
    worker_app: Celeriac, worker_thread: WorkerThread
) -> None:
    @worker_app.task(name="api.exits")
    def exits() -> None:
        raise SystemExit(3)

    result = exits.delay()
    worker_thread.join()  # the message is finished: acknowledged, or back on the queue
    with pytest.raises(TaskError) as caught:
        result.get(timeout=1)
    assert caught.value.type_name == "SystemExit"


class UnprintableError(Exception):
    """An exception whose message cannot be taken."""

    def __str__(self) -> str:
        raise RuntimeError("no message for you")


def test_a_task_raising_an_unprintable_exception_is_a_failure(
    worker_app: Celeriac, worker_thread: WorkerThread
) -> None:
    @worker_app.task(name="api.unprintable")
    def unprintable() -> None:
        raise UnprintableError()

    result = unprintable.delay()
    worker_thread.join()  # the message is finished: acknowledged, or back on the queue
    with pytest.raises(TaskError) as caught:
        result.get(timeout=1)
    assert "UnprintableError" in caught.value.type_name


def test_a_remote_oserror_comes_back_as_task_error(worker_app: Celeriac) -> None:
    @worker_app.task(name="api.missing_file")
    def missing_file(path: str) -> str:
        with open(path) as handle:
            return handle.read()

    result = missing_file.delay("/nonexistent/celeriac/file")
    with pytest.raises(TaskError) as caught:
        result.get(timeout=10)
    assert caught.value.type_name == "FileNotFoundError"
    assert "/nonexistent/celeriac/file" in caught.value.message


def test_a_custom_exception_comes_back_as_task_error_without_imports(worker_app: Celeriac) -> None:
    @worker_app.task(name="api.custom")
    def custom() -> None:
        raise CustomBoom("only this module knows me")

    result = custom.delay()
    modules = set(sys.modules)
    with pytest.raises(TaskError) as caught:
        result.get(timeout=10)
    assert set(sys.modules) == modules
    assert not isinstance(caught.value, CustomBoom)
    assert "CustomBoom" in caught.value.type_name
    assert caught.value.message == "only this module knows me"
    assert "CustomBoom" in (caught.value.remote_traceback or "")


def test_a_stored_failure_never_makes_the_client_import_what_it_names(
    app: Celeriac, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"trap_{uuid.uuid4().hex}"
    marker = tmp_path / "imported"
    (tmp_path / f"{module}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nclass Trap(Exception):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    failure = {"exc_type": "Trap", "exc_message": "caught you", "exc_module": module}
    app.results.store("trap-id", states.FAILURE, failure, traceback="remote text")

    result = app.AsyncResult("trap-id")
    with pytest.raises(TaskError) as caught:
        result.get(timeout=5)
    assert caught.value.type_name == f"{module}.Trap"
    assert caught.value.message == "caught you"
    assert caught.value.remote_traceback == "remote text"
    assert module not in sys.modules and not marker.exists()


def test_get_times_out_when_no_worker_runs_the_task(app: Celeriac) -> None:
    task = app.task(add)
    result = task.delay(1, 1)
    started = time.monotonic()
    with pytest.raises(CeleriacTimeoutError) as caught:
        result.get(timeout=0.2)
    elapsed = time.monotonic() - started
    assert isinstance(caught.value, TimeoutError)  # the builtin, too
    assert 0.2 <= elapsed < 2.0
    assert result.id in str(caught.value)


def test_get_inside_a_task_raises_runtime_error(worker_app: Celeriac) -> None:
    task = worker_app.task(add)

    @worker_app.task(name="api.waits")
    def waits() -> int:
        return task.delay(1, 2).get(timeout=5)

    result = waits.delay()
    with pytest.raises(RuntimeError, match=r"Never call result.get\(\) within a task"):
        result.get(timeout=10)


def test_async_result_refuses_a_bad_id(app: Celeriac) -> None:
    for bad in ("", None, 5):
        with pytest.raises(ValueError):
            AsyncResult(bad, app)  # type: ignore[arg-type]


# -- routing


def _queue_sizes(app: Celeriac, *queues: str) -> dict[str, int]:
    return {queue: app.broker.size(queue) for queue in queues}


def test_default_queue_is_configurable(app: Celeriac) -> None:
    task = app.task(add)
    task.delay(1, 1)
    app.conf.task_default_queue = "fallback"
    task.delay(1, 1)
    assert _queue_sizes(app, "celeriac", "fallback") == {"celeriac": 1, "fallback": 1}


def test_task_routes_by_name_glob_and_function(app: Celeriac) -> None:
    def router(name: str, args: Any, kwargs: Any, options: Any, task: Any = None) -> Any:
        return {"queue": "by-function"} if name == "billing.refund" else None

    app.conf.task_routes = [
        {"billing.invoice": "invoices", "billing.audit": {"queue": "audits"}, "reports.*": "slow"},
        router,
    ]
    for name in ("billing.invoice", "billing.audit", "reports.daily", "billing.refund", "misc"):
        app.task(name=name)(add)
        app.tasks[name].delay(1, 2)
    assert _queue_sizes(app, "invoices", "audits", "slow", "by-function", "celeriac") == {
        "invoices": 1, "audits": 1, "slow": 1, "by-function": 1, "celeriac": 1,
    }  # fmt: skip


def test_queue_on_the_decorator_and_the_call(app: Celeriac) -> None:
    app.conf.task_routes = {"routed.task": "from-routes"}
    on_decorator = app.task(name="routed.task", queue="from-decorator")(add)
    on_decorator.delay(1, 1)
    on_decorator.apply_async((1, 1), queue="from-call")
    # By name alone (as a client without the code sends), only the routes apply, as in Celery.
    app.send_task("routed.task", (1, 1))
    assert _queue_sizes(app, "from-decorator", "from-call", "from-routes") == {
        "from-decorator": 1, "from-call": 1, "from-routes": 1,
    }  # fmt: skip


def test_a_worker_consumes_only_its_queues(
    worker_app: Celeriac, worker_thread: WorkerThread
) -> None:
    task = worker_app.task(name="api.routed", queue="special")(add)
    result = task.delay(20, 22)
    worker_thread.join()  # the worker's queues (celeriac, other) are drained
    assert result.state == states.PENDING and worker_app.broker.size("special") == 1
    assert worker_app.broker.purge("special") == 1


# -- errors are all under one root


def test_errors_share_one_root() -> None:
    assert issubclass(CeleriacTimeoutError, CeleriacError)
    assert issubclass(SerializationError, CeleriacError)
    assert issubclass(MessageError, CeleriacError)
    assert issubclass(TaskError, CeleriacError)
