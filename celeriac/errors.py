"""Every error celeriac raises, under one root.

    CeleriacError
    ├── ConfigurationError        a setting or an app that cannot be used
    │   ├── UnknownSettingError   a setting name that does not exist (suggests the closest one)
    │   ├── ScheduleError         a periodic-task entry that cannot be scheduled (names the entry)
    │   └── LimitError            a rate limit, concurrency limit or unique option that is wrong
    ├── TransportError            a broker URL or a broker that cannot be used
    │   └── MissingExtraError     an optional dependency is not installed
    ├── MessageError              bytes that are not a valid task message (has a reason code)
    ├── SerializationError        arguments or results that cannot be serialized
    ├── NotRegistered             a task name that no task answers to
    ├── TimeoutError              AsyncResult.get() waited longer than its timeout
    ├── TaskError                 a task failed; raised on the client by AsyncResult.get()
    │   └── (built on the fly)    "RemoteValueError" etc., also subclassing the builtin type
    ├── TaskRevokedError          the task was revoked or expired before it ran
    ├── SoftTimeLimitExceeded     raised inside a task at its soft time limit
    ├── TimeLimitExceeded         recorded for a task stopped at its hard time limit
    ├── WorkerLostError           the process that ran a task died
    ├── ChordError                a chord's header task failed: the body does not run
    ├── ConcurrencyKeyError       a task's concurrency_key function raised or gave no usable key
    ├── MaxRetriesExceededError   Task.retry() with no retries left and no exception to raise
    └── (control flow, raised by tasks, caught by the worker)
        ├── Retry                 self.retry(): run the task again later
        ├── Reject                drop the message (or dead-letter it) without a result
        └── Ignore                leave the state as the task set it; store nothing
"""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any


class CeleriacError(Exception):
    """The root of every celeriac error."""


class ConfigurationError(CeleriacError):
    """A setting, an app path or a combination of options that cannot be used."""


class UnknownSettingError(ConfigurationError, KeyError):
    """A setting name that celeriac does not know."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown setting"


class ScheduleError(ConfigurationError):
    """Entries of the beat schedule that cannot run: each problem names its entry."""


class LimitError(ConfigurationError, ValueError):
    """A rate limit, concurrency limit or unique-task option that cannot be used."""


class TransportError(CeleriacError):
    """A broker URL that cannot be used, or a broker that failed."""


class MissingExtraError(TransportError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


class MessageError(CeleriacError):
    """Bytes that are not a valid task message.

    ``reason`` is a short machine-readable code (``undecodable``, ``bad_shape``,
    ``unknown_task``, ``content_refused``, ...) stored with the dead-lettered message.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SerializationError(CeleriacError, TypeError):
    """Arguments or a result that the chosen serializer cannot encode."""


class NotRegistered(CeleriacError, KeyError):
    """No task is registered under this name."""

    def __str__(self) -> str:
        return f"task not registered: {self.args[0]!r}" if self.args else "task not registered"


class TimeoutError(CeleriacError, builtins.TimeoutError):
    """The operation did not finish within its timeout."""


class TaskError(CeleriacError):
    """A task failed on a worker.

    The client never imports anything named in the result store: the remote exception comes
    back as this type, carrying its type name, message and traceback text. When the remote
    type is a builtin exception, the raised class also subclasses it, so ``except ValueError``
    works as it would in-process.
    """

    def __init__(self, type_name: str, message: str, traceback: str | None = None) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.message = message
        self.remote_traceback = traceback

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}" if self.message else self.type_name

    def __reduce__(self) -> tuple[Any, ...]:
        return (remote_error, (self.type_name, self.message, self.remote_traceback))


_remote_classes: dict[str, type[TaskError]] = {}


def remote_error(type_name: str, message: str, traceback: str | None = None) -> TaskError:
    """Build the error that stands for a remote exception, without importing anything."""
    if "." in type_name:  # defined in some module: never imported, so a plain TaskError
        return TaskError(type_name, message, traceback)
    cls = _remote_classes.get(type_name)
    if cls is None:
        builtin = getattr(builtins, type_name, None)
        cls = TaskError
        if isinstance(builtin, type) and _simple_builtin(builtin):
            cls = type(f"Remote{type_name}", (TaskError, builtin), {"__module__": __name__})
        _remote_classes[type_name] = cls
    return cls(type_name, message, traceback)


def _simple_builtin(candidate: object) -> bool:
    """True for builtin exception types that can be mixed into TaskError."""
    if not (isinstance(candidate, type) and issubclass(candidate, Exception)):
        return False
    if candidate.__module__ != "builtins":
        return False
    # Types with their own C layout (OSError, UnicodeError...) cannot share a base.
    try:
        type("_Probe", (TaskError, candidate), {})
    except TypeError:
        return False
    return True


class TaskRevokedError(CeleriacError):
    """The task was revoked, or expired before a worker started it."""


class SoftTimeLimitExceeded(CeleriacError):
    """Raised inside a running task when it reaches its soft time limit."""


class TimeLimitExceeded(CeleriacError):
    """The task was stopped at its hard time limit."""


class WorkerLostError(CeleriacError):
    """The process that ran the task died before it finished."""


class ChordError(CeleriacError):
    """A task in a chord's header failed, so the chord's body does not run."""


class ConcurrencyKeyError(CeleriacError):
    """A task's ``concurrency_key`` function raised, or returned something that is not a key."""


class Retry(CeleriacError):
    """Raised by ``Task.retry()``: the worker schedules the task to run again."""

    def __init__(
        self,
        message: str | None = None,
        exc: BaseException | None = None,
        when: float | datetime | None = None,
    ) -> None:
        super().__init__(message or (f"Retry in {when}s" if when is not None else "Retry"))
        self.exc = exc
        self.when = when
        #: the message to publish for the next attempt (set by ``Task.retry``)
        self.message: Any = None


class MaxRetriesExceededError(CeleriacError):
    """``Task.retry()`` was called after the task used up its ``max_retries``."""


class Reject(CeleriacError):
    """Raised by a task to refuse its message; ``requeue=False`` dead-letters it."""

    def __init__(self, reason: str = "rejected", requeue: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.requeue = requeue


class Ignore(CeleriacError):
    """Raised by a task so that the worker stores no result for it."""
