"""Periodic entries: what a scheduler sends and when, and the stores entries come from.

An entry is Celery's ``beat_schedule`` item, a name and a dict::

    "cleanup": {"task": "proj.tasks.cleanup", "schedule": crontab(hour=2, minute=0),
                "args": (), "kwargs": {}, "options": {"queue": "maintenance"},
                "missed": "run_once"}

``missed`` says what to do about runs that fell due while no scheduler was alive: send one
run on recovery (``"run_once"``, the default) or none (``"skip"``).

A store is anything with ``entries()`` (name -> entry dict) and ``refresh_interval`` (how
stale the answer may get). A scheduler reads its stores at every pass, so ``entries()`` must
be cheap. ``ConfigStore`` reads ``app.conf.beat_schedule`` (where ``add_periodic_task`` puts
its entries); ``BrokerStore`` keeps entries in the broker, so that any process can add, change
or remove one and every running scheduler picks the change up without a restart.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from celeriac.errors import ScheduleError, TimeoutError
from celeriac.routing import CALL_OPTIONS
from celeriac.schedules import Schedule, as_schedule
from celeriac.transports.base import Transport

if TYPE_CHECKING:
    from celeriac.app import Celeriac

MISSED_POLICIES = ("run_once", "skip")
ENTRY_KEYS = ("task", "schedule", "args", "kwargs", "options", "missed")
#: Key prefix of everything the scheduler keeps in the broker.
KEY_PREFIX = "celeriac-beat"


@dataclass(frozen=True)
class Entry:
    """One periodic task, checked: every field is what the scheduler will use."""

    name: str
    task: str
    schedule: Schedule
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    missed: str = "run_once"


def parse_entry(name: str, spec: Mapping[str, Any]) -> Entry:
    """An Entry from Celery's dict form; ScheduleError naming the entry if it is malformed."""
    try:
        return _parse(name, spec)
    except (TypeError, ValueError) as exc:
        raise ScheduleError(f"beat entry {name!r}: {exc}") from None


def _parse(name: str, spec: Mapping[str, Any]) -> Entry:
    if not isinstance(name, str) or not name:
        raise ValueError("an entry name must be a non-empty string")
    if not isinstance(spec, Mapping):
        raise TypeError(f"expected a dict with 'task' and 'schedule', not {spec!r}")
    unknown = sorted(set(spec) - set(ENTRY_KEYS))
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(ENTRY_KEYS)}"
        )
    task = spec.get("task")
    if not isinstance(task, str) or not task:
        raise ValueError(f"'task' must be a task name, not {task!r}")
    if "schedule" not in spec:
        raise ValueError("'schedule' is missing")
    args, kwargs, options = spec.get("args") or (), spec.get("kwargs") or {}, spec.get("options")
    if isinstance(args, str | bytes | Mapping) or not isinstance(args, list | tuple):
        raise TypeError(f"'args' must be a list or tuple, not {args!r}")
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise TypeError(f"'kwargs' must be a dict with str keys, not {kwargs!r}")
    options = _check_options(options)
    missed = spec.get("missed", "run_once")
    if missed not in MISSED_POLICIES:
        raise ValueError(f"'missed' must be one of {', '.join(MISSED_POLICIES)}, not {missed!r}")
    return Entry(
        name, task, as_schedule(spec["schedule"]), tuple(args), dict(kwargs), options, missed
    )


def _check_options(options: Any) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"'options' must be a dict, not {options!r}")
    unknown = sorted(set(options) - CALL_OPTIONS)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} in 'options'")
    return dict(options)


def periodic_entry(
    schedule: Any,
    sig: Any,
    args: Any = (),
    kwargs: Mapping[str, Any] | None = None,
    name: str | None = None,
    options: Mapping[str, Any] | None = None,
    missed: str = "run_once",
) -> tuple[str, dict[str, Any]]:
    """``(name, entry dict)`` for ``app.add_periodic_task``: ``sig`` is a task, a task name
    or a signature (a dict with ``task``, ``args``, ``kwargs``, ``options``)."""
    task, sig_args, sig_kwargs, sig_options = _call_of(sig)
    call_args = tuple(args or ()) or sig_args
    call_kwargs = {**sig_kwargs, **(kwargs or {})}
    if name is None:
        shown = [repr(a) for a in call_args] + [f"{k}={v!r}" for k, v in call_kwargs.items()]
        name = f"{task}({', '.join(shown)})"
    entry = {
        "task": task, "schedule": schedule, "args": call_args, "kwargs": call_kwargs,
        "options": {**sig_options, **(options or {})}, "missed": missed,
    }  # fmt: skip
    parse_entry(name, entry)
    return name, entry


