"""The wire format of a task message: ``Message``, ``encode`` and ``decode``.

The protocol is the docstring of ``Message``. Serializers live in ``celeriac.serialization``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import math
import os
import re
import reprlib
import socket
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from celeriac import pid, serialization
from celeriac.errors import MessageError, SerializationError

PROTOCOL_VERSION = 2
DEFAULT_QUEUE = "celeriac"
MAX_PRIORITY = 9
MAX_MESSAGE_SIZE = 16 * 1024 * 1024
MAX_REPR = 1024

#: Header names that belong to the protocol; user headers may not use them.
PROTOCOL_HEADERS = frozenset(
    (
        "lang",
        "task",
        "id",
        "shadow",
        "eta",
        "expires",
        "group",
        "group_index",
        "retries",
        "timelimit",
        "root_id",
        "parent_id",
        "argsrepr",
        "kwargsrepr",
        "origin",
        "ignore_result",
    )
)

_ID = re.compile(r"[A-Za-z0-9._:-]{1,200}")
_ID_TEXT = "an id of 1-200 characters [A-Za-z0-9._:-]"
_NO_LIMITS: tuple[float | None, float | None] = (None, None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """One task message; this docstring is the protocol (version 2).

    The fields follow Celery's message protocol version 2 field for field. ``encode`` writes a
    message as one UTF-8 JSON document, the envelope::

        {"v": 2,
         "headers": {"lang": "py", "task": task, "id": id, "shadow": shadow,
                     "eta": eta, "expires": expires, "group": group, "group_index": group_index,
                     "retries": retries, "timelimit": [hard, soft],
                     "root_id": root_id, "parent_id": parent_id,
                     "argsrepr": argsrepr, "kwargsrepr": kwargsrepr, "origin": origin,
                     "ignore_result": ignore_result, ...user headers},
         "properties": {"correlation_id": correlation_id, "reply_to": reply_to,
                        "priority": priority,
                        "delivery_info": {"routing_key": queue, "priority": priority}},
         "content-type": "application/json",
         "content-encoding": "utf-8",
         "body": [args, kwargs, {"callbacks": callbacks, "errbacks": errbacks,
                                 "chain": chain, "chord": chord}]}

    ``eta`` and ``expires`` are ISO 8601 text (``2024-05-01T12:00:00.000001+00:00``) or null.
    The body holds what the task needs, the headers what the worker and monitors need without
    loading the body. With the JSON serializer the body is inline JSON (``content-encoding``
    ``"utf-8"``); with another serializer (``content-type`` ``application/x-msgpack`` or
    ``application/x-python-serialize``) it is the serializer's bytes as base64 text and
    ``content-encoding`` is ``"binary"``. Datetimes, UUIDs, Decimals and bytes inside args,
    kwargs and user headers are tagged as ``celeriac.serialization`` describes.

    Fields (construction checks each one and raises ValueError naming the field):

    - ``id``: the task id, unique per message: a uuid4 string, or any 1-200 characters of
      ``[A-Za-z0-9._:-]``. ``root_id``, ``parent_id`` and ``group`` are ids of the same form
      or None: the first task of the workflow, the task that sent this one, its group.
    - ``task``: the registered name of the task to run (a non-empty str).
    - ``args`` (tuple) and ``kwargs`` (dict with str keys): the task's own arguments.
    - ``queue``: the queue (routing key) the message is published to.
    - ``priority``: 0-9, 9 most urgent.
    - ``eta``: not before this moment (aware, stored in UTC) or None; ``expires``: do not run
      after this moment (aware, stored in UTC) or None. Naive datetimes are refused; on the wire
      a naive ISO time is read as UTC.
    - ``retries``: how many times the task has been retried (an int >= 0).
    - ``group_index``: the position of this task in its group (an int >= 0) or None.
    - ``timelimit``: ``(hard, soft)`` seconds, Celery's order; each a number >= 0 or None.
    - ``argsrepr``, ``kwargsrepr``: short reprs of the arguments, for logs and monitors.
    - ``origin``: ``"pid@host"`` of the sender, or None.
    - ``ignore_result``: True when no result is to be stored.
    - ``reply_to``: where a reply is wanted, or None; ``correlation_id``: the id replies
      carry, the message id when not given.
    - ``shadow``: a name to show in logs instead of ``task``, or None.
    - ``callbacks``, ``errbacks``: signature dicts to apply on success / on error, or None.
    - ``chain``: the signature dicts still to run after this task (last first), or None.
    - ``chord``: the signature dict of the chord body this task belongs to, or None; it also
      holds ``chord_size``, the number of header tasks (``group`` names the chord, and
      ``group_index`` is this task's place in its header).
    - ``headers``: extra user headers (str keys, none of ``PROTOCOL_HEADERS``).

    ``decode`` never trusts its input and raises ``MessageError`` with a reason code:
    ``too_large`` (more than ``max_size`` bytes), ``undecodable`` (not UTF-8 JSON, a body that
    does not load), ``content_refused`` (a content type not in ``accept``; pickle only when
    accepted) and ``bad_shape`` (any missing or wrong-typed field, or a protocol version other
    than 2; the detail names the field). Only ``task`` and ``id`` are required in ``headers``
    and ``delivery_info.routing_key`` in ``properties``; every other field may be left out and
    takes its default. Nothing named in a message is ever imported or evaluated.
    """

    id: str
    task: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue: str = DEFAULT_QUEUE
    priority: int = 0
    eta: datetime | None = None
    expires: datetime | None = None
    retries: int = 0
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    timelimit: tuple[float | None, float | None] = _NO_LIMITS
    argsrepr: str = ""
    kwargsrepr: str = ""
    origin: str | None = None
    ignore_result: bool = False
    reply_to: str | None = None
    correlation_id: str = ""
    shadow: str | None = None
    callbacks: list[dict[str, Any]] | None = None
    errbacks: list[dict[str, Any]] | None = None
    chain: list[dict[str, Any]] | None = None
    chord: dict[str, Any] | None = None
    headers: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse a message that the protocol cannot carry; fill the derived defaults."""
        _check_ids(self)
        _check_values(self)
        _check_containers(self)
        if self.eta is not None and self.eta.tzinfo is not UTC:
            object.__setattr__(self, "eta", self.eta.astimezone(UTC))
        if self.expires is not None and self.expires.tzinfo is not UTC:
            object.__setattr__(self, "expires", self.expires.astimezone(UTC))
        if not self.correlation_id:
            object.__setattr__(self, "correlation_id", self.id)

    @classmethod
    def new(
        cls,
        task: str,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> Message:
        """A new message: a fresh uuid4 id, root_id = id when there is no parent, reprs, origin."""
        args = tuple(args)
        kwargs = dict(kwargs) if kwargs else {}
        if "id" not in fields:
            fields["id"] = new_id()
        if "root_id" not in fields and fields.get("parent_id") is None:
            fields["root_id"] = fields["id"]
        fields.setdefault("argsrepr", short_repr(args) if args else "()")
        fields.setdefault("kwargsrepr", short_repr(kwargs) if kwargs else "{}")
        fields.setdefault("origin", f"{pid.current()}@{_hostname()}")
        return cls(task=task, args=args, kwargs=kwargs, **fields)

    def replace(self, **changes: Any) -> Message:
        """A copy with some fields changed (and checked again)."""
        return dataclasses.replace(self, **changes)

    def is_expired(self, now: datetime | float | None = None) -> bool:
        """True when now (a datetime or epoch seconds; default the clock) is at or past expires."""
        if self.expires is None:
            return False
        if now is None:
            now = time.time()
        elif isinstance(now, datetime):
            now = _aware(now).timestamp()
        return now >= _aware(self.expires).timestamp()

    def due_timestamp(self) -> float | None:
        """The eta as seconds since the epoch (what a transport's ``due`` takes), or None."""
        return None if self.eta is None else _aware(self.eta).timestamp()


@functools.cache
def _hostname() -> str:
    """This host's name, looked up once per process."""
    return socket.gethostname()


_REPR = reprlib.Repr()
_REPR.maxlevel = 4
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 200
_REPR.maxtuple = _REPR.maxlist = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 32


def new_id() -> str:
    """A fresh task id: a random (version 4) UUID in its usual text form.

    The same as ``str(uuid.uuid4())``, at a third of its cost (it is made for every message).
    """
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


#: Types whose repr() is what reprlib writes for them, when short (short_repr, and a
#: task result's summary in the worker).
PLAIN_TYPES = frozenset({int, float, bool, type(None)})


def short_repr(value: Any) -> str:
    """A repr for logs: nested and long parts elided, at most MAX_REPR characters."""
    if type(value) is tuple and len(value) <= 8:
        for item in value:  # a loop: all() over a generator costs as much as the repr
            if type(item) not in PLAIN_TYPES and not (type(item) is str and len(item) <= 64):
                break
        else:
            text = repr(value)  # a few plain values: nothing to elide, and reprlib is slow
            if len(text) <= 100:
                return text
    text = _REPR.repr(value)
    return text if len(text) <= MAX_REPR else text[: MAX_REPR - 3] + "..."


def _aware(moment: datetime) -> datetime:
    """moment, with a naive datetime read as UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _invalid(name: str, expected: str, value: Any) -> ValueError:
    """The error for a field that the protocol cannot carry."""
    return ValueError(f"{name}: expected {expected}, got {reprlib.repr(value)}")


def _is_id(value: Any) -> bool:
    """True for an id the protocol accepts (1-200 characters of [A-Za-z0-9._:-])."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def _is_count(value: Any) -> bool:
    """True for an int >= 0 (not a bool)."""
    return isinstance(value, int) and value is not True and value is not False and value >= 0


# The checks below run for every message built or decoded: each tests the common case
# (None, a default, an empty container) first, and loops or calls only past it.


def _check_ids(m: Message) -> None:
    """Check the id fields and the task name."""
    if not _is_id(m.id):
        raise _invalid("id", _ID_TEXT, m.id)
    if not (isinstance(m.task, str) and m.task):
        raise _invalid("task", "a non-empty str", m.task)
    if m.root_id is not None and m.root_id != m.id and not _is_id(m.root_id):
        raise _invalid("root_id", f"None or {_ID_TEXT}", m.root_id)
    if m.parent_id is not None and not _is_id(m.parent_id):
        raise _invalid("parent_id", f"None or {_ID_TEXT}", m.parent_id)
    if m.group is not None and not _is_id(m.group):
        raise _invalid("group", f"None or {_ID_TEXT}", m.group)


def _check_values(m: Message) -> None:
    """Check the scalar fields."""
    priority, retries = m.priority, m.retries  # an int: the common case, without a call
    if not (type(priority) is int or _is_count(priority)) or not 0 <= priority <= MAX_PRIORITY:
        raise _invalid("priority", f"an int from 0 to {MAX_PRIORITY}", priority)
    if not (type(retries) is int and retries >= 0) and not _is_count(retries):
        raise _invalid("retries", "an int >= 0", retries)
    if m.group_index is not None and not _is_count(m.group_index):
        raise _invalid("group_index", "None or an int >= 0", m.group_index)
    if m.eta is not None and not _is_aware(m.eta):
        raise _invalid("eta", "None or an aware datetime", m.eta)
    if m.expires is not None and not _is_aware(m.expires):
        raise _invalid("expires", "None or an aware datetime", m.expires)
    if m.timelimit != _NO_LIMITS and not _is_timelimit(m.timelimit):
        raise _invalid("timelimit", "a (hard, soft) tuple of numbers >= 0 or None", m.timelimit)
    if not (isinstance(m.queue, str) and m.queue):
        raise _invalid("queue", "a non-empty str", m.queue)
    for name, text in (
        ("argsrepr", m.argsrepr),
        ("kwargsrepr", m.kwargsrepr),
        ("correlation_id", m.correlation_id),
    ):
        if not isinstance(text, str):
            raise _invalid(name, "a str", text)
    for name, optional in (("origin", m.origin), ("reply_to", m.reply_to), ("shadow", m.shadow)):
        if optional is not None and not isinstance(optional, str):
            raise _invalid(name, "None or a str", optional)
    if m.ignore_result is not False and m.ignore_result is not True:
        raise _invalid("ignore_result", "a bool", m.ignore_result)


def _is_aware(value: Any) -> bool:
    """True for a datetime with a UTC offset."""
    return isinstance(value, datetime) and value.utcoffset() is not None


def _is_timelimit(value: Any) -> bool:
    """True for a (hard, soft) tuple of non-negative finite numbers or None."""
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and all(limit is None or _is_seconds(limit) for limit in value)
    )


def _is_seconds(value: Any) -> bool:
    """True for a finite number >= 0 (not a bool)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _check_containers(m: Message) -> None:
    """Check args, kwargs, the workflow fields and the user headers."""
    if not isinstance(m.args, tuple):
        raise _invalid("args", "a tuple", m.args)
    if not (isinstance(m.kwargs, dict) and (not m.kwargs or _has_str_keys(m.kwargs))):
        raise _invalid("kwargs", "a dict with str keys", m.kwargs)
    if m.callbacks is not None and not _is_dict_list(m.callbacks):
        raise _invalid("callbacks", "None or a list of signature dicts", m.callbacks)
    if m.errbacks is not None and not _is_dict_list(m.errbacks):
        raise _invalid("errbacks", "None or a list of signature dicts", m.errbacks)
    if m.chain is not None and not _is_dict_list(m.chain):
        raise _invalid("chain", "None or a list of signature dicts", m.chain)
    if m.chord is not None and not isinstance(m.chord, dict):
        raise _invalid("chord", "None or a signature dict", m.chord)
    if not (isinstance(m.headers, dict) and (not m.headers or _has_str_keys(m.headers))):
        raise _invalid("headers", "a dict with str keys", m.headers)
    _check_user_headers(m.headers)


def _has_str_keys(mapping: dict[Any, Any]) -> bool:
    """True when every key of mapping is a str."""
    return all(isinstance(key, str) for key in mapping)


def _is_dict_list(value: Any) -> bool:
    """True for a list of dicts."""
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def _check_user_headers(headers: dict[str, Any]) -> None:
    """Refuse user headers that would overwrite a protocol header."""
    if headers and not PROTOCOL_HEADERS.isdisjoint(headers):
        taken = sorted(PROTOCOL_HEADERS.intersection(headers))
        raise ValueError(f"headers: {taken} are protocol header names; choose other names")


def encode(message: Message, serializer: str = "json") -> bytes:
    """The message as envelope bytes; SerializationError (and nothing sent) if it cannot be."""
    _check_user_headers(message.headers)  # the dict may have been changed since construction
    body = [message.args, message.kwargs, _embed(message)]
    payload: Any
    if serializer == "json":
        content_type, encoding, payload = serialization.JSON, "utf-8", body
    else:
        try:
            content_type, data = serialization.dumps(body, serializer)
        except SerializationError as exc:
            raise _explain(message, serializer, exc) from None
        encoding, payload = "binary", base64.b64encode(data).decode("ascii")
    envelope = {
        "v": PROTOCOL_VERSION,
        "headers": _headers(message),
        "properties": _properties(message),
        "content-type": content_type,
        "content-encoding": encoding,
        "body": payload,
    }
    try:
        return serialization.to_json(envelope)
    except SerializationError as exc:
        raise _explain(message, serializer, exc) from None


def _embed(m: Message) -> dict[str, Any]:
    """The third part of the body: what runs after this task."""
    return {"callbacks": m.callbacks, "errbacks": m.errbacks, "chain": m.chain, "chord": m.chord}


def _headers(m: Message) -> dict[str, Any]:
    """The envelope's headers: the protocol's, then the user's."""
    headers = {
        "lang": "py",
        "task": m.task,
        "id": m.id,
        "shadow": m.shadow,
        "eta": None if m.eta is None else m.eta.isoformat(),
        "expires": None if m.expires is None else m.expires.isoformat(),
        "group": m.group,
        "group_index": m.group_index,
        "retries": m.retries,
        "timelimit": m.timelimit,
        "root_id": m.root_id,
        "parent_id": m.parent_id,
        "argsrepr": m.argsrepr,
        "kwargsrepr": m.kwargsrepr,
        "origin": m.origin,
        "ignore_result": m.ignore_result,
    }
    if m.headers:
        headers.update(m.headers)
    return headers


def _properties(m: Message) -> dict[str, Any]:
    """The envelope's properties: reply routing and delivery."""
    return {
        "correlation_id": m.correlation_id,
        "reply_to": m.reply_to,
        "priority": m.priority,
        "delivery_info": {"routing_key": m.queue, "priority": m.priority},
    }


def _explain(m: Message, serializer: str, exc: SerializationError) -> SerializationError:
    """The error naming which argument (args[0], kwargs['x'], ...) cannot be serialized."""
    parts: tuple[tuple[str, Any, str], ...] = (
        ("args", m.args, serializer),
        ("kwargs", m.kwargs, serializer),
        ("callbacks", m.callbacks, serializer),
        ("errbacks", m.errbacks, serializer),
        ("chain", m.chain, serializer),
        ("chord", m.chord, serializer),
        ("headers", m.headers, "json"),  # headers are always in the JSON envelope
    )
    for root, value, used in parts:
        found = serialization.find_unencodable(value, root, used)
        if found is not None:
            return SerializationError(f"{found} (serializer: {used})")
    return exc


def decode(
    data: bytes, accept: Collection[str] = ("json",), max_size: int = MAX_MESSAGE_SIZE
) -> Message:
    """The message in envelope bytes; MessageError with a reason code for anything else."""
    if len(data) > max_size:
        raise MessageError("too_large", f"{len(data)} bytes, more than the limit of {max_size}")
    envelope = serialization.from_json(data)
    if not isinstance(envelope, dict):
        raise MessageError("bad_shape", "envelope: expected a JSON object")
    version = envelope.get("v")
    if version != PROTOCOL_VERSION or not isinstance(version, int) or isinstance(version, bool):
        raise MessageError("bad_shape", f"v: unknown protocol version {reprlib.repr(version)}")
    headers = envelope.get("headers")
    properties = envelope.get("properties")
    if not isinstance(headers, dict):
        raise MessageError("bad_shape", "headers: expected a JSON object")
    if not isinstance(properties, dict):
        raise MessageError("bad_shape", "properties: expected a JSON object")
    args, kwargs, embed = _body(envelope, accept)
    try:
        return _message(headers, properties, args, kwargs, embed)
    except (ValueError, TypeError) as exc:
        raise MessageError("bad_shape", str(exc)) from None


def _body(envelope: dict[str, Any], accept: Collection[str]) -> tuple[Any, Any, dict[str, Any]]:
    """The body's [args, kwargs, embed], loaded with its serializer if accepted."""
    content_type = envelope.get("content-type")
    encoding = envelope.get("content-encoding")
    if not isinstance(content_type, str):
        raise MessageError("bad_shape", "content-type: expected a str")
    serialization.accepted(content_type, accept)
    if "body" not in envelope:
        raise MessageError("bad_shape", "body: missing")
    body = envelope["body"]
    if encoding == "binary":
        body = serialization.loads(_unbase64(body), content_type, accept)
    elif encoding != "utf-8" or content_type != serialization.JSON:
        raise MessageError("bad_shape", f"content-encoding: unexpected {reprlib.repr(encoding)}")
    if not isinstance(body, list | tuple) or len(body) != 3:
        raise MessageError("bad_shape", "body: expected [args, kwargs, embed]")
    args, kwargs, embed = body
    if not isinstance(args, list | tuple):
        raise MessageError("bad_shape", "args: expected a list")
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise MessageError("bad_shape", "kwargs: expected an object with str keys")
    if not isinstance(embed, dict):
        raise MessageError("bad_shape", "embed: expected an object")
    return args, kwargs, embed


def _unbase64(body: Any) -> bytes:
    """A binary body's bytes from its base64 text."""
    if not isinstance(body, str):
        raise MessageError("bad_shape", "body: a binary body is base64 text")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MessageError("undecodable", f"body: not valid base64: {exc}") from None


def _message(
    headers: dict[str, Any],
    properties: dict[str, Any],
    args: list[Any] | tuple[Any, ...],
    kwargs: dict[str, Any],
    embed: dict[str, Any],
) -> Message:
    """Build the Message from checked envelope parts; ValueError names a bad field."""
    if headers.get("lang", "py") != "py":
        raise _invalid("lang", '"py"', headers["lang"])
    delivery = properties.get("delivery_info")
    if not isinstance(delivery, dict) or "routing_key" not in delivery:
        raise _invalid("delivery_info", "an object with a routing_key", delivery)
    get = headers.get
    eta, expires = get("eta"), get("expires")
    return _filled(  # in the order of Message's fields
        get("id", ""),
        get("task", ""),
        tuple(args),
        kwargs,
        delivery["routing_key"],
        properties.get("priority", 0),
        None if eta is None else _moment(eta, "eta"),
        None if expires is None else _moment(expires, "expires"),
        get("retries", 0),
        get("root_id"),
        get("parent_id"),
        get("group"),
        get("group_index"),
        _timelimit(get("timelimit")),
        get("argsrepr", ""),
        get("kwargsrepr", ""),
        get("origin"),
        get("ignore_result", False),
        properties.get("reply_to"),
        _or_empty(properties.get("correlation_id")),
        get("shadow"),
        embed.get("callbacks"),
        embed.get("errbacks"),
        embed.get("chain"),
        embed.get("chord"),
        _user_headers(headers),
    )


#: Message's fields in order, and the setters of their slots.
_FIELDS = tuple(f.name for f in dataclasses.fields(Message))
_SETTERS = tuple(getattr(Message, name).__set__ for name in _FIELDS)


def _filled(*values: Any) -> Message:
    """A Message from all its field values in order, checked as ``__init__`` checks them.

    What decode builds every message with: the dataclass's own ``__init__``, with 26 keyword
    arguments each stored through the frozen class's ``object.__setattr__``, costs more than
    filling the slots directly."""
    message: Message = object.__new__(Message)
    for put, value in zip(_SETTERS, values, strict=True):
        put(message, value)
    message.__post_init__()
    return message


def _moment(text: Any, name: str) -> datetime | None:
    """An ISO 8601 header as an aware datetime (naive read as UTC), or None."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise _invalid(name, "None or an ISO 8601 datetime", text)
    try:
        return _aware(datetime.fromisoformat(text))
    except ValueError:
        raise _invalid(name, "None or an ISO 8601 datetime", text) from None


def _or_empty(value: Any) -> Any:
    """value, with None read as "" (the field's "not given")."""
    return "" if value is None else value


def _timelimit(value: Any) -> tuple[Any, Any]:
    """The [hard, soft] header as a tuple (its items are checked by Message)."""
    if value is None:
        return _NO_LIMITS
    if not isinstance(value, list) or len(value) != 2:
        raise _invalid("timelimit", "[hard, soft]", value)
    return (value[0], value[1])


def _user_headers(headers: dict[str, Any]) -> dict[str, Any]:
    """The headers that are not the protocol's."""
    if len(headers) <= len(PROTOCOL_HEADERS) and PROTOCOL_HEADERS.issuperset(headers):
        return {}
    return {k: v for k, v in headers.items() if k not in PROTOCOL_HEADERS}
