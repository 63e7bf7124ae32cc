"""Signature: one task call described as data, in Celery's dict shape.

A signature is a dict, so it travels inside messages as JSON::

    {"task": "proj.add", "args": [2], "kwargs": {}, "options": {"task_id": "..."},
     "subtask_type": null, "immutable": false}

Canvases (``celeriac.canvas``: chain, group, chord, chunks) are signatures too, with
``subtask_type`` naming the kind; they register themselves in ``KINDS`` so that
``signature(data)`` turns any such dict back into the right object.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Self

from celeriac import signals
from celeriac.message import Message, encode
from celeriac.result import AsyncResult
from celeriac.routing import iterable
from celeriac.task import Task

if TYPE_CHECKING:
    from celeriac.app import Celeriac

#: A message built and encoded, ready to publish.
Prepared = tuple[Message, bytes]

#: The canvas classes by ``subtask_type``, each made from a dict: filled by celeriac.canvas.
KINDS: dict[str, Callable[[Mapping[str, Any], Any], Signature]] = {}


class Signature(dict[str, Any]):
    """One task call as data: name, partial args and kwargs, and apply_async options."""

    def __init__(
        self,
        task: str | Task[Any, Any] | Mapping[str, Any] | None = None,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        subtask_type: str | None = None,
        immutable: bool = False,
        app: Celeriac | None = None,
        **extra_options: Any,
    ) -> None:
        if isinstance(task, Mapping):  # Celery's Signature(dict): the fields of a dict
            data, task = task, task.get("task")
            args, kwargs, options = data.get("args"), data.get("kwargs"), data.get("options")
            subtask_type, immutable = data.get("subtask_type"), bool(data.get("immutable"))
        self._app = app
        self._type = task if isinstance(task, Task) else None
        name = task.name if isinstance(task, Task) else task
        if not isinstance(name, str) or not name:
            raise TypeError(f"a signature needs a task or a task name, not {task!r}")
        if args is not None and (isinstance(args, str | bytes | Mapping) or not iterable(args)):
            raise TypeError(f"args must be a list or tuple, not {type(args).__name__}")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise TypeError(f"kwargs must be a dict, not {type(kwargs).__name__}")
        super().__init__(
            task=name,
            args=list(args or ()),
            kwargs=dict(kwargs or {}),
            options={**(options or {}), **extra_options},
            subtask_type=subtask_type,
            immutable=bool(immutable),
        )

    # -- reading ------------------------------------------------------------------------

    @property
    def task(self) -> str:
        """The registered name of the task to run."""
        return str(self["task"])

    name = task

    @property
    def args(self) -> tuple[Any, ...]:
        """The partial positional arguments."""
        return tuple(self["args"])

    @property
    def kwargs(self) -> dict[str, Any]:
        """The partial keyword arguments."""
        value: dict[str, Any] = self["kwargs"]
        return value

    @property
    def options(self) -> dict[str, Any]:
        """The apply_async options (queue, countdown, task_id, link, ...)."""
        value: dict[str, Any] = self["options"]
        return value

    @property
    def immutable(self) -> bool:
        """True when results of earlier steps are not passed to this one."""
        return bool(self.get("immutable"))

    @property
    def subtask_type(self) -> str | None:
        """None for a task; "chain", "group", "chord" or "chunks" for a canvas."""
        return self.get("subtask_type")

    @property
    def id(self) -> str | None:
        """The task id given by ``freeze()`` or ``set(task_id=...)``."""
        return self.options.get("task_id")

    @property
    def app(self) -> Celeriac:
        """The app that sends this signature: the one it was bound to, else the current one."""
        app = self._bound_app()
        if app is not None:
            return app
        from celeriac.app import current_app

        return current_app()

    def _bound_app(self) -> Celeriac | None:
        """The app given, or the app of the task (of the first task that has one, for a canvas)."""
        if self._app is not None:
            return self._app
        if self._type is not None:
            return self._type.app
        for leaf in self._leaves():
            if leaf is not self and leaf._bound_app() is not None:
                return leaf._bound_app()
        return None

    @property
    def type(self) -> Task[Any, Any]:
        """The task object (looked up by name in the app)."""
        if self._type is None:
            self._type = self.app.get_task(self.task)
        return self._type

    # -- building -----------------------------------------------------------------------

    def clone(
        self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Self:  # fmt: skip
        """A copy (nested signatures too), with partial args before its own, kwargs and options
        merged in."""
        copy = signature(plain(self), app=self._bound_app())
        assert isinstance(copy, type(self))
        copy._type = self._type
        if args or kwargs:
            copy["args"], copy["kwargs"] = self._merge(args, kwargs)
        copy.options.update(options)
        return copy

    def _merge(
        self, args: Iterable[Any] | None, kwargs: Mapping[str, Any] | None
    ) -> tuple[list[Any], dict[str, Any]]:
        """Call arguments: new args before the partial ones (none if immutable)."""
        if self.immutable:
            return list(self["args"]), dict(self.kwargs)
        return [*(args or ()), *self["args"]], {**self.kwargs, **(kwargs or {})}

    def set(self, immutable: bool | None = None, **options: Any) -> Signature:
        """Set apply_async options (and immutability) in place; returns the signature."""
        if immutable is not None:
            self["immutable"] = bool(immutable)
        self.options.update(options)
        return self

    def set_immutable(self, immutable: bool) -> None:
        """Make the signature (im)mutable: whether earlier results are passed to it."""
        self["immutable"] = bool(immutable)

    def link(self, callback: Mapping[str, Any]) -> Mapping[str, Any]:
        """Apply ``callback`` with this task's result when it succeeds; returns the callback."""
        self.options["link"] = [*as_list(self.options.get("link")), _checked(callback)]
        return callback

    def link_error(self, errback: Mapping[str, Any]) -> Mapping[str, Any]:
        """Apply ``errback`` when this task fails; returns the errback."""
        self.options["link_error"] = [*as_list(self.options.get("link_error")), _checked(errback)]
        return errback

    def on_error(self, errback: Mapping[str, Any]) -> Signature:
        """``link_error`` that returns the signature, for building in one expression."""
        self.link_error(errback)
        return self

    def __or__(self, other: Any) -> Signature:  # type: ignore[override] # | chains, as Celery's
        if not isinstance(other, Signature):
            return NotImplemented
        steps = [*_chain_parts(self), *_chain_parts(other)]
        return KINDS["chain"]({"kwargs": {"tasks": steps}}, self._app)

    # -- running ------------------------------------------------------------------------

    def freeze(self, _id: str | None = None) -> Any:
        """Fix the task ids now; returns the result handle the call will have."""
        if _id is not None:
            self.options["task_id"] = _id
        task_id = self.options.setdefault("task_id", str(uuid.uuid4()))
        return AsyncResult(task_id, self.app, self.task)

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        """``apply_async`` with partial arguments."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:  # fmt: skip
        """Send the task, with these arguments before the partial ones; options win over the
        signature's."""
        app = self.app
        call_args, call_kwargs = self._merge(args, kwargs)
        merged = {**self.options, **options}
        if app.conf.task_always_eager:
            return self.type.apply(call_args, call_kwargs, **merged)
        return app.send_task(
            self.task, call_args, call_kwargs, task=self._type or app.tasks.get(self.task),
            **merged,
        )  # fmt: skip

    def apply(
        self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:  # fmt: skip
        """Run the task in this process, as a worker would."""
        call_args, call_kwargs = self._merge(args, kwargs)
        return self.type.apply(call_args, call_kwargs, **{**self.options, **options})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the task's function here and now with the merged arguments."""
        call_args, call_kwargs = self._merge(args, kwargs)
        return self.type(*call_args, **call_kwargs)

    # -- what the canvas classes build on -------------------------------------------------

    def _prepare(self, inherited: Mapping[str, Any]) -> None:
        """Take options from the canvas around: this task's own win; callbacks add up."""
        for key, value in inherited.items():
            if key in ("link", "link_error"):
                self.options[key] = [*as_list(self.options.get(key)), *as_list(value)]
            elif key == "task_id":
                self.options[key] = value
            else:
                self.options.setdefault(key, value)

    def _leaves(self) -> Iterator[Signature]:
        """The task signatures inside, in the order they would run."""
        yield self

    def _messages(
        self,
        app: Celeriac,
        args: Iterable[Any] | None,
        kwargs: Mapping[str, Any] | None,
        now: Mapping[str, Any],
        rest: list[dict[str, Any]],
        tail: Mapping[str, Any] | None,
    ) -> list[Prepared]:
        """The messages to publish now: ``now`` holds root/parent ids for them, ``rest`` the
        steps to run after (in order), ``tail`` the options of the task whose result is
        this canvas's (its group and chord)."""
        call_args, call_kwargs = self._merge(args, kwargs)
        options = {**self.options, **now, **(tail or {})}
        if rest:
            options["chain"] = rest[::-1]  # the protocol keeps the next step last
        return [build(app, self.task, call_args, call_kwargs, options)]

    def __repr__(self) -> str:
        args = [repr(a) for a in self["args"]]
        args += [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{'%' if self.immutable else ''}{self.task}({', '.join(args)})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (signature, (plain(self),))


# -- from data -----------------------------------------------------------------------------


def signature(
    varies: str | Task[Any, Any] | Mapping[str, Any],
    args: Iterable[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    app: Celeriac | None = None,
    **extra_options: Any,
) -> Signature:
    """A signature from a task name, a Task, or a dict (a chain/group/chord dict gives one)."""
    if isinstance(varies, Signature) and not (args or kwargs or options or extra_options):
        return varies
    if not isinstance(varies, Mapping):
        return Signature(varies, args, kwargs, options, app=app, **extra_options)
    kind = varies.get("subtask_type")
    maker = KINDS.get(kind) if isinstance(kind, str) else None
    if maker is not None:
        return maker(varies, app)
    if not isinstance(varies.get("task"), str) or not varies["task"]:
        raise TypeError(f"not a signature (no task name): {varies!r}")
    return Signature(
        varies["task"], varies.get("args"), varies.get("kwargs"), varies.get("options"),
        kind, bool(varies.get("immutable")), app, **extra_options,
    )  # fmt: skip


def plain(value: Any) -> Any:
    """A copy made of plain dicts and lists: what a signature looks like on the wire."""
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


# -- sending -----------------------------------------------------------------------------


def build(
    app: Celeriac, name: str, args: list[Any], kwargs: dict[str, Any], options: dict[str, Any]
) -> Prepared:
    """One message, built with the app's routing and defaults, and encoded."""
    task = app.tasks.get(name)
    message = app.build_message(name, args, kwargs, task=task, **options)
    serializer = options.get("serializer") or (task and task.serializer)
    return message, encode(message, serializer or app.conf.task_serializer)


def publish(app: Celeriac, prepared: list[Prepared]) -> None:
    """Publish encoded messages in one batch, with the publish signals around it."""
    if not prepared:
        return
    for message, body in prepared:
        signals.before_task_publish.send(sender=message.task, message=message, body=body)
    app.broker.publish_many(
        (message.queue, body, message.due_timestamp(), message.priority)
        for message, body in prepared
    )
    for message, _ in prepared:
        signals.after_task_publish.send(sender=message.task, message=message)


def publish_once(app: Celeriac, key: str, prepared: list[Prepared], ttl: float | None) -> bool:
    """Publish like ``publish``, unless ``key`` is set on the broker; set it (atomically).

    Returns whether the messages were published (False: someone published them before).
    """
    for message, body in prepared:
        signals.before_task_publish.send(sender=message.task, message=message, body=body)
    items = [(m.queue, body, m.due_timestamp(), m.priority) for m, body in prepared]
    if app.broker.publish_once(key, items, ttl) is None:
        return False
    for message, _ in prepared:
        signals.after_task_publish.send(sender=message.task, message=message)
    return True


# -- helpers -----------------------------------------------------------------------------


def as_list(value: Any) -> list[Any]:
    """A callback option (one signature, a list of them, or None) as a list."""
    if value is None:
        return []
    return [value] if isinstance(value, Mapping) else list(value)


def _chain_parts(sig: Signature) -> list[Signature]:
    """The steps ``|`` joins: a chain without options of its own is flattened."""
    if sig.subtask_type == "chain" and not sig.options:
        return list(sig.kwargs["tasks"])
    return [sig]


def _checked(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not value.get("task"):
        raise TypeError(f"a callback must be a signature (add.s(...)), not {value!r}")
    return value
