"""Every setting in one declarative table, and ``Settings``, the mapping an app reads them from.

Names and defaults are Celery's lower-case ones, except where a row says otherwise (most
visibly ``task_acks_late``, which is on). Each row of ``_Table`` is a ``Setting``: its name,
default, one line of meaning, and the function that checks and coerces a value, so a bad value
fails where it is set, with the setting's name, the value and what was expected.

A read gives, first to last:

1. the environment, for the few settings that name a variable (``CELERIAC_BROKER_URL``,
   ``CELERIAC_RESULT_BACKEND``): deploy-time beats code, as ``CELERY_BROKER_URL`` does in Celery;
2. the value set in code or loaded by ``config_from_object``;
3. the default from the table.

``Settings(environ={})`` ignores the environment (for tests that must not be redirected).
"""

from __future__ import annotations
import __future__

import copy
import difflib
import importlib
import os
import re
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, overload

from celeriac import parse
from celeriac.errors import ConfigurationError, UnknownSettingError

if TYPE_CHECKING:
    from _typeshed import SupportsKeysAndGetItem

T = TypeVar("T")
V = TypeVar("V")

DEFAULT_BROKER_URL = "sqlite:///celeriac.sqlite3"
DEFAULT_LEASE_TIMEOUT = 30.0
DEFAULT_MAX_DELIVERIES = 3
_BROKER_DEFAULTS = {
    "lease_timeout": DEFAULT_LEASE_TIMEOUT, "max_deliveries": DEFAULT_MAX_DELIVERIES,
}  # fmt: skip

# -- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Setting(Generic[T]):
    """One row of the table: name, default, one line of meaning, and how to read a value.

    A row is also a descriptor, so ``conf.broker_url`` is typed by its row.
    """

    name: str
    default: T
    doc: str
    parse: Callable[[Any], T]
    env: str | None = None

    def coerce(self, value: Any, source: str = "") -> T:
        """The value to store, or ConfigurationError naming the setting, value and expectation."""
        try:
            return self.parse(value)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"invalid value for setting {self.name!r}{source}: {value!r}; expected {exc}"
            ) from None

    def __set_name__(self, owner: type, attribute: str) -> None:
        if attribute != self.name:
            raise TypeError(f"setting {self.name!r} is declared as {attribute!r}")

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> Setting[T]: ...
    @overload
    def __get__(self, instance: Settings, owner: type | None = None) -> T: ...
    def __get__(self, instance: Settings | None, owner: type | None = None) -> T | Setting[T]:
        if instance is None:
            return self
        try:  # read on every task by the worker: the value kept since the last change
            return instance._kept[self.name]  # type: ignore[no-any-return]
        except KeyError:
            return instance._read(self)

    def __set__(self, instance: Settings, value: Any) -> None:
        instance[self.name] = value

    def __delete__(self, instance: Settings) -> None:
        del instance[self.name]


_LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s]"


