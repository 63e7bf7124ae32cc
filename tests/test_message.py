"""The task message: its fields, its envelope, and a decoder that trusts nothing."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import random
import socket
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import msgpack
import pytest

from celeriac.errors import MessageError, SerializationError
from celeriac.message import PROTOCOL_HEADERS, Message, decode, encode
from celeriac.task import Request

TOKYO = timezone(timedelta(hours=9))
ACCEPT_ALL = ("json", "msgpack", "pickle")

FULL = Message(
    id="3f1c8a3e-6b1e-4f7a-9d3c-2b5a7e9f0c11",
    task="proj.tasks.add",
    args=(2, "two", [3.5, None]),
    kwargs={"x": 1, "nested": {"a": [True, False]}},
    queue="high",
    priority=7,
    eta=datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
    expires=datetime(2030, 1, 3, tzinfo=UTC),
    retries=3,
    root_id="root-1",
    parent_id="parent:2",
    group="group.3",
    group_index=4,
    timelimit=(60.0, 30),
    argsrepr="(2, 'two', [3.5, None])",
    kwargsrepr="{...}",
    origin="123@host",
    ignore_result=True,
    reply_to="reply.queue",
    correlation_id="corr-9",
    shadow="add(2)",
    callbacks=[{"task": "proj.tasks.log", "args": [], "kwargs": {}}],
    errbacks=[{"task": "proj.tasks.alert"}],
    chain=[{"task": "proj.tasks.b"}, {"task": "proj.tasks.a"}],
    chord={"task": "proj.tasks.sum", "options": {"priority": 1}},
    headers={"tenant": "acme", "trace": {"span": 5}},
)


def round_trip(message: Message, serializer: str = "json") -> Message:
    return decode(encode(message, serializer), accept=ACCEPT_ALL)


# -- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("serializer", ["json", "msgpack", "pickle"])
def test_every_field_round_trips(serializer: str) -> None:
    assert round_trip(FULL, serializer) == FULL


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Message)])
def test_each_field_survives_the_wire(field: str) -> None:
    """A message differing from the default in one field keeps that field."""
    value = getattr(FULL, field)
    message = Message(**{"id": "m-1", "task": "t", field: value})
    assert getattr(round_trip(message), field) == value


VALUES: dict[str, Any] = {
    "none": None,
    "bool": True,
    "int": -5,
    "big int": 2**70,
    "float": 1.5e-300,
    "str": "üñíçødé ☕",
    "list": [1, [2, [3]]],
    "dict": {"a": {"b": {}}},
    "datetime naive": datetime(2024, 2, 29, 23, 59, 59, 999999),
    "datetime aware": datetime(2024, 2, 29, 23, 59, 59, 1, tzinfo=TOKYO),
    "date": date(2024, 2, 29),
    "time": time(12, 0, 0, 7),
    "uuid": uuid.UUID("fe261700-2160-4d6d-9d77-ea064a8a3727"),
    "decimal": Decimal("10.000"),
    "bytes": b"\x00\x01\xff",
    "dict with __type__": {"__type__": "uuid", "__value__": "x"},
}


@pytest.mark.parametrize("value", VALUES.values(), ids=VALUES.keys())
@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_argument_types_round_trip(serializer: str, value: Any) -> None:
    if serializer == "msgpack" and value == 2**70:
        return  # msgpack holds 64-bit ints; its refusal is tested in test_serialization
    message = Message.new("t", (value,), {"k": value}, headers={"h": value})
    back = round_trip(message, serializer)
    assert back.args == (value,)
    assert back.kwargs == {"k": value}
    assert type(back.args[0]) is type(value)
    assert back.headers == {"h": value}  # user headers travel in the JSON envelope


def test_tuples_in_arguments_come_back_as_lists() -> None:
    back = round_trip(Message.new("t", ((1, 2),), {"k": (3,)}))
    assert back.args == ([1, 2],)
    assert back.kwargs == {"k": [3]}


def test_user_dict_with_type_key_round_trips() -> None:
    tricky = {"__type__": "datetime", "__value__": "2024-01-01T00:00:00"}
    message = Message.new("t", (tricky,), {"d": {"x": [tricky]}})
    back = round_trip(message)
    assert back.args == (tricky,)
    assert back.kwargs == {"d": {"x": [tricky]}}


# -- Message.new and the helpers ---------------------------------------------------------------


def test_new_fills_id_root_correlation_reprs_and_origin() -> None:
    message = Message.new("proj.tasks.add", [2, 2], {"debug": True})
    assert uuid.UUID(message.id).version == 4
    assert message.root_id == message.id
    assert message.parent_id is None
    assert message.correlation_id == message.id
    assert message.args == (2, 2)
    assert message.argsrepr == "(2, 2)"
    assert message.kwargsrepr == "{'debug': True}"
    assert message.origin == f"{os.getpid()}@{socket.gethostname()}"
    assert Message.new("t").argsrepr == "()"
    assert Message.new("t").kwargsrepr == "{}"
    assert Message.new("t").id != Message.new("t").id


def test_new_keeps_given_fields() -> None:
    message = Message.new("t", id="given", parent_id="p", correlation_id="c", queue="q")
    assert (message.id, message.root_id, message.correlation_id) == ("given", None, "c")
    assert Message.new("t", parent_id="p", root_id="r").root_id == "r"


def test_new_copies_the_callers_kwargs() -> None:
    kwargs = {"a": 1}
    message = Message.new("t", kwargs=kwargs)
    kwargs["a"] = 2
    assert message.kwargs == {"a": 1}


def test_reprs_are_short() -> None:
    message = Message.new("t", ["x" * 5000] * 100, {f"k{i}": list(range(100)) for i in range(100)})
    assert len(message.argsrepr) <= 1024
    assert len(message.kwargsrepr) <= 1024
    assert message.argsrepr.startswith("('xxx")
    assert message.argsrepr.endswith("...")


def test_eta_and_expires_are_stored_in_utc() -> None:
    eta = datetime(2030, 1, 1, 9, 0, tzinfo=TOKYO)
    message = Message.new("t", eta=eta, expires=eta)
    assert message.eta == eta
    assert message.eta is not None and message.eta.tzinfo is UTC
    assert message.eta.hour == 0
    envelope = json.loads(encode(message))
    assert envelope["headers"]["eta"] == "2030-01-01T00:00:00+00:00"


def test_naive_eta_is_refused() -> None:
    with pytest.raises(ValueError, match="eta: expected None or an aware datetime"):
        Message.new("t", eta=datetime(2030, 1, 1))


def test_due_timestamp() -> None:
    assert Message.new("t").due_timestamp() is None
    eta = datetime(2030, 1, 1, tzinfo=UTC)
    assert Message.new("t", eta=eta).due_timestamp() == eta.timestamp()


def test_is_expired() -> None:
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    message = Message.new("t", expires=expires)
    assert not Message.new("t").is_expired()
    assert not message.is_expired()
    assert not message.is_expired(expires - timedelta(microseconds=1))
    assert message.is_expired(expires)
    assert message.is_expired(expires.timestamp() + 1)
    assert not message.is_expired(expires.timestamp() - 1)
    assert Message.new("t", expires=datetime(2000, 1, 1, tzinfo=UTC)).is_expired()


def test_replace_checks_again() -> None:
    message = Message.new("t")
    retried = message.replace(retries=1, eta=datetime(2030, 1, 1, tzinfo=UTC))
    assert (retried.retries, retried.id, message.retries) == (1, message.id, 0)
    with pytest.raises(ValueError, match="priority"):
        message.replace(priority=10)


def test_message_is_frozen() -> None:
    message = Message.new("t")
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.task = "other"  # type: ignore[misc]


BAD_FIELDS: dict[str, tuple[dict[str, Any], str]] = {
    "id empty": ({"id": ""}, "id"),
    "id with a space": ({"id": "a b"}, "id"),
    "id too long": ({"id": "x" * 201}, "id"),
    "task empty": ({"task": ""}, "task"),
    "args list": ({"args": [1]}, "args"),
    "kwargs int key": ({"kwargs": {1: 2}}, "kwargs"),
    "priority 10": ({"priority": 10}, "priority"),
    "priority bool": ({"priority": True}, "priority"),
    "retries negative": ({"retries": -1}, "retries"),
    "root_id bad": ({"root_id": "a/b"}, "root_id"),
    "timelimit negative": ({"timelimit": (-1, None)}, "timelimit"),
    "timelimit nan": ({"timelimit": (float("nan"), None)}, "timelimit"),
    "queue empty": ({"queue": ""}, "queue"),
    "chord list": ({"chord": []}, "chord"),
    "headers collide": ({"headers": {"task": "x", "retries": 1}}, "headers"),
}


@pytest.mark.parametrize(("fields", "name"), BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_construction_refuses_bad_fields(fields: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name}: "):
        Message(**{"id": "m-1", "task": "t", **fields})


# -- the envelope ----------------------------------------------------------------------------------


def test_envelope_layout() -> None:
    envelope = json.loads(encode(FULL))
    layout = ["v", "headers", "properties", "content-type", "content-encoding", "body"]
    assert list(envelope) == layout
    assert envelope["v"] == 2
    assert envelope["content-type"] == "application/json"
    assert envelope["content-encoding"] == "utf-8"
    headers = envelope["headers"]
    assert set(headers) == PROTOCOL_HEADERS | {"tenant", "trace"}
    assert headers["lang"] == "py"
    assert headers["eta"] == "2030-01-02T03:04:05.678901+00:00"
    assert headers["timelimit"] == [60.0, 30]
    assert envelope["properties"] == {
        "correlation_id": "corr-9",
        "reply_to": "reply.queue",
        "priority": 7,
        "delivery_info": {"routing_key": "high", "priority": 7},
    }
    assert envelope["body"] == [
        [2, "two", [3.5, None]],
        {"x": 1, "nested": {"a": [True, False]}},
        {"callbacks": FULL.callbacks, "errbacks": FULL.errbacks, "chain": FULL.chain,
         "chord": FULL.chord},
    ]  # fmt: skip


def test_binary_bodies_are_base64() -> None:
    envelope = json.loads(encode(FULL, "msgpack"))
    assert envelope["content-type"] == "application/x-msgpack"
    assert envelope["content-encoding"] == "binary"
    body = msgpack.unpackb(base64.b64decode(envelope["body"]))
    assert body[0] == [2, "two", [3.5, None]]


def test_encoding_is_compact_utf8() -> None:
    data = encode(Message.new("t", ("é",)))
    assert b" " not in data.replace(b"'\\xe9'", b"")
    assert "é".encode() in data


def test_user_header_collision_is_refused_at_encode() -> None:
    message = Message.new("t", headers={"tenant": "acme"})
    message.headers["eta"] = "now"  # the dict is mutable; encode checks again
    with pytest.raises(ValueError, match=r"headers: \['eta'\] are protocol header names"):
        encode(message)


def test_unknown_serializer() -> None:
    with pytest.raises(SerializationError, match="known: json, msgpack, pickle"):
        encode(Message.new("t"), "yaml")


UNENCODABLE: dict[str, tuple[Callable[[], Message], str]] = {
    "object in args": (lambda: Message.new("t", (1, object())), "args[1]: "),
    "lambda in kwargs": (lambda: Message.new("t", kwargs={"x": lambda: 1}), "kwargs['x']: "),
    "set in a callback": (lambda: Message.new("t", callbacks=[{"s": {1}}]), "callbacks[0]['s']: "),
    "object in headers": (lambda: Message.new("t", headers={"h": object()}), "headers['h']: "),
}


@pytest.mark.parametrize(("make", "path"), UNENCODABLE.values(), ids=UNENCODABLE.keys())
@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_unencodable_arguments_name_their_path(
    serializer: str, make: Callable[[], Message], path: str
) -> None:
    with pytest.raises(SerializationError) as info:
        encode(make(), serializer)
    assert str(info.value).startswith(path)


@pytest.mark.parametrize("serializer", ["json", "msgpack", "pickle"])
def test_a_socket_argument_is_refused(serializer: str) -> None:
    with socket.socket() as sock, pytest.raises(SerializationError):
        encode(Message.new("t", (sock,)), serializer)


def test_nan_argument_is_refused_by_json() -> None:
    with pytest.raises(SerializationError, match=r"kwargs\['f'\]: nan is not allowed"):
        encode(Message.new("t", kwargs={"f": float("nan")}))


# -- decode trusts nothing ---------------------------------------------------------------------


VALID = encode(FULL)


def mutated(change: Callable[[dict[str, Any]], object]) -> bytes:
    """VALID with one change made to its envelope."""
    envelope = json.loads(VALID)
    change(envelope)
    return json.dumps(envelope).encode()


def reason(data: bytes, accept: tuple[str, ...] = ("json",), max_size: int = 1 << 24) -> str:
    with pytest.raises(MessageError) as info:
        decode(data, accept, max_size)
    return info.value.reason


def test_the_valid_envelope_decodes() -> None:
    assert decode(VALID) == FULL


def test_too_large() -> None:
    assert reason(VALID, max_size=len(VALID) - 1) == "too_large"
    assert decode(VALID, max_size=len(VALID)) == FULL


@pytest.mark.parametrize("cut", [0, 1, 2, 50, len(VALID) // 2, len(VALID) - 1])
def test_truncated_bytes_are_undecodable(cut: int) -> None:
    assert reason(VALID[:cut]) == "undecodable"


@pytest.mark.parametrize("seed", range(20))
def test_random_bytes_are_undecodable(seed: int) -> None:
    data = random.Random(seed).randbytes(1 + seed * 37)
    assert reason(data) == "undecodable"


@pytest.mark.parametrize(
    "data", [b"\xff" + VALID, VALID + b"]", b"[" * 200_000, VALID.replace(b"[2,", b"[NaN,")]
)
def test_other_undecodable_bytes(data: bytes) -> None:
    assert reason(data) == "undecodable"


@pytest.mark.parametrize("document", ["[]", '"x"', "1", "null", "[1, 2, 3]"])
def test_json_that_is_not_an_envelope(document: str) -> None:
    assert reason(document.encode()) == "bad_shape"


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], object]:
    """A change that sets envelope[a][b]... = value (a missing value deletes the key)."""

    def change(envelope: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        target = envelope
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if value is MISSING:
            del target[last]
        elif isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value

    return change


MISSING = object()

BAD_SHAPES: dict[str, tuple[str, Any, str]] = {
    "v missing": ("v", MISSING, "v"),
    "v 1": ("v", 1, "v"),
    "v 3": ("v", 3, "v"),
    "v str": ("v", "2", "v"),
    "v true": ("v", True, "v"),
    "v float": ("v", 2.0, "v"),
    "headers missing": ("headers", MISSING, "headers"),
    "headers list": ("headers", [], "headers"),
    "properties str": ("properties", "x", "properties"),
    "content-type missing": ("content-type", MISSING, "content-type"),
    "content-type int": ("content-type", 1, "content-type"),
    "content-encoding gzip": ("content-encoding", "gzip", "content-encoding"),
    "content-encoding missing": ("content-encoding", MISSING, "content-encoding"),
    "body missing": ("body", MISSING, "body"),
    "body object": ("body", {}, "body"),
    "body too short": ("body", [[], {}], "body"),
    "body string": ("body", "[[], {}, {}]", "body"),
    "args object": ("body/0", {}, "args"),
    "args str": ("body/0", "2, 2", "args"),
    "kwargs list": ("body/1", [], "kwargs"),
    "embed list": ("body/2", [], "embed"),
    "callbacks str": ("body/2/callbacks", "x", "callbacks"),
    "errbacks of ints": ("body/2/errbacks", [1], "errbacks"),
    "chain object": ("body/2/chain", {}, "chain"),
    "chord list": ("body/2/chord", [], "chord"),
    "lang js": ("headers/lang", "js", "lang"),
    "id missing": ("headers/id", MISSING, "id"),
    "id int": ("headers/id", 5, "id"),
    "id empty": ("headers/id", "", "id"),
    "id slash": ("headers/id", "../../etc", "id"),
    "id newline": ("headers/id", "abc\n", "id"),
    "id too long": ("headers/id", "a" * 201, "id"),
    "task missing": ("headers/task", MISSING, "task"),
    "task empty": ("headers/task", "", "task"),
    "task list": ("headers/task", ["os.system"], "task"),
    "shadow int": ("headers/shadow", 1, "shadow"),
    "eta not a date": ("headers/eta", "tomorrow", "eta"),
    "eta number": ("headers/eta", 1700000000, "eta"),
    "expires bad": ("headers/expires", "2024-13-45", "expires"),
    "group bad": ("headers/group", "a b", "group"),
    "group_index negative": ("headers/group_index", -1, "group_index"),
    "group_index str": ("headers/group_index", "1", "group_index"),
    "retries negative": ("headers/retries", -1, "retries"),
    "retries str": ("headers/retries", "1", "retries"),
    "retries float": ("headers/retries", 1.5, "retries"),
    "retries bool": ("headers/retries", True, "retries"),
    "retries null": ("headers/retries", None, "retries"),
    "timelimit one item": ("headers/timelimit", [1], "timelimit"),
    "timelimit str": ("headers/timelimit", "60", "timelimit"),
    "timelimit str item": ("headers/timelimit", [60, "30"], "timelimit"),
    "timelimit negative": ("headers/timelimit", [-1, None], "timelimit"),
    "timelimit bool": ("headers/timelimit", [True, None], "timelimit"),
    "root_id bad": ("headers/root_id", "a/b", "root_id"),
    "parent_id int": ("headers/parent_id", 3, "parent_id"),
    "argsrepr list": ("headers/argsrepr", [], "argsrepr"),
    "kwargsrepr int": ("headers/kwargsrepr", 1, "kwargsrepr"),
    "origin int": ("headers/origin", 1, "origin"),
    "ignore_result str": ("headers/ignore_result", "yes", "ignore_result"),
    "ignore_result int": ("headers/ignore_result", 1, "ignore_result"),
    "correlation_id int": ("properties/correlation_id", 7, "correlation_id"),
    "reply_to list": ("properties/reply_to", [], "reply_to"),
    "priority 10": ("properties/priority", 10, "priority"),
    "priority negative": ("properties/priority", -1, "priority"),
    "priority str": ("properties/priority", "5", "priority"),
    "priority float": ("properties/priority", 5.0, "priority"),
    "delivery_info missing": ("properties/delivery_info", MISSING, "delivery_info"),
    "delivery_info list": ("properties/delivery_info", [], "delivery_info"),
    "routing_key missing": ("properties/delivery_info/routing_key", MISSING, "delivery_info"),
    "routing_key int": ("properties/delivery_info/routing_key", 1, "queue"),
    "routing_key empty": ("properties/delivery_info/routing_key", "", "queue"),
}


@pytest.mark.parametrize(("path", "value", "field"), BAD_SHAPES.values(), ids=BAD_SHAPES.keys())
def test_each_bad_field_is_a_bad_shape_naming_it(path: str, value: Any, field: str) -> None:
    with pytest.raises(MessageError) as info:
        decode(mutated(_set(path, value)))
    assert info.value.reason == "bad_shape"
    assert info.value.detail.startswith(f"{field}:")


def test_kwargs_keys_must_be_str() -> None:
    body = base64.b64encode(msgpack.packb([[], {1: "x"}, {}])).decode()
    data = mutated(
        lambda e: e.update({"content-type": "application/x-msgpack", "content-encoding": "binary",
                            "body": body})
    )  # fmt: skip
    with pytest.raises(MessageError, match="bad_shape: kwargs"):
        decode(data, accept=("msgpack",))


def test_optional_fields_may_be_left_out() -> None:
    minimal = {
        "v": 2,
        "headers": {"id": "m-1", "task": "t"},
        "properties": {"delivery_info": {"routing_key": "q"}},
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "body": [[], {}, {}],
    }
    assert decode(json.dumps(minimal).encode()) == Message(id="m-1", task="t", queue="q")


def test_naive_eta_on_the_wire_is_read_as_utc() -> None:
    message = decode(mutated(_set("headers/eta", "2030-01-01T00:00:00")))
    assert message.eta == datetime(2030, 1, 1, tzinfo=UTC)


def test_unknown_headers_are_user_headers() -> None:
    message = decode(mutated(_set("headers/x-extra", [1])))
    assert message.headers == {**FULL.headers, "x-extra": [1]}


@pytest.mark.parametrize(
    ("serializer", "accept"),
    [
        ("msgpack", ("json",)),
        ("pickle", ("json",)),
        ("pickle", ("json", "msgpack")),
        ("json", ("msgpack",)),
        ("json", ()),
    ],
)
def test_content_refused(serializer: str, accept: tuple[str, ...]) -> None:
    assert reason(encode(FULL, serializer), accept) == "content_refused"


def test_unknown_content_type_is_refused() -> None:
    assert reason(mutated(_set("content-type", "application/x-yaml"))) == "content_refused"


def test_accept_by_content_type() -> None:
    assert decode(encode(FULL, "msgpack"), accept=["application/x-msgpack"]) == FULL


def test_binary_body_that_is_not_base64_is_undecodable() -> None:
    data = encode(FULL, "msgpack").replace(b'"body":"', b'"body":"*')
    assert reason(data, ("msgpack",)) == "undecodable"


def test_binary_body_that_is_not_text_is_a_bad_shape() -> None:
    data = mutated(lambda e: e.update({"content-encoding": "binary", "body": [1]}))
    assert reason(data) == "bad_shape"


def test_binary_body_that_does_not_load_is_undecodable() -> None:
    garbage = base64.b64encode(b"\xc1\xc1").decode()
    data = encode(FULL, "msgpack").replace(
        json.loads(encode(FULL, "msgpack"))["body"].encode(), garbage.encode()
    )
    assert reason(data, ("msgpack",)) == "undecodable"


def test_bad_tag_in_the_body_is_undecodable() -> None:
    tag = {"__type__": "module", "__value__": "os"}
    assert reason(mutated(_set("body/0", [tag]))) == "undecodable"


def test_a_request_from_a_message_has_every_field_from_it() -> None:
    message = Message.new(
        "tasks.full", (1, [2]), {"k": {"v": 3}}, retries=2, group="g-1", group_index=4,
        parent_id="p-1", root_id="r-1", eta=datetime(2026, 1, 2, tzinfo=UTC),
        expires=datetime(2026, 1, 3, tzinfo=UTC), callbacks=[{"task": "cb"}],
        errbacks=[{"task": "eb"}], chain=[{"task": "next"}], chord={"task": "body"},
        timelimit=(10.0, 5.0), reply_to="r", shadow="shadowed", ignore_result=True,
        headers={"custom": 1},
    )  # fmt: skip
    delivery = {"routing_key": "celeriac"}
    request = Request.from_message(message, "w@h", delivery, eager=False)
    made = {f.name: getattr(request, f.name) for f in dataclasses.fields(Request)}  # all set
    from_message = {name: value for name, value in made.items() if hasattr(message, name)}
    assert from_message == {
        name: list(value) if name == "args" else value
        for name, value in dataclasses.asdict(message).items()
        if name in from_message
    }
    assert len(from_message) == 24
    assert (made["hostname"], made["delivery_info"], made["is_eager"]) == ("w@h", delivery, False)
    assert (made["called_directly"], made["lang"], made["message"]) == (False, "py", message)
    assert made["args"] is not message.args and made["headers"] is not message.headers
