"""Serializers by name: how task arguments, results and headers become bytes, and back.

=========  ==============================  ==================================================
name       content type                    notes
=========  ==============================  ==================================================
json       application/json                the default: stdlib json, compact, UTF-8
msgpack    application/x-msgpack           an extra: ``pip install celeriac[msgpack]``
pickle     application/x-python-serialize  never loaded unless "pickle" is in ``accept``
=========  ==============================  ==================================================

JSON and msgpack carry the same values: None, bool, int, float (finite), str, list, tuple, dict,
and the tagged types datetime (naive or aware, microseconds kept), date, time, UUID, Decimal
(exact) and bytes. In JSON a tagged value is an object with exactly two keys::

    {"__type__": "datetime", "__value__": "2024-05-01T12:00:00.000001+00:00"}

with tags ``datetime``, ``date``, ``time`` (ISO 8601), ``uuid``, ``decimal`` (str) and ``bytes``
(base64). A user dict that has a ``"__type__"`` key of its own is escaped as
``{"__type__": "dict", "__value__": [[key, value], ...]}``, so it comes back unchanged. msgpack
carries bytes natively and the other tagged types as ExtType codes 1-5 holding the same text.

What comes back different, by design:

- tuples come back as lists (JSON and msgpack have one array type);
- JSON turns non-str dict keys into str (``1`` becomes ``"1"``), as the json module does;
- aware datetimes and times come back with a fixed ``datetime.timezone`` of the same offset,
  not their original tzinfo object; subclasses of the types above come back as the base type;
- msgpack keeps str, bytes, int, float, bool and None dict keys (tuple keys are written but
  cannot be read back: do not use them), writes bytearray and memoryview as bytes, and carries
  NaN and infinities, which JSON refuses.

Anything else (objects, sets, NaN and infinities, circular structures, str with lone
surrogates) raises SerializationError when dumped, naming the type and, where it can be found,
the path (``value[1]['x']``): nothing that cannot be read back is ever published. Loading never
trusts its input: bytes that do not decode raise ``MessageError("undecodable")``, a content type
not in ``accept`` raises ``MessageError("content_refused")``.
"""

from __future__ import annotations

import base64
import json
import math
import pickle
import reprlib
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import date, datetime, time
from decimal import Decimal
from types import MappingProxyType
from typing import Any
from uuid import UUID

from celeriac.errors import MessageError, MissingExtraError, SerializationError

JSON = "application/json"
MSGPACK = "application/x-msgpack"
PICKLE = "application/x-python-serialize"

#: Serializer name -> content type.
CONTENT_TYPES: Mapping[str, str] = MappingProxyType(
    {"json": JSON, "msgpack": MSGPACK, "pickle": PICKLE}
)
_NAMES: Mapping[str, str] = {content_type: name for name, content_type in CONTENT_TYPES.items()}

TYPE_KEY = "__type__"
VALUE_KEY = "__value__"
_ESCAPED_DICT = "dict"


def _b64(data: bytes) -> str:
    """bytes as base64 text."""
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    """base64 text as bytes; refuses characters outside the alphabet."""
    return base64.b64decode(text, validate=True)


# Exact type -> (tag, to text). Order matters for the subclass fallback: datetime before date.
_TAGS: dict[type, tuple[str, Callable[[Any], str]]] = {
    datetime: ("datetime", datetime.isoformat),
    date: ("date", date.isoformat),
    time: ("time", time.isoformat),
    UUID: ("uuid", str),
    Decimal: ("decimal", str),
    bytes: ("bytes", _b64),
}
_FROM_TEXT: dict[str, Callable[[str], Any]] = {
    "datetime": datetime.fromisoformat,
    "date": date.fromisoformat,
    "time": time.fromisoformat,
    "uuid": UUID,
    "decimal": Decimal,
    "bytes": _unb64,
}
_EXT_CODES = {"datetime": 1, "date": 2, "time": 3, "uuid": 4, "decimal": 5}
_EXT_NAMES = {code: name for name, code in _EXT_CODES.items()}
_JSON_KEYS = (str, int, float, bool, type(None))
_MSGPACK_KEYS = (*_JSON_KEYS, bytes)
_CONTAINERS = (dict, list, tuple)