class _Table:
    """Every setting celeriac has; ``Settings`` inherits the rows as typed attributes."""

    __slots__ = ()

    # -- broker
    broker_url: Setting[str | None] = Setting(
        "broker_url", None, f"Where tasks are sent; None means {DEFAULT_BROKER_URL!r}.",
        parse.optional(parse.url), env="CELERIAC_BROKER_URL")
    broker_transport_options: Setting[dict[str, Any]] = Setting(
        "broker_transport_options",
        _BROKER_DEFAULTS,
        "Broker options: lease_timeout (seconds), max_deliveries, and engine-specific keys.",
        parse.broker_options(_BROKER_DEFAULTS))
    broker_connection_retry = Setting(
        "broker_connection_retry", True, "Reconnect when the broker connection is lost.",
        parse.boolean)
    broker_connection_retry_on_startup = Setting(
        "broker_connection_retry_on_startup", True,
        "Retry the first broker connection instead of failing at startup.", parse.boolean)
    broker_connection_max_retries: Setting[int | None] = Setting(
        "broker_connection_max_retries", 100,
        "Reconnect attempts before giving up; None or 0 retries forever.",
        parse.optional(parse.integer(0)))
    # -- results
    result_backend: Setting[str | None] = Setting(
        "result_backend", None, "Where results are stored; None means the broker's own store.",
        parse.optional(parse.text), env="CELERIAC_RESULT_BACKEND")
    result_backend_transport_options: Setting[dict[str, Any]] = Setting(
        "result_backend_transport_options", {}, "Engine-specific options for the result store.",
        parse.mapping)
    result_serializer = Setting(
        "result_serializer", "json", "Serializer for stored results.", parse.text)
    result_accept_content: Setting[list[str] | None] = Setting(
        "result_accept_content", None,
        "Serializers a client accepts in results; None means accept_content.",
        parse.optional(parse.str_list))
    result_expires: Setting[float | None] = Setting(
        "result_expires", 86400.0, "Seconds a stored result is kept; None keeps it forever.",
        parse.optional(parse.seconds()))
    result_extended = Setting(
        "result_extended", False,
        "Store the task's name, args, kwargs, worker, retries and queue with its result.",
        parse.boolean)
    result_chord_join_timeout = Setting(
        "result_chord_join_timeout", 3.0, "Seconds a chord waits to join its header's results.",
        parse.seconds())
    # -- tasks
    task_serializer = Setting("task_serializer", "json", "Serializer for task messages.",
        parse.text)
    accept_content: Setting[list[str]] = Setting(
        "accept_content", ["json"],
        "Serializers a worker accepts; pickle is refused unless listed.", parse.str_list)
    task_default_queue = Setting(
        "task_default_queue", "celeriac", "Queue for tasks that name none and match no route.",
        parse.text)
    task_default_priority = Setting(
        "task_default_priority", 0, "Priority (0-9) of tasks that set none.", parse.integer(0, 9))
    task_routes: Setting[Any] = Setting(
        "task_routes", None, "Where tasks go: a dict, a list of routers, or a callable.",
        parse.routes)
    task_create_missing_queues = Setting(
        "task_create_missing_queues", True,
        "Create a queue on first use instead of refusing tasks routed to it.", parse.boolean)
    task_acks_late = Setting(
        "task_acks_late", True,
        "Acknowledge after the task finishes, so a crash runs it again (Celery: before).",
        parse.boolean)
    task_acks_on_failure_or_timeout = Setting(
        "task_acks_on_failure_or_timeout", True,
        "With late acks, acknowledge tasks that failed or timed out too.", parse.boolean)
    task_reject_on_worker_lost = Setting(
        "task_reject_on_worker_lost", False,
        "Give a task back to the broker when its worker process dies, instead of failing it.",
        parse.boolean)
    task_time_limit: Setting[float | None] = Setting(
        "task_time_limit", None, "Hard limit in seconds: the process running the task is killed.",
        parse.optional(parse.seconds()))
    task_soft_time_limit: Setting[float | None] = Setting(
        "task_soft_time_limit", None,
        "Soft limit in seconds: SoftTimeLimitExceeded is raised inside the task.",
        parse.optional(parse.seconds()))
    task_ignore_result = Setting(
        "task_ignore_result", False, "Store no result for tasks that do not say otherwise.",
        parse.boolean)
    task_store_errors_even_if_ignored = Setting(
        "task_store_errors_even_if_ignored", False,
        "Store failures even for tasks that ignore their results.", parse.boolean)
    task_track_started = Setting(
        "task_track_started", False, "Record the STARTED state when a worker begins a task.",
        parse.boolean)
    task_always_eager = Setting(
        "task_always_eager", False,
        "Run tasks at once in the calling process instead of sending them.", parse.boolean)
    task_eager_propagates = Setting(
        "task_eager_propagates", False, "Eager tasks raise their exceptions to the caller.",
        parse.boolean)
    task_default_rate_limit: Setting[Any] = Setting(
        "task_default_rate_limit", None,
        "Rate limit for tasks that set none: '10/s', '100/m', '1000/h' or tasks per second.",
        parse.rate_limit)
    task_default_rate_limit_scope = Setting(
        "task_default_rate_limit_scope", "cluster",
        "Rate limits hold for all workers together ('cluster') or for each one ('worker').",
        parse.choice("cluster", "worker"))
    task_annotations: Setting[Any] = Setting(
        "task_annotations", None, "Task attributes to override, by task name.",
        parse.task_annotations)
    task_publish_retry = Setting(
        "task_publish_retry", True, "Retry sending a task when the broker connection fails.",
        parse.boolean)
    task_send_sent_event = Setting(
        "task_send_sent_event", False, "Send a task-sent event when a task is published.",
        parse.boolean)
    control_signing_key: Setting[str | None] = Setting(
        "control_signing_key", None,
        "Secret that signs remote control (HMAC-SHA256); workers then refuse unsigned commands.",
        parse.optional(parse.text), env="CELERIAC_CONTROL_KEY")
    # -- worker
    worker_concurrency: Setting[int | None] = Setting(
        "worker_concurrency", None, "Pool processes or threads; None means the number of CPUs.",
        parse.optional(parse.integer(1)))
    worker_pool = Setting(
        "worker_pool", "prefork", "How tasks run: prefork, threads, solo or asyncio.",
        parse.choice("prefork", "threads", "solo", "asyncio"))
    worker_prefetch_multiplier = Setting(
        "worker_prefetch_multiplier", 4,
        "Messages held ahead per pool slot; 0 disables prefetch.", parse.integer(0))
    worker_max_tasks_per_child: Setting[int | None] = Setting(
        "worker_max_tasks_per_child", None, "Replace a pool process after this many tasks.",
        parse.optional(parse.integer(1)))
    worker_max_memory_per_child: Setting[int | None] = Setting(
        "worker_max_memory_per_child", None,
        "Replace a pool process whose resident memory passes this many KiB.",
        parse.optional(parse.integer(1)))
    worker_send_task_events = Setting(
        "worker_send_task_events", False, "Send task events for monitors (worker -E).",
        parse.boolean)
    event_history_length = Setting(
        "event_history_length", 100,
        "Recent event batches the broker keeps for monitors started later; 0 keeps none.",
        parse.integer(0))
    event_history_age = Setting(
        "event_history_age", 3600.0, "Seconds the broker keeps a batch of recent events.",
        parse.seconds())
    worker_shutdown_timeout = Setting(
        "worker_shutdown_timeout", 30.0, "Seconds running tasks get to finish after SIGTERM.",
        parse.seconds(zero=True))
    worker_hijack_root_logger = Setting(
        "worker_hijack_root_logger", True, "Let the worker replace the root logger's handlers.",
        parse.boolean)
    worker_redirect_stdouts = Setting(
        "worker_redirect_stdouts", True, "Send what tasks print to the log.", parse.boolean)
    worker_redirect_stdouts_level = Setting(
        "worker_redirect_stdouts_level", "WARNING", "Log level of what tasks print.",
        parse.log_level)
    worker_log_format = Setting(
        "worker_log_format", f"{_LOG_FORMAT} %(message)s", "Format of worker log lines.",
        parse.text)
    worker_task_log_format = Setting(
        "worker_task_log_format", f"{_LOG_FORMAT} %(task_name)s[%(task_id)s]: %(message)s",
        "Format of log lines written by tasks.", parse.text)
    # -- time, modules, beat
    timezone = Setting(
        "timezone", "UTC", "Time zone (IANA name) for schedules and displayed times.",
        parse.timezone)
    enable_utc = Setting("enable_utc", True, "Keep dates in messages in UTC.", parse.boolean)
    imports: Setting[list[str]] = Setting(
        "imports", [], "Modules a worker imports at startup to register tasks.", parse.str_list)
    include: Setting[list[str]] = Setting(
        "include", [], "More modules to import at startup, after imports.", parse.str_list)
    beat_schedule: Setting[dict[str, Any]] = Setting(
        "beat_schedule", {}, "Periodic tasks: name -> {'task', 'schedule', 'args', ...}.",
        parse.beat_schedule)
    beat_max_loop_interval = Setting(
        "beat_max_loop_interval", 300.0, "Most seconds beat sleeps between schedule checks.",
        parse.seconds())


