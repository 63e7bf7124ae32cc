"""Task: a plain function registered with an app, and the request it runs under.

``add.delay(2, 2)`` passes only the user's arguments; options go through
``add.apply_async(args, kwargs, countdown=..., queue=...)``, so the two never collide.
"""

from __future__ import annotations

import contextvars
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, NoReturn, ParamSpec, TypeVar

from celeriac.errors import MaxRetriesExceededError, Retry
from celeriac.states import ALL_STATES

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.canvas import Signature
    from celeriac.canvas import chunks as Chunks
    from celeriac.message import Message
    from celeriac.result import AsyncResult, EagerResult

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(slots=True)
class Request:
    """What a running task knows about the call that started it (``self.request``)."""

    id: str | None = None
    task: str | None = None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    retries: int = 0
    eta: datetime | None = None
    expires: datetime | None = None
    group: str | None = None
    group_index: int | None = None
    root_id: str | None = None
    parent_id: str | None = None
    hostname: str | None = None
    delivery_info: dict[str, Any] = field(default_factory=dict)
    is_eager: bool = False
    callbacks: list[dict[str, Any]] | None = None
    errbacks: list[dict[str, Any]] | None = None
    chain: list[dict[str, Any]] | None = None
    chord: dict[str, Any] | None = None
    timelimit: tuple[float | None, float | None] = (None, None)
    origin: str | None = None
    reply_to: str | None = None
    correlation_id: str | None = None
    argsrepr: str | None = None
    kwargsrepr: str | None = None
    shadow: str | None = None
    ignore_result: bool = False
    headers: dict[str, Any] = field(default_factory=dict)
    called_directly: bool = True
    lang: str = "py"
    #: the decoded message behind this request (None when called directly)
    message: Message | None = None

    @classmethod
    def from_message(
        cls, message: Message, hostname: str | None, delivery_info: dict[str, Any], eager: bool
    ) -> Request:
        """The request for a message about to run.

        Filled field by field (every field, ``lang`` included): made for every task a worker
        runs, and the dataclass's ``__init__`` with 31 keyword arguments costs twice as much.
        """
        request: Request = object.__new__(cls)
        request.id, request.task = message.id, message.task
        request.args, request.kwargs = list(message.args), dict(message.kwargs)
        request.retries, request.eta = message.retries, message.eta
        request.expires, request.group = message.expires, message.group
        request.group_index = message.group_index
        request.root_id, request.parent_id = message.root_id, message.parent_id
        request.hostname, request.delivery_info, request.is_eager = hostname, delivery_info, eager
        request.callbacks, request.errbacks = message.callbacks, message.errbacks
        request.chain, request.chord = message.chain, message.chord
        request.timelimit, request.origin = message.timelimit, message.origin
        request.reply_to, request.correlation_id = message.reply_to, message.correlation_id
        request.argsrepr, request.kwargsrepr = message.argsrepr, message.kwargsrepr
        request.shadow, request.ignore_result = message.shadow, message.ignore_result
        request.headers, request.called_directly = dict(message.headers), False
        request.lang, request.message = "py", message
        return request

    def as_dict(self) -> dict[str, Any]:
        """The request's fields (without the message object)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "message"}

    def __repr__(self) -> str:
        return f"<Context: {self.as_dict()!r}>"


_current: contextvars.ContextVar[tuple[Task[Any, Any], Request] | None] = contextvars.ContextVar(
    "celeriac_current_task", default=None
)


def current_request() -> Request | None:
    """The request of the task running in this thread or coroutine, if any."""
    running = _current.get()
    return running[1] if running else None


def current_task() -> Task[Any, Any] | None:
    """The task running in this thread or coroutine, if any."""
    running = _current.get()
    return running[0] if running else None


def push_request(task: Task[Any, Any], request: Request) -> contextvars.Token[Any]:
    """Make ``request`` the current one; returns the token to pop it."""
    return _current.set((task, request))


def pop_request(token: contextvars.Token[Any]) -> None:
    """Undo ``push_request``."""
    _current.reset(token)


#: Task options accepted by ``@app.task(...)``, with their defaults on the class.
TASK_OPTIONS = (
    "name", "bind", "base", "max_retries", "default_retry_delay", "autoretry_for",
    "retry_kwargs", "retry_backoff", "retry_backoff_max", "retry_jitter", "acks_late",
    "ignore_result", "time_limit", "soft_time_limit", "queue", "priority", "expires",
    "track_started", "serializer", "rate_limit", "typing", "shared", "store_errors_even_if_ignored",
    "rate_limit_scope", "concurrency_key", "concurrency_limit",
)  # fmt: skip


class Task(Generic[P, R]):
    """A registered function with its options; call ``delay`` to run it on a worker."""

    name: str = ""
    app: Celeriac
    run: Callable[..., Any]
    bind: bool = False
    max_retries: int | None = 3
    default_retry_delay: float = 180.0
    autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: dict[str, Any] = {}  # noqa: RUF012 - read-only class default
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600.0
    retry_jitter: bool = True
    acks_late: bool | None = None
    ignore_result: bool | None = None
    store_errors_even_if_ignored: bool | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    queue: str | None = None
    priority: int | None = None
    expires: float | datetime | None = None
    track_started: bool | None = None
    serializer: str | None = None
    rate_limit: str | float | None = None
    #: "cluster" (every worker together) or "worker"; None: task_default_rate_limit_scope
    rate_limit_scope: str | None = None
    #: at most ``concurrency_limit`` runs at once per value of ``concurrency_key(*args, **kw)``
    concurrency_key: Callable[..., Any] | None = None
    concurrency_limit: int | None = None
    typing: bool = True

    def __init__(self, app: Celeriac, fn: Callable[..., Any], name: str, **options: Any) -> None:
        self.app = app
        self.name = name
        self.run = fn
        self.__wrapped__ = fn
        self.__doc__ = fn.__doc__
        self.__module__ = fn.__module__
        for key, value in options.items():
            setattr(self, key, value)

    # -- calling ------------------------------------------------------------------------

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here and now, as a plain call."""
        if self.bind:
            result: R = self.run(self, *args, **kwargs)
        else:
            result = self.run(*args, **kwargs)
        return result

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send the task to a worker with these arguments."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Send the task with options: countdown, eta, expires, queue, priority, task_id, ..."""
        if not options:  # a plain call: straight from the task's template when it can
            sent = self.app._plain.send(self, args, kwargs)
            if sent is not None:
                return sent
        if self.app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        return self.app.send_task(self.name, args, kwargs, task=self, **options)

    def delay_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Send the task once the current Django transaction commits (never on rollback)."""
        from celeriac.contrib.django.transaction import on_commit

        on_commit(lambda: self.apply_async(args, kwargs))

    def apply_async_on_commit(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        """``apply_async`` once the current Django transaction commits."""
        from celeriac.contrib.django.transaction import on_commit

        on_commit(lambda: self.apply_async(args, kwargs, **options))

    def apply(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> EagerResult[R]:
        """Run the task in this process, as a worker would, and return its result."""
        from celeriac.trace import apply_eagerly

        return apply_eagerly(self, args, kwargs, **options)

    # -- canvas -------------------------------------------------------------------------

    def signature(
        self, args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None, **options: Any,
    ) -> Signature:  # fmt: skip
        """This task as data, with partial arguments and apply_async options."""
        from celeriac.canvas import Signature

        return Signature(self, args, kwargs, **options)

    subtask = signature

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature with partial arguments: ``add.s(2)`` receives the previous result first."""
        return self.signature(args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: earlier results are not passed to it."""
        return self.signature(args, kwargs, immutable=True)

    def map(self, it: Iterable[Any]) -> Signature:
        """One message that calls this task on each item."""
        from celeriac.canvas import xmap

        return xmap(self.s(), it, self.app)

    def starmap(self, it: Iterable[Any]) -> Signature:
        """One message that calls this task on each tuple of arguments."""
        from celeriac.canvas import xstarmap

        return xstarmap(self.s(), it, self.app)

    def chunks(self, it: Iterable[Any], n: int) -> Chunks:
        """The calls for each tuple of arguments, ``n`` to a message, sent as a group."""
        from celeriac.canvas import chunks

        return chunks(self.s(), it, n, self.app)

    def AsyncResult(self, task_id: str) -> AsyncResult[R]:
        """A result handle for one of this task's ids."""
        from celeriac.result import AsyncResult

        return AsyncResult(task_id, self.app, self.name)

    # -- inside a running task ----------------------------------------------------------

    @property
    def request(self) -> Request:
        """The request this task runs under (an empty one when called directly)."""
        running = _current.get()
        if running is not None and (running[0] is self or running[0].name == self.name):
            return running[1]
        return Request(task=self.name)

    def retry(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> NoReturn:
        """Run this task again later; raises ``Retry`` for the worker to act on."""
        request = self.request
        if request.called_directly or request.message is None:
            if exc is not None:
                raise exc
            raise RuntimeError("retry() is only possible for a task sent to a worker")
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"can't retry {self.name}[{request.id}]: max retries ({limit}) exceeded"
            )
        if eta is None:
            delay = self.default_retry_delay if countdown is None else countdown
            eta = datetime.now(UTC) + timedelta(seconds=float(delay))
        changes: dict[str, Any] = {"retries": request.retries + 1, "eta": eta}
        if args is not None:
            changes["args"] = tuple(args)
        if kwargs is not None:
            changes["kwargs"] = dict(kwargs)
        for key in ("queue", "priority"):
            if key in options:
                changes[key] = options[key]
        signal = Retry(exc=exc, when=eta)
        signal.message = request.message.replace(**changes)
        raise signal

    def backoff_delay(self, retries: int) -> float:
        """The countdown before retry number ``retries + 1`` under ``retry_backoff``."""
        if not self.retry_backoff:
            return float(self.retry_kwargs.get("countdown", self.default_retry_delay))
        factor = 1.0 if self.retry_backoff is True else float(self.retry_backoff)
        delay = min(factor * (2.0**retries), float(self.retry_backoff_max))
        if self.retry_jitter:
            delay = random.uniform(0, delay)
        return delay

    def update_state(
        self, task_id: str | None = None, state: str | None = None, meta: Any = None
    ) -> None:
        """Store a state (often a custom one such as ``PROGRESS``) for this task."""
        task_id = task_id or self.request.id
        if not task_id:
            raise ValueError("update_state() needs a task id outside a running task")
        self.app.results.store(task_id, state or "PENDING", meta, name=self.name)
        if self.app.conf.worker_send_task_events and state and state not in ALL_STATES:
            from celeriac.events import task_progress  # monitoring: task-progress

            task_progress(self.app, task_id, self.name, state, meta, self.request.hostname)

    def __repr__(self) -> str:
        return f"<@task: {self.name} of {self.app.main}>"