def _call_of(sig: Any) -> tuple[str, tuple[Any, ...], dict[str, Any], dict[str, Any]]:
    if isinstance(sig, str) and sig:
        return sig, (), {}, {}
    if isinstance(sig, Mapping) and isinstance(sig.get("task"), str):
        options = dict(sig.get("options") or {})
        return sig["task"], tuple(sig.get("args") or ()), dict(sig.get("kwargs") or {}), options
    task_name = getattr(sig, "name", None)
    if isinstance(task_name, str) and task_name:
        args = tuple(getattr(sig, "args", None) or ())
        kwargs = dict(getattr(sig, "kwargs", None) or {})
        return task_name, args, kwargs, dict(getattr(sig, "options", None) or {})
    raise TypeError(f"add_periodic_task needs a task, a task name or a signature, not {sig!r}")


# -- stores -------------------------------------------------------------------------------


class ScheduleStore(Protocol):
    """Where a scheduler reads entries; read at every pass, so ``entries()`` must be cheap."""

    #: Seconds the scheduler may go without reading the store again (``math.inf``: only
    #: when something is due).
    refresh_interval: float

    def entries(self) -> Mapping[str, Mapping[str, Any]]:
        """Entry name -> entry dict (Celery's ``beat_schedule`` form)."""
        ...


class ConfigStore:
    """The entries of ``app.conf.beat_schedule``, including ``add_periodic_task``'s."""

    refresh_interval = math.inf

    def __init__(self, app: Celeriac) -> None:
        self.app = app

    def entries(self) -> Mapping[str, Mapping[str, Any]]:
        return dict(self.app.conf.beat_schedule)


class BrokerStore:
    """Entries kept in the broker under one key; schedulers see changes within
    ``refresh_interval`` seconds. Writes take a short lock, so concurrent edits never lose
    each other; entries are stored as JSON, so args, kwargs and options must be JSON data."""

    def __init__(
        self, app: Celeriac | Transport, name: str = "default", refresh_interval: float = 5.0
    ) -> None:
        self._source = app
        self.key = f"{KEY_PREFIX}:store:{name}"
        self.refresh_interval = refresh_interval

    @property
    def transport(self) -> Transport:
        source = self._source
        return source if isinstance(source, Transport) else source.broker

    def entries(self) -> dict[str, dict[str, Any]]:
        raw = self.transport.get(self.key)
        if raw is None:
            return {}
        entries: dict[str, dict[str, Any]] = json.loads(raw)
        return entries

    def set(
        self,
        name: str,
        task: str,
        schedule: Any,
        args: Any = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        missed: str = "run_once",
    ) -> None:
        """Add an entry, or replace the entry of that name."""
        spec = {
            "task": task,
            "schedule": schedule,
            "args": list(args),
            "kwargs": kwargs or {},
            "options": options or {},
            "missed": missed,
        }
        entry = parse_entry(name, spec)
        spec["schedule"] = entry.schedule.to_spec()
        try:
            json.dumps(spec)
        except (TypeError, ValueError) as exc:
            raise ScheduleError(f"beat entry {name!r}: cannot store it as JSON: {exc}") from None
        with self._locked():
            entries = self.entries()
            entries[name] = spec
            self._write(entries)

    def remove(self, name: str) -> bool:
        """Remove an entry; False if there was none of that name."""
        with self._locked():
            entries = self.entries()
            if entries.pop(name, None) is None:
                return False
            self._write(entries)
            return True

    def _write(self, entries: dict[str, Any]) -> None:
        self.transport.put(self.key, json.dumps(entries, sort_keys=True).encode())

    @contextlib.contextmanager
    def _locked(self, timeout: float = 10.0) -> Iterator[None]:
        """Hold the store's write lock (a key that expires, in case its holder dies)."""
        lock, transport = f"{self.key}:lock", self.transport
        deadline = time.monotonic() + timeout
        # Only try when the lock looks free, so waiting never extends a dead holder's lock.
        while transport.get(lock) is not None or transport.incr(lock, ttl=timeout) != 1:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the schedule store {self.key!r} stayed locked {timeout}s")
            time.sleep(0.01)
        try:
            yield
        finally:
            transport.delete(lock)
