"""Plain calls (``delay()`` with no options) are sent from a per-task template
(``celeriac.plain``): the bytes must be exactly those the general way encodes, the template
must follow every change of what it was made from, and anything beyond the plain case must
take the general way."""

from __future__ import annotations

import multiprocessing
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from celeriac import Celeriac, signals
from celeriac.errors import SerializationError
from celeriac.message import Message, decode, encode


def _published(app: Celeriac, queue: str = "celeriac") -> tuple[bytes, int]:
    """The body and priority of the one message waiting on ``queue``."""
    [delivery] = app.broker.fetch([queue], 10)
    app.broker.ack(delivery)
    return delivery.body, delivery.priority


def _general(app: Celeriac, task: Any, task_id: str, args: Any, kwargs: Any) -> bytes:
    """What the general way (a Message, then encode) gives for the same call and id."""
    message = app.build_message(task.name, args, kwargs, task=task, task_id=task_id)
    return encode(message, "json")


ARGUMENTS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((), {}),
    ((1, "two", 3.5, None, True), {}),
    ((), {"x": 1, "ünïcode": "snow ☃", "quote": 'a "b" \\ c\n'}),
    ((datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), date(2026, 1, 2)), {"d": Decimal("1.10")}),
    ((uuid.UUID(int=7), b"\x00\xffbytes"), {"nested": {"list": [1, [2, {"k": [3]}]]}}),
    (({"__type__": "datetime", "__value__": "not a tag"},), {"__type__": 1}),
    (("x" * 500, list(range(100))), {"long": "y" * 2000}),
    (([1, 2],), {"braces": "{0} {1} {{}} }{"}),
]


@pytest.mark.parametrize(("args", "kwargs"), ARGUMENTS)
def test_a_plain_call_sends_the_bytes_the_general_way_encodes(
    app: Celeriac, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    @app.task(name="plain.echo")
    def echo(*a: Any, **k: Any) -> None: ...

    result = echo.delay(*args, **kwargs)
    body, priority = _published(app)
    assert body == _general(app, echo, result.id, args, kwargs)
    message = decode(body)
    assert (message.id, message.root_id, message.correlation_id) == (result.id,) * 3
    assert (message.args, message.kwargs, priority) == (args, kwargs, 0)


@pytest.mark.parametrize(
    "options",
    [
        {"queue": "reports", "priority": 7},
        {"time_limit": 30, "soft_time_limit": 20.5, "ignore_result": True},
        {"serializer": "json", "acks_late": True, "max_retries": 9},
    ],
)
def test_the_task_options_a_template_holds_match_the_general_way(
    app: Celeriac, options: dict[str, Any]
) -> None:
    @app.task(name="plain.configured", **options)
    def configured(x: int) -> None: ...

    result = configured.delay(5)
    queue = options.get("queue", "celeriac")
    body, priority = _published(app, queue)
    assert body == _general(app, configured, result.id, (5,), {})
    assert priority == options.get("priority", 0)


def test_a_template_follows_changed_settings_and_task_options(app: Celeriac) -> None:
    @app.task(name="plain.changing")
    def changing() -> None: ...

    changing.delay()
    assert decode(_published(app)[0]).priority == 0
    app.conf.task_default_priority = 6
    app.conf.task_time_limit = 60
    result = changing.delay()
    body, priority = _published(app)
    assert (decode(body).priority, priority, decode(body).timelimit) == (6, 6, (60, None))
    assert body == _general(app, changing, result.id, (), {})
    app.conf.update(task_ignore_result=True)
    assert decode(_published_after(app, changing)).ignore_result is True
    del app.conf.task_ignore_result
    assert decode(_published_after(app, changing)).ignore_result is False
    changing.priority = 2
    assert decode(_published_after(app, changing)).priority == 2
    app.conf.task_routes = {"plain.changing": {"queue": "routed"}}
    changing.delay()
    assert decode(_published(app, "routed")[0]).queue == "routed"
    changing.queue = "own"
    changing.delay()
    assert decode(_published(app, "own")[0]).queue == "own"
    app.conf.task_always_eager = True
    assert changing.delay().status == "SUCCESS"  # run here, nothing sent
    assert app.broker.size("own") == 0


def _published_after(app: Celeriac, task: Any) -> bytes:
    task.delay()
    return _published(app)[0]


def test_a_route_that_reads_the_arguments_is_asked_on_every_call(app: Celeriac) -> None:
    app.conf.task_routes = lambda name, args, kwargs, options, task=None: f"q{args[0]}"

    @app.task(name="plain.routed")
    def routed(n: int) -> None: ...

    for n in (1, 2, 1):
        routed.delay(n)
        assert decode(_published(app, f"q{n}")[0]).queue == f"q{n}"


def _origin_in_child(app: Celeriac, task: Any, pipe: Any) -> None:
    task.delay()
    pipe.send(decode(_published(app)[0]).origin)


def test_a_forked_process_sends_its_own_pid_as_the_origin(app: Celeriac) -> None:
    @app.task(name="plain.forked")
    def forked() -> None: ...

    forked.delay()
    here = decode(_published(app)[0]).origin
    receive, send = multiprocessing.get_context("fork").Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(
        target=_origin_in_child, args=(app, forked, send)
    )
    child.start()
    there = receive.recv()
    child.join(10)
    assert here != there and there.startswith(f"{child.pid}@")


def test_a_receiver_on_a_publish_signal_gets_the_message(app: Celeriac) -> None:
    @app.task(name="plain.signalled")
    def signalled(x: int) -> None: ...

    seen: list[tuple[str, Message]] = []

    def before(sender: Any = None, message: Message | None = None, **_: Any) -> None:
        assert message is not None
        seen.append(("before", message))

    def after(sender: Any = None, message: Message | None = None, **_: Any) -> None:
        assert message is not None
        seen.append(("after", message))

    signals.before_task_publish.connect(before)
    signals.after_task_publish.connect(after)
    try:
        result = signalled.delay(3)
    finally:
        signals.before_task_publish.disconnect(before)
        signals.after_task_publish.disconnect(after)
    assert [(when, m.id, m.args) for when, m in seen] == [
        ("before", result.id, (3,)),
        ("after", result.id, (3,)),
    ]
    assert decode(_published(app)[0]).id == result.id


def test_what_a_template_cannot_carry_takes_the_general_way(app: Celeriac) -> None:
    @app.task(name="plain.expiring", expires=timedelta(hours=1))
    def expiring() -> None: ...

    @app.task(name="plain.packed", serializer="msgpack")
    def packed(x: int) -> None: ...

    expiring.delay()
    assert decode(_published(app)[0]).expires is not None
    pytest.importorskip("msgpack")
    app.conf.accept_content = ["json", "msgpack"]
    packed.delay(1)
    message = decode(_published(app)[0], ["json", "msgpack"])
    assert message.args == (1,)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "text"),
    [
        ((object(),), {}, SerializationError, "args[0]"),
        ((), {"when": {1, 2}}, SerializationError, "kwargs['when']"),
        (("\ud800",), {}, SerializationError, "surrogate"),
        ((float("nan"),), {}, SerializationError, "args[0]"),
    ],
)
def test_arguments_json_cannot_carry_fail_at_delay_with_the_general_error(
    app: Celeriac, args: tuple[Any, ...], kwargs: dict[str, Any], error: type, text: str
) -> None:
    @app.task(name="plain.bad")
    def bad(*a: Any, **k: Any) -> None: ...

    with pytest.raises(error, match=text.replace("[", r"\[")):
        bad.delay(*args, **kwargs)
    assert app.broker.size("celeriac") == 0