SETTINGS: dict[str, Setting[Any]] = {
    name: row for name, row in vars(_Table).items() if isinstance(row, Setting)
}


def lookup(name: str) -> Setting[Any]:
    """The row for a setting name, or UnknownSettingError suggesting the closest name."""
    row = SETTINGS.get(name) if isinstance(name, str) else None
    if row is None:
        raise UnknownSettingError(_unknown_message(name))
    return row


def _unknown_message(name: object, prefix: str = "") -> str:
    """'unknown setting ...' with the closest real name, spelled the way the user spells."""
    key = name[len(prefix):] if isinstance(name, str) else ""
    close = difflib.get_close_matches(key.lower(), SETTINGS, n=1)
    if not close:
        return f"unknown setting {name!r}"
    suggestion = close[0].upper() if prefix and key.isupper() else close[0]
    return f"unknown setting {name!r}; did you mean {prefix + suggestion!r}?"


class _UnknownSettingAttribute(UnknownSettingError, AttributeError):
    """An unknown setting read or written as an attribute (so hasattr() and getattr() work)."""


# -- the mapping --------------------------------------------------------------------------------


class Settings(_Table, MutableMapping[str, Any]):
    """An app's settings: values set in code over the table's defaults, all validated.

    ``conf.task_acks_late = False`` and ``conf["task_acks_late"] = False`` are the same;
    iteration yields every setting name. ``CELERIAC_BROKER_URL`` and ``CELERIAC_RESULT_BACKEND``
    in the environment win over values set in code (deploy-time beats code); pass ``environ``
    to read another mapping than ``os.environ``, or ``{}`` to ignore it.
    """

    __slots__ = ("_environ", "_explicit", "_generation", "_kept", "_own_defaults")

    def __init__(
        self,
        values: SupportsKeysAndGetItem[str, Any] | Iterable[tuple[str, Any]] = (),
        /,
        *,
        environ: Mapping[str, str] | None = None,
        **settings: Any,
    ) -> None:
        self._environ = environ
        self._explicit: dict[str, Any] = {}
        self._generation = 0
        self._own_defaults: dict[str, Any] = {}
        #: values read since the last change, by name (never those the environment can set)
        self._kept: dict[str, Any] = {}
        self.update(values, **settings)

    # -- reading and writing

    def _read(self, setting: Setting[T]) -> T:
        """The value in force: environment override, else the value set, else the default."""
        if setting.env:
            raw = (os.environ if self._environ is None else self._environ).get(setting.env)
            if raw:
                return setting.coerce(raw, f" (from environment variable {setting.env})")
            return self._value(setting)  # the environment may change: never kept
        value = self._kept[setting.name] = self._value(setting)
        return value

    def _value(self, setting: Setting[T]) -> T:
        """The value set, else the default."""
        if setting.name in self._explicit:
            return cast(T, self._explicit[setting.name])
        if isinstance(setting.default, list | dict):
            # A copy per Settings, so conf.beat_schedule[...] = ... changes this app only.
            if setting.name not in self._own_defaults:
                self._own_defaults[setting.name] = copy.deepcopy(setting.default)
            return cast(T, self._own_defaults[setting.name])
        return setting.default

    def _changed(self) -> None:
        """A value was set or forgotten: a new generation, and nothing kept."""
        self._generation += 1
        self._kept.clear()

    def __getitem__(self, name: str) -> Any:
        return self._read(lookup(name))

    def __setitem__(self, name: str, value: Any) -> None:
        self._explicit[name] = lookup(name).coerce(value)
        self._changed()

    def __delitem__(self, name: str) -> None:
        """Forget the value set for name, so the default shows again."""
        lookup(name)
        self._explicit.pop(name, None)
        self._own_defaults.pop(name, None)
        self._changed()

    def __iter__(self) -> Iterator[str]:
        return iter(SETTINGS)

    def __len__(self) -> int:
        return len(SETTINGS)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in SETTINGS

    def update(
        self,
        other: SupportsKeysAndGetItem[str, Any] | Iterable[tuple[str, Any]] = (),
        /,
        **settings: Any,
    ) -> None:
        """Set several values at once; if any is unknown or invalid, none is set."""
        pairs = dict(other)
        pairs.update(settings)
        self._set_all((lookup(name), value, "") for name, value in pairs.items())

    def clear(self) -> None:
        """Forget every value set, back to defaults (the environment still applies)."""
        self._explicit.clear()
        self._own_defaults.clear()
        self._changed()

    def popitem(self) -> tuple[str, Any]:
        """Forget one value set and return it; KeyError when none is set."""
        self._changed()
        return self._explicit.popitem()

    def _set_all(self, rows: Iterable[tuple[Setting[Any], Any, str]]) -> None:
        """Validate every value first, then store them all."""
        parsed = {row.name: row.coerce(value, source) for row, value, source in rows}
        self._explicit.update(parsed)
        self._changed()

    if not TYPE_CHECKING:  # hidden from mypy, so that a misspelt attribute is a type error

        def __getattr__(self, name: str) -> Any:
            if name.startswith("_"):
                raise AttributeError(name)
            raise _UnknownSettingAttribute(_unknown_message(name))

        def __setattr__(self, name: str, value: Any) -> None:
            if not name.startswith("_") and name not in SETTINGS:
                raise _UnknownSettingAttribute(_unknown_message(name))
            object.__setattr__(self, name, value)

    @property
    def generation(self) -> int:
        """A number that changes whenever a value is set or forgotten (not when a dict or list
        value is changed in place): what is derived from settings and kept keeps this with it."""
        return self._generation

    # -- what is set

    @property
    def changes(self) -> dict[str, Any]:
        """The values set in code or by config_from_object (not defaults, not the environment)."""
        mutated = {
            name: value for name, value in self._own_defaults.items()
            if value != SETTINGS[name].default
        }
        return {**mutated, **self._explicit}

    def table(
        self, *, with_defaults: bool = True, censored: bool = True
    ) -> list[tuple[str, Any, str]]:
        """Rows of (name, value in force, meaning); passwords masked unless censored=False."""
        rows = []
        for name, row in SETTINGS.items():
            value = self._read(row)
            if with_defaults or value != row.default:
                rows.append((name, _censor({name: value})[name] if censored else value, row.doc))
        return rows

    def humanize(self, *, with_defaults: bool = False, censored: bool = True) -> str:
        """'name: value' lines for the settings that differ from their defaults (or all)."""
        rows = self.table(with_defaults=with_defaults, censored=censored)
        return "\n".join(f"{name}: {value!r}" for name, value, _ in rows)

    def __repr__(self) -> str:
        return f"<Settings {_censor(self.changes)!r}>"

    # -- loading

    def config_from_object(
        self, obj: Any, *, namespace: str | None = None, silent: bool = False
    ) -> bool:
        """Load settings from a dict, an object, a module, "pkg.module" or "module:attribute".

        With ``namespace="CELERIAC"`` only ``CELERIAC_*`` names are read (``CELERIAC_BROKER_URL``
        sets ``broker_url``); without it, public lower-case names are read, and one that is not a
        setting (nor a module, class or function) is an error, to catch typos. ``silent=True``
        returns False instead of raising when the module cannot be imported.
        """
        try:
            source = _resolve(obj) if isinstance(obj, str) else obj
        except ConfigurationError:
            if silent:
                return False
            raise
        self._set_all(_collect(source, namespace))
        return True

    def config_from_envvar(
        self, variable: str, *, namespace: str | None = None, silent: bool = False
    ) -> bool:
        """Load settings from the module (or "module:attribute") an environment variable names."""
        path = (os.environ if self._environ is None else self._environ).get(variable)
        if not path:
            if silent:
                return False
            raise ConfigurationError(
                f"environment variable {variable} is not set; it should name a configuration "
                "module such as 'proj.celeriacconfig'"
            )
        return self.config_from_object(path, namespace=namespace, silent=silent)