# What a failed load can raise: bad JSON/base64/UTF-8 (ValueError), a bad Decimal
# (ArithmeticError), a bad tag value (TypeError), input nested past the recursion limit.
_LOAD_ERRORS = (ValueError, TypeError, ArithmeticError, RecursionError)


def _tag_of(obj: Any) -> tuple[str, Callable[[Any], str]] | None:
    """The (tag, to-text) pair for a tagged type or a subclass of one, else None."""
    entry = _TAGS.get(type(obj))
    if entry is None:
        entry = next((e for t, e in _TAGS.items() if isinstance(obj, t)), None)
    return entry


def _json_default(obj: Any) -> dict[str, Any]:
    """json's ``default=`` hook: tag a value json cannot carry natively, or refuse it."""
    entry = _tag_of(obj)
    if entry is None:
        raise TypeError(f"cannot serialize an object of type {type(obj).__qualname__}")
    tag, to_text = entry
    return {TYPE_KEY: tag, VALUE_KEY: to_text(obj)}


def _restore(obj: dict[str, Any]) -> Any:
    """json's ``object_hook``: turn a tagged object back into its value."""
    if TYPE_KEY not in obj:
        return obj
    if len(obj) != 2 or VALUE_KEY not in obj:
        raise ValueError(f"a tagged object has exactly the keys {TYPE_KEY} and {VALUE_KEY}")
    tag, value = obj[TYPE_KEY], obj[VALUE_KEY]
    if tag == _ESCAPED_DICT:
        return _unescape(value)
    parse = _FROM_TEXT.get(tag) if isinstance(tag, str) else None
    if parse is None or not isinstance(value, str):
        raise ValueError(f"bad tagged value {reprlib.repr(tag)}")
    return parse(value)


def _unescape(pairs: Any) -> dict[Any, Any]:
    """Rebuild a user dict that was escaped because it had a ``__type__`` key."""
    if not isinstance(pairs, list):
        raise ValueError("an escaped dict holds a list of [key, value] pairs")
    result: dict[Any, Any] = {}
    for pair in pairs:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise ValueError("an escaped dict holds a list of [key, value] pairs")
        key, value = pair
        if not isinstance(key, _JSON_KEYS):
            raise ValueError("an escaped dict key must be a JSON scalar")
        result[key] = value
    return result


def _has_type_key(obj: Any) -> bool:
    """True when a user dict anywhere in obj has a ``__type__`` key (and needs escaping)."""
    values: Iterable[Any]
    if isinstance(obj, dict):
        if TYPE_KEY in obj:
            return True
        values = obj.values()
    elif isinstance(obj, list | tuple):
        values = obj
    else:
        return False
    for value in values:  # noqa: SIM110 - a loop is 30% faster than any(); runs per tagged send
        if isinstance(value, _CONTAINERS) and _has_type_key(value):
            return True
    return False