def test_keyword_names_that_are_not_strings_are_refused(app: Celeriac) -> None:
    @app.task(name="plain.kw")
    def kw(**k: Any) -> None: ...

    with pytest.raises(ValueError, match="kwargs"):
        kw.apply_async((), {1: "x"})  # type: ignore[dict-item]
    assert app.broker.size("celeriac") == 0


def test_send_many_mixes_plain_and_general_calls_in_order(app: Celeriac) -> None:
    @app.task(name="plain.many")
    def many(x: int) -> None: ...

    results = app.send_many(
        [(many, (1,), {}), (many, (2,), {}, {"priority": 9}), ("plain.many", (3,), {})]
    )
    bodies = {}
    for _ in range(3):
        [delivery] = app.broker.fetch(["celeriac"], 1)
        bodies[decode(delivery.body).id] = (delivery.body, delivery.priority)
    assert [decode(bodies[r.id][0]).args for r in results] == [(1,), (2,), (3,)]
    assert bodies[results[0].id][0] == _general(app, many, results[0].id, (1,), {})
    assert bodies[results[1].id][1] == 9


def test_send_many_routes_each_call_by_its_task_and_by_a_router_of_its_arguments(
    app: Celeriac,
) -> None:
    @app.task(name="plain.a", queue="qa")
    def a(x: int) -> None: ...

    @app.task(name="plain.b")
    def b(x: int) -> None: ...

    app.send_many([(a, (1,), {}), (b, (2,), {}), (a, (3,), {}), (b, (4,), {})])
    assert app.broker.size("qa") == 2 and app.broker.size("celeriac") == 2

    def by_parity(name: str, args: list[Any], kwargs: dict[str, Any], options: Any, **_: Any):
        return {"queue": "odd" if args and args[0] % 2 else "even"} if name == "plain.b" else None

    app.conf.task_routes = [by_parity]
    app.send_many([(b, (i,), {}) for i in range(5)])
    for queue, values in (("even", [0, 2, 4]), ("odd", [1, 3])):
        deliveries = app.broker.fetch([queue], 10)
        assert sorted(decode(d.body).args[0] for d in deliveries) == values