def _resolve(path: str) -> Any:
    """Import "pkg.module", or "module:attribute" and get the attribute."""
    module_name, _, attribute = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except (ImportError, ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"cannot import configuration module {module_name!r}: {exc}"
        ) from exc
    for part in filter(None, attribute.split(".")):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise ConfigurationError(
                f"configuration {path!r}: {module_name!r} has no attribute {attribute!r}"
            ) from exc
    return target


_FUTURE_FEATURE = type(__future__.annotations)


def _collect(source: Any, namespace: str | None) -> list[tuple[Setting[Any], Any, str]]:
    """(row, value, where it came from) for every setting that source defines."""
    is_mapping = isinstance(source, Mapping)
    names = list(source) if is_mapping else dir(source)

    def value_of(name: str) -> Any:
        return source[name] if is_mapping else getattr(source, name)

    if namespace:
        return _collect_namespaced(names, value_of, f"{namespace}_")
    rows = []
    for name in names:
        if not isinstance(name, str):
            raise ConfigurationError(f"setting names must be strings, not {name!r}")
        if name.startswith("_") or name != name.lower():
            continue
        value = value_of(name)
        if name in SETTINGS:
            rows.append((SETTINGS[name], value, ""))
        elif is_mapping or not _is_plumbing(value):
            message = _unknown_message(name)
            hint = "" if is_mapping else " (start a helper's name with '_' to keep it out)"
            raise UnknownSettingError(message + hint)
    return rows