def _escape(obj: Any) -> Any:
    """A copy of obj in which every dict with a ``__type__`` key is escaped."""
    if isinstance(obj, dict):
        if TYPE_KEY in obj:
            return {TYPE_KEY: _ESCAPED_DICT, VALUE_KEY: [[k, _escape(v)] for k, v in obj.items()]}
        return {k: _escape(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_escape(v) for v in obj]
    return obj


def _refuse_constant(name: str) -> float:
    """json's ``parse_constant``: NaN and Infinity are not JSON, and never loaded."""
    raise ValueError(f"{name} is not allowed")


# Built once: json.dumps/loads with keyword arguments build a new coder on every call.
_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_json_default
)
_PLAIN_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def _encode_fast() -> Callable[[Any], str]:
    """``_ENCODER.encode`` without building its C encoder on every call (a third of the cost
    of a small value). No cycle check: a cycle ends in RecursionError, refused like one."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # an interpreter without json's C speedups
        return _ENCODER.encode
    fast = make(None, _json_default, json.encoder.encode_basestring, None, ":", ",",
                False, False, False)  # fmt: skip
    return lambda obj: "".join(fast(obj, 0))


_encode = _encode_fast()
_TAGGED_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, object_hook=_restore)


def to_json(obj: Any) -> bytes:
    """obj as compact UTF-8 JSON with tagged types; SerializationError if it would not load."""
    try:
        return json_text(obj).encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate in a str
        raise _refusal(obj, "json", exc) from None


def json_text(obj: Any) -> str:
    """obj as compact JSON text with tagged types (``to_json`` before UTF-8)."""
    try:
        text = _encode(obj)
        # A key "__type__" in the output is either a tag we wrote or a user dict to escape;
        # only walk obj (the rare case) when the cheap substring test says it may be the latter.
        if '"__type__":' in text and _has_type_key(obj):
            text = _encode(_escape(obj))
        return text
    except (TypeError, ValueError, RecursionError) as exc:
        raise _refusal(obj, "json", exc) from None


def from_json(data: bytes) -> Any:
    """Load UTF-8 JSON written by ``to_json``; MessageError("undecodable") on anything else."""
    try:
        text = data.decode("utf-8")
        # The tag-restoring hook costs a call per object: run it only when a tag may be present.
        decoder = _TAGGED_DECODER if '"__type__"' in text else _PLAIN_DECODER
        scan: Callable[[str, int], tuple[Any, int]] = decoder.scan_once  # type: ignore[attr-defined]
        try:  # the scanner itself: what decode() adds is for whitespace around the value
            value, end = scan(text, 0)
            if end == len(text):
                return value
        except StopIteration:
            pass
        return decoder.decode(text)  # whitespace, or not JSON: the whole way, and its error
    except _LOAD_ERRORS as exc:
        raise MessageError("undecodable", f"not valid JSON: {exc}") from None


def _msgpack() -> Any:
    """The msgpack module, imported on first use; names the extra when it is missing."""
    try:
        import msgpack
    except ImportError:
        raise MissingExtraError(
            "the msgpack serializer needs msgpack: pip install celeriac[msgpack]"
        ) from None
    return msgpack


def _msgpack_default(obj: Any) -> Any:
    """msgpack's ``default=`` hook: a tagged type as an ExtType, or refuse it."""
    entry = _tag_of(obj)
    if entry is None or entry[0] not in _EXT_CODES:
        raise TypeError(f"cannot serialize an object of type {type(obj).__qualname__}")
    tag, to_text = entry
    return _msgpack().ExtType(_EXT_CODES[tag], to_text(obj).encode("utf-8"))


def _msgpack_ext(code: int, data: bytes) -> Any:
    """msgpack's ``ext_hook``: an ExtType back into its value."""
    tag = _EXT_NAMES.get(code)
    if tag is None:
        raise ValueError(f"unknown msgpack extension type {code}")
    return _FROM_TEXT[tag](data.decode("utf-8"))


def _dump_msgpack(obj: Any) -> bytes:
    """obj as msgpack with tagged types."""
    msgpack = _msgpack()
    try:
        data: bytes = msgpack.packb(obj, default=_msgpack_default, use_bin_type=True)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise _refusal(obj, "msgpack", exc) from None
    return data


def _load_msgpack(data: bytes) -> Any:
    """Load msgpack written by ``_dump_msgpack``."""
    msgpack = _msgpack()
    try:
        return msgpack.unpackb(data, raw=False, ext_hook=_msgpack_ext, strict_map_key=False)
    except Exception as exc:  # untrusted bytes: any failure means "not a message"
        raise MessageError("undecodable", f"not valid msgpack: {exc}") from None


def _dump_pickle(obj: Any) -> bytes:
    """obj as a pickle."""
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # pickle raises whatever the object's reduce raises
        raise SerializationError(f"cannot serialize with pickle: {exc}") from None


def _load_pickle(data: bytes) -> Any:
    """Load a pickle; only reached when the caller accepts pickle."""
    try:
        return pickle.loads(data)
    except Exception as exc:  # untrusted bytes: any failure means "not a message"
        raise MessageError("undecodable", f"not a valid pickle: {exc}") from None


