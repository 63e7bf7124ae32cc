"""Celeriac, the app: configuration, the task registry, and sending tasks.

Nothing connects at import time: the broker and the result store open on first use, once per
process, and again after a fork.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar, overload

from celeriac import pid, signals
from celeriac.backend import ResultStore
from celeriac.config import DEFAULT_BROKER_URL, Settings
from celeriac.errors import ConfigurationError, LimitError, NotRegistered
from celeriac.limits import check_task_limits, check_unique, concurrency_key
from celeriac.message import Message, encode
from celeriac.plain import Batch, PlainCalls
from celeriac.routing import build_message_fields, check_call_arguments, route_queue
from celeriac.task import TASK_OPTIONS, Task, current_request
from celeriac.transports import Transport, open_transport

if TYPE_CHECKING:
    from celeriac.control import Control
    from celeriac.result import AsyncResult

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger(__name__)


class Celeriac:
    """An application: settings, registered tasks, and the way to the broker."""

    def __init__(
        self,
        main: str | None = None,
        broker: str | None = None,
        backend: str | None = None,
        include: Iterable[str] | None = None,
        *,
        set_as_current: bool = True,
        **settings: Any,
    ) -> None:
        self.main = main
        self.conf = Settings()
        if settings:
            self.conf.update(settings)
        if broker is not None:
            self.conf.broker_url = broker
        if backend is not None:
            self.conf.result_backend = backend
        if include is not None:
            self.conf.include = list(include)
        self.tasks: dict[str, Task[Any, Any]] = {}
        self._autodiscover: list[tuple[Callable[[], Iterable[str]] | Iterable[str], str]] = []
        self._finalized = False
        self._lock = threading.RLock()
        self._broker: Transport | None = None
        self._results: ResultStore | None = None
        self._pid = pid.current()
        self._plain = PlainCalls(self)
        #: Sent once, when the app is finalized: connect to add periodic tasks (Celery's hook).
        self.on_after_configure = signals.Signal("on_after_configure", "The app is configured.")
        self.on_after_finalize = signals.Signal("on_after_finalize", "The app is finalized.")
        _register_app(self, set_as_current)
        for fn, options in list(_shared_tasks):
            self._register(fn, options)

    # -- configuration ------------------------------------------------------------------

    def config_from_object(
        self, obj: Any, namespace: str | None = None, silent: bool = False
    ) -> None:
        """Load settings from a module path, ``"module:attribute"``, an object or a dict."""
        self.conf.config_from_object(obj, namespace=namespace, silent=silent)
        self._reset_connections()

    @property
    def broker_url(self) -> str:
        """The broker URL in force (the embedded SQLite file when none is configured)."""
        return str(self.conf.broker_url or DEFAULT_BROKER_URL)

    @property
    def result_backend_url(self) -> str:
        """The result store URL in force (the broker's when none is configured)."""
        return str(self.conf.result_backend or self.broker_url)

    # -- connections --------------------------------------------------------------------

    @property
    def broker(self) -> Transport:
        """The broker transport, opened on first use in this process."""
        self._check_fork()
        if self._broker is None:
            with self._lock:
                if self._broker is None:
                    self._broker = open_transport(
                        self.broker_url, dict(self.conf.broker_transport_options or {})
                    )
        return self._broker

    @property
    def results(self) -> ResultStore:
        """The result store, opened on first use; shares the broker when URLs match."""
        self._check_fork()
        if self._results is None:
            with self._lock:
                if self._results is None:
                    self._results = self._open_results()
        return self._results

    def _open_results(self) -> ResultStore:
        if self.result_backend_url == self.broker_url:
            transport = self.broker
        else:
            options = dict(self.conf.result_backend_transport_options or {})
            transport = open_transport(self.result_backend_url, options)
        conf = self.conf
        return ResultStore(
            transport,
            serializer=conf.result_serializer,
            accept=conf.result_accept_content or conf.accept_content,
            expires=conf.result_expires,
        )

    def _check_fork(self) -> None:
        if self._pid != pid.current():
            self._broker = self._results = None
            self._lock = threading.RLock()
            self._pid = pid.current()

    def _reset_connections(self) -> None:
        with self._lock:
            if self._results is not None and self._results.transport is not self._broker:
                self._results.transport.close()
            if self._broker is not None:
                self._broker.close()
            self._broker = self._results = None

    def close(self) -> None:
        """Close the broker and result store connections."""
        self._reset_connections()

    # -- tasks --------------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self, *, bind: Literal[True], **options: Any
    ) -> Callable[[Callable[Concatenate[Any, P], R]], Task[P, R]]: ...

    @overload
    def task(
        self, *, bind: Literal[False] = False, **options: Any
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(self, *args: Any, **options: Any) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(bind=True, ...)``."""
        fn = _only_function(args)
        _check_task_options(options)
        if fn is not None:
            return self._register(fn, options)

        def decorate(f: Callable[..., Any]) -> Task[Any, Any]:
            return self._register(f, options)

        return decorate

    def _register(self, fn: Callable[..., Any], options: dict[str, Any]) -> Task[Any, Any]:
        if not callable(fn):
            raise TypeError(f"@task decorates a function, not {fn!r}")
        options = dict(options)
        name = options.pop("name", None) or f"{fn.__module__}.{fn.__qualname__}"
        base: type[Task[Any, Any]] = options.pop("base", None) or Task
        options.pop("shared", None)
        existing = self.tasks.get(name)
        if existing is not None and getattr(existing, "__wrapped__", None) is fn:
            return existing
        task = base(self, fn, name, **options)
        limits = ("rate_limit", "rate_limit_scope", "concurrency_key", "concurrency_limit")
        check_task_limits({key: getattr(task, key) for key in limits}, name)  # base= classes too
        self.tasks[name] = task
        return task

    def finalize(self) -> None:
        """Import task modules: ``imports``, ``include`` and what autodiscovery finds."""
        with self._lock:
            if self._finalized:
                return
            self._finalized = True
        from celeriac.contrib.django.fixup import setup_if_configured

        setup_if_configured(self)
        self.on_after_configure.send(sender=self, source=self.conf)
        for module in [*self.conf.imports, *self.conf.include]:
            importlib.import_module(module)
        for packages, related_name in self._autodiscover:
            names = packages() if callable(packages) else packages
            _import_related(names, related_name)
        signals.import_modules.send(sender=self)
        self.on_after_finalize.send(sender=self)

    def autodiscover_tasks(
        self,
        packages: Iterable[str] | Callable[[], Iterable[str]] | None = None,
        related_name: str = "tasks",
        force: bool = False,
    ) -> None:
        """Import ``<package>.tasks`` for each package (Django's INSTALLED_APPS by default).

        Discovery runs when the app is finalized (a worker starts, or a task name is looked
        up), so it is safe to call before Django has loaded its apps.
        """
        if packages is None:
            from celeriac.contrib.django.fixup import installed_app_names

            packages = installed_app_names
        self._autodiscover.append((packages, related_name))
        if force or self._finalized:
            names = packages() if callable(packages) else packages
            _import_related(names, related_name)

    def get_task(self, name: str) -> Task[Any, Any]:
        """The task registered as ``name``; finalizes the app first if needed."""
        task = self.tasks.get(name)
        if task is None and not self._finalized:
            self.finalize()
            task = self.tasks.get(name)
        if task is None:
            raise NotRegistered(name)
        return task

    def add_periodic_task(
        self,
        schedule: Any,
        sig: Any,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        name: str | None = None,
        options: dict[str, Any] | None = None,
        missed: str = "run_once",
        **opts: Any,
    ) -> str:
        """Add an entry to ``conf.beat_schedule``: ``schedule`` (a crontab, seconds, ...) and
        ``sig`` (a task, a name or a signature); extra keywords are send options. Returns the
        entry's name."""
        from celeriac.entries import periodic_entry

        options = {**(options or {}), **opts}
        key, entry = periodic_entry(schedule, sig, args, kwargs, name, options, missed)
        self.conf.beat_schedule[key] = entry
        return key

    # -- sending ------------------------------------------------------------------------

    def build_message(
        self,
        name: str,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        task: Task[Any, Any] | None = None,
        **options: Any,
    ) -> Message:
        """The message that ``send_task`` would publish, with routing and defaults applied."""
        check_unique(options)  # unique=True needs a task_id, even in eager mode
        options["queue"] = route_queue(self, name, task, args, kwargs, options)
        fields = build_message_fields(self, task, options, current_request())
        return Message.new(name, tuple(args or ()), dict(kwargs or {}), **fields)

    def send_task(
        self,
        name: str,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        task: Task[Any, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Publish a task by name; returns its AsyncResult. Nothing is sent if encoding fails."""
        from celeriac.result import AsyncResult

        check_call_arguments(name, args, kwargs)
        plain = None if options else self._plain.prepare(name, task, args, kwargs)
        if plain is not None:
            envelope, task_id, body = plain
            self.broker.publish(envelope.queue, body, priority=envelope.priority)
            return AsyncResult(task_id, self, name)
        if task is not None and task.concurrency_key is not None:  # a bad key fails here
            concurrency_key(task.concurrency_key, name, args or (), kwargs or {})
        message = self.build_message(name, args, kwargs, task=task, **options)
        serializer = options.get("serializer") or (task and task.serializer)
        body = encode(message, serializer or self.conf.task_serializer)
        signals.before_task_publish.send(sender=name, message=message, body=body)
        due, sent_at = message.due_timestamp(), time.time()
        if options.get("unique"):
            _, published = self.broker.publish_unique(
                message.queue, body, message.id, due=due, priority=message.priority
            )
            if not published:  # queued or running already: that one's result is this one's
                logger.debug("Task %s[%s] is queued or running already", name, message.id)
                return AsyncResult(message.id, self, name)
        else:
            self.broker.publish(message.queue, body, due=due, priority=message.priority)
        signals.after_task_publish.send(sender=name, message=message)
        if self.conf.task_send_sent_event:
            from celeriac.events import task_sent  # monitoring: task-sent

            task_sent(self, message, sent_at)
        return AsyncResult(message.id, self, name)

    def send_many(self, calls: Iterable[Any]) -> list[AsyncResult[Any]]:
        """Publish many tasks in one batch: a single broker round trip per call of this.

        Each call is ``(task_or_name, args, kwargs)``, ``(task_or_name, args, kwargs,
        options)``, or a signature-like mapping with ``task``, ``args``, ``kwargs`` and
        ``options``. Every message is built and encoded before anything is published, so a
        bad call publishes nothing.
        """
        from celeriac.result import AsyncResult

        items: list[tuple[str, bytes, float | None, int]] = []
        results: list[AsyncResult[Any]] = []
        built: list[Message] = []  # the messages that took the general way
        batch = Batch(self)
        for call in calls:
            target, args, kwargs, options = _unpack_call(call)
            task = target if isinstance(target, Task) else self.tasks.get(target)
            name = target.name if isinstance(target, Task) else target
            check_call_arguments(name, args, kwargs)
            plain = None if options else self._plain.prepare(name, task, args, kwargs, batch)
            if plain is not None:
                envelope, task_id, body = plain
                items.append((envelope.queue, body, None, envelope.priority))
                results.append(AsyncResult(task_id, self, name))
                continue
            if options.get("unique"):
                raise LimitError("send_many does not publish unique tasks; use apply_async")
            message = self.build_message(name, args, kwargs, task=task, **options)
            serializer = options.get("serializer") or (task and task.serializer)
            body = encode(message, serializer or self.conf.task_serializer)
            items.append((message.queue, body, message.due_timestamp(), message.priority))
            results.append(AsyncResult(message.id, self, name))
            built.append(message)
        sent_at = time.time()
        self.broker.publish_many(items)
        if self.conf.task_send_sent_event:
            from celeriac.events import task_sent  # monitoring: task-sent

            for message in built:  # no plain call is made when this is on
                task_sent(self, message, sent_at)
        return results

    @property
    def control(self) -> Control:
        """Remote control of workers: ``ping()``, ``inspect()``, ``revoke()``, ``broadcast()``."""
        from celeriac.control import Control

        return Control(self)

    def AsyncResult(self, task_id: str) -> AsyncResult[Any]:
        """A result handle for a task id."""
        from celeriac.result import AsyncResult

        return AsyncResult(task_id, self)

    def __repr__(self) -> str:
        return f"<Celeriac {self.main or '__main__'}:{id(self):#x}>"


# -- the current app and shared tasks ----------------------------------------------------

_apps: list[Celeriac] = []
_current_app: Celeriac | None = None
_shared_tasks: list[tuple[Callable[..., Any], dict[str, Any]]] = []


def _register_app(app: Celeriac, set_as_current: bool) -> None:
    global _current_app
    _apps.append(app)
    if set_as_current or _current_app is None:
        _current_app = app


def current_app() -> Celeriac:
    """The app most recently created (a default one is made when there is none)."""
    if _current_app is None:
        Celeriac("default")
    assert _current_app is not None
    return _current_app


@overload
def shared_task(fn: Callable[P, R], /) -> Task[P, R]: ...


@overload
def shared_task(
    *, bind: Literal[True], **options: Any
) -> Callable[[Callable[Concatenate[Any, P], R]], Task[P, R]]: ...


@overload
def shared_task(
    *, bind: Literal[False] = False, **options: Any
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def shared_task(*args: Any, **options: Any) -> Any:
    """A task for reusable code: registered with every app, now and later."""
    fn = _only_function(args)
    _check_task_options(options)

    def decorate(f: Callable[..., Any]) -> Task[Any, Any]:
        check_task_limits(options, options.get("name") or f"{f.__module__}.{f.__qualname__}")
        _shared_tasks.append((f, options))
        for app in _apps:
            app._register(f, options)
        settings = {k: v for k, v in options.items() if k not in ("name", "base", "shared")}
        name = options.get("name") or f"{f.__module__}.{f.__qualname__}"
        return SharedTask(f, name, **settings)

    return decorate(fn) if fn is not None else decorate


class SharedTask(Task[P, R]):
    """What ``shared_task`` returns: the task as seen by whichever app is current when used."""

    def __init__(self, fn: Callable[..., Any], name: str, **options: Any) -> None:
        self.name = name
        self.run = fn
        self.__wrapped__ = fn
        self.__doc__ = fn.__doc__
        self.__module__ = fn.__module__
        for key, value in options.items():
            setattr(self, key, value)

    @property
    def app(self) -> Celeriac:
        """The current app, resolved at each use (Celery's shared_task does the same)."""
        return current_app()

    @app.setter
    def app(self, value: Celeriac) -> None:
        raise AttributeError("a shared task follows the current app; it cannot be bound")


def _only_function(args: tuple[Any, ...]) -> Callable[..., Any] | None:
    """The function of a bare ``@task``; options must be given by keyword."""
    if len(args) > 1 or (args and not callable(args[0])):
        raise TypeError("@task takes the function alone; give options by keyword")
    return args[0] if args else None


def _check_task_options(options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(TASK_OPTIONS))
    if unknown:
        raise TypeError(
            f"unknown task option(s): {', '.join(unknown)}; known: {', '.join(TASK_OPTIONS)}"
        )


def _unpack_call(call: Any) -> tuple[Any, Any, Any, dict[str, Any]]:
    """``(target, args, kwargs, options)`` from a tuple or a signature-like mapping."""
    if isinstance(call, dict):
        if "task" not in call:
            raise TypeError(f"a call mapping needs a 'task' key: {call!r}")
        return call["task"], call.get("args"), call.get("kwargs"), dict(call.get("options") or {})
    if isinstance(call, tuple | list) and len(call) in (3, 4):
        options = dict(call[3]) if len(call) == 4 and call[3] else {}
        return call[0], call[1], call[2], options
    raise TypeError(
        f"each call is (task, args, kwargs[, options]) or a signature, not {call!r}"
    )


def _import_related(packages: Iterable[str], related_name: str) -> None:
    """Import ``package.related_name`` where it exists; re-raise errors inside it."""
    for package in packages:
        module = f"{package}.{related_name}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name not in (module, package):
                raise
        except ImportError as exc:
            raise ConfigurationError(f"cannot import {module}: {exc}") from exc