def _collect_namespaced(
    names: Iterable[Any], value_of: Callable[[str], Any], prefix: str
) -> list[tuple[Setting[Any], Any, str]]:
    """Rows for the names that start with prefix, such as CELERIAC_BROKER_URL."""
    rows = []
    for name in names:
        if not (isinstance(name, str) and name.startswith(prefix)):
            continue
        key = name[len(prefix):]
        if key.lower() not in SETTINGS:
            raise UnknownSettingError(_unknown_message(name, prefix))
        rows.append((SETTINGS[key.lower()], value_of(name), f" (given as {name})"))
    return rows


def _is_plumbing(value: Any) -> bool:
    """True for what a config module holds besides settings: imports, classes, functions."""
    return isinstance(value, (types.ModuleType, type, _FUTURE_FEATURE)) or callable(value)


_URL_PASSWORD = re.compile(r"(://[^:/@;\s]*:)[^@;\s]+@")
_SECRET_KEY = re.compile(r"pass|secret|token|signature|signing|api_?key", re.IGNORECASE)


def _censor(value: Any) -> Any:
    """value with passwords in URLs, and under secret-looking keys, masked."""
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1********@", value)
    if isinstance(value, Mapping):
        return {
            key: "********" if isinstance(key, str) and _SECRET_KEY.search(key) else _censor(item)
            for key, item in value.items()
        }
    return value