_DUMPERS: dict[str, Callable[[Any], bytes]] = {
    "json": to_json,
    "msgpack": _dump_msgpack,
    "pickle": _dump_pickle,
}
_LOADERS: dict[str, Callable[[bytes], Any]] = {
    "json": from_json,
    "msgpack": _load_msgpack,
    "pickle": _load_pickle,
}


def dumps(obj: Any, serializer: str = "json") -> tuple[str, bytes]:
    """Serialize obj with the named serializer; returns (content type, data)."""
    content_type = CONTENT_TYPES.get(serializer)
    if content_type is None:
        known = ", ".join(CONTENT_TYPES)
        raise SerializationError(f"unknown serializer {serializer!r}; known: {known}")
    return content_type, _DUMPERS[serializer](obj)


def loads(data: bytes, content_type: str, accept: Collection[str]) -> Any:
    """Load data of the given content type, if ``accept`` (names or content types) allows it."""
    return _LOADERS[accepted(content_type, accept)](data)


def accepted(content_type: str, accept: Collection[str]) -> str:
    """The serializer name for content_type; MessageError("content_refused") unless accepted."""
    name = _NAMES.get(content_type) if isinstance(content_type, str) else None
    if name is None:
        raise MessageError("content_refused", f"unknown content type {reprlib.repr(content_type)}")
    if isinstance(accept, str):  # accept="json" means ("json",), not its substrings
        accept = (accept,)
    if name not in accept and content_type not in accept:
        raise MessageError("content_refused", f"{content_type} is not in accept {sorted(accept)}")
    return name


def _refusal(obj: Any, serializer: str, exc: BaseException) -> SerializationError:
    """The error for a value that cannot be serialized, naming its path when it can."""
    found = find_unencodable(obj, "value", serializer)
    return SerializationError(found or f"cannot serialize with {serializer}: {exc}")


def find_unencodable(obj: Any, path: str = "value", serializer: str = "json") -> str | None:
    """Describe the first part of obj the serializer cannot carry, as "path: why", or None."""
    if serializer not in ("json", "msgpack"):
        return None
    try:
        return _find(obj, path, serializer == "msgpack", set())
    except RecursionError:
        return f"{path}: nested too deeply"


def _find(obj: Any, path: str, msgpack: bool, parents: set[int]) -> str | None:
    """The walk behind ``find_unencodable``; parents holds the containers above obj."""
    if obj is None or isinstance(obj, bool):
        return None
    if isinstance(obj, int):
        in_range = not msgpack or -(2**63) <= obj < 2**64
        return None if in_range else f"{path}: int out of msgpack's 64-bit range"
    if isinstance(obj, float):
        return None if msgpack or math.isfinite(obj) else f"{path}: {obj!r} is not allowed"
    if isinstance(obj, str):
        return None if _is_utf8(obj) else f"{path}: str with a lone surrogate cannot be UTF-8"
    if isinstance(obj, dict | list | tuple):
        if id(obj) in parents:
            return f"{path}: circular reference"
        parents.add(id(obj))
        found = _find_in(obj, path, msgpack, parents)
        parents.discard(id(obj))
        return found
    if _tag_of(obj) is not None or (msgpack and isinstance(obj, bytearray | memoryview)):
        return None
    return f"{path}: cannot serialize an object of type {type(obj).__qualname__}"


def _find_in(
    obj: dict[Any, Any] | list[Any] | tuple[Any, ...], path: str, msgpack: bool, parents: set[int]
) -> str | None:
    """``_find`` over the keys and items of one container."""
    if not isinstance(obj, dict):
        items: Any = enumerate(obj)
    else:
        items = obj.items()
        for key in obj:
            if not isinstance(key, _MSGPACK_KEYS if msgpack else _JSON_KEYS):
                return f"{path}: dict key of type {type(key).__qualname__} is not allowed"
    for key, value in items:
        found = _find(value, f"{path}[{reprlib.repr(key)}]", msgpack, parents)
        if found is not None:
            return found
    return None


def _is_utf8(text: str) -> bool:
    """True when text can be encoded as UTF-8 (has no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
