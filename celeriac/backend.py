"""The result store: task states and results kept under keys of a transport.

One key per task, ``celeriac-task-meta-<id>``, holding the serialized meta dict::

    {"task_id", "status", "result", "traceback", "date_done", "name", "worker",
     "retries", "queue", "args", "kwargs"}      # args/kwargs only with result_extended

``date_done`` is ISO 8601 text in UTC, as Celery stores it (``AsyncResult.date_done`` also
reads the tagged datetime that earlier versions stored).

The stored bytes are the serializer's content type, a newline, then the data, so a reader
knows how to decode without trusting anything else. A failure's ``result`` is
``{"exc_type", "exc_message", "exc_module"}``: names only, never anything to import.
"""

from __future__ import annotations

import time
import traceback as tb
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any

from celeriac import states
from celeriac.errors import MessageError, SerializationError, remote_error
from celeriac.serialization import dumps, loads
from celeriac.transports.base import Transport

KEY_PREFIX = "celeriac-task-meta-"


def meta_key(task_id: str) -> str:
    """The key that holds a task's state."""
    return KEY_PREFIX + task_id


def safe_str(exc: BaseException) -> str:
    """``str(exc)``, even for an exception whose ``__str__`` itself raises."""
    try:
        return str(exc)
    except Exception:
        try:
            return repr(exc)
        except Exception:
            return f"<unprintable {type(exc).__name__}>"


def encode_exception(exc: BaseException) -> dict[str, Any]:
    """Describe an exception by its names and message only."""
    cls = type(exc)
    type_name = getattr(exc, "type_name", None) or cls.__qualname__
    return {
        "exc_type": type_name,
        "exc_message": safe_str(exc),
        "exc_module": cls.__module__,
    }


def decode_exception(data: Any, traceback: str | None = None) -> Exception:
    """Turn a stored failure back into an error, without importing what it names."""
    if not isinstance(data, dict):
        return remote_error("Exception", repr(data), traceback)
    module = data.get("exc_module") or ""
    name = str(data.get("exc_type") or "Exception")
    full = name if module in ("", "builtins", "celeriac.errors") else f"{module}.{name}"
    return remote_error(full, str(data.get("exc_message", "")), traceback)


def format_traceback(exc: BaseException) -> str:
    """The traceback text stored with a failure."""
    return "".join(tb.format_exception(type(exc), exc, exc.__traceback__))


class ResultStore:
    """Reads and writes task meta through a transport's keys."""

    def __init__(
        self,
        transport: Transport,
        serializer: str = "json",
        accept: Collection[str] = ("json",),
        expires: float | None = 86400.0,
    ) -> None:
        self.transport = transport
        self.serializer = serializer
        self.accept = tuple(accept)
        self.expires = expires

    def encode(self, meta: dict[str, Any]) -> bytes:
        """Serialize meta with its content type in front."""
        content_type, data = dumps(meta, self.serializer)
        return content_type.encode() + b"\n" + data

    def decode(self, raw: bytes) -> dict[str, Any]:
        """Parse stored meta; refuses content types that are not accepted."""
        content_type, sep, data = raw.partition(b"\n")
        if not sep:
            raise MessageError("undecodable", "stored result has no content type")
        meta = loads(data, content_type.decode("ascii", "replace"), self.accept)
        if not isinstance(meta, dict):
            raise MessageError("bad_shape", "stored result is not a mapping")
        return meta

    def build_meta(
        self,
        task_id: str,
        state: str,
        result: Any,
        traceback: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """The meta dict for a state; exceptions are reduced to their names."""
        if isinstance(result, BaseException):
            result = encode_exception(result)
        meta: dict[str, Any] = {
            "task_id": task_id,
            "status": state,
            "result": result,
            "traceback": traceback,
            "date_done": datetime.now(UTC).isoformat() if state in states.READY_STATES else None,
        }
        meta.update(extra)
        return meta

    def encode_meta(self, meta: dict[str, Any]) -> bytes:
        """Serialize meta; a result the serializer refuses becomes a stored failure."""
        try:
            return self.encode(meta)
        except SerializationError as exc:
            failed = dict(meta)
            failed.update(
                status=states.FAILURE,
                result=encode_exception(exc),
                traceback=format_traceback(exc),
                date_done=datetime.now(UTC).isoformat(),
            )
            return self.encode(failed)

    def store(self, task_id: str, state: str, result: Any, **fields: Any) -> None:
        """Write a task's state now."""
        meta = self.build_meta(task_id, state, result, **fields)
        self.transport.put(meta_key(task_id), self.encode_meta(meta), self.expires)

    def get_meta(self, task_id: str) -> dict[str, Any]:
        """The stored meta, or a PENDING placeholder."""
        raw = self.transport.get(meta_key(task_id))
        if raw is None:
            return {"task_id": task_id, "status": states.PENDING, "result": None}
        return self.decode(raw)

    def wait_ready(
        self,
        task_id: str,
        timeout: float | None,
        interval: float = 0.5,
        on_message: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any] | None:
        """Block until the task is in a ready state; ``None`` after ``timeout``.

        ``on_message`` is called with each stored meta seen that differs from the last one.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.001
        last: bytes | None = None
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            raw = self.transport.wait(meta_key(task_id), left)
            if raw is not None and raw != last:
                last, meta = raw, self.decode(raw)
                if on_message is not None:
                    on_message(meta)
                if meta.get("status") in states.READY_STATES:
                    return meta
            if deadline is not None and time.monotonic() >= deadline:
                return None
            # The key exists but holds an unready state (STARTED, RETRY, progress): the store
            # cannot signal a change of an existing key, so look again shortly.
            time.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 2, max(interval, 0.001))

    def forget(self, task_id: str) -> None:
        """Delete a task's stored state."""
        self.transport.delete(meta_key(task_id))
