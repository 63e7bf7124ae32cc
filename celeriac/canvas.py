"""chain, group, chord, chunks: tasks composed into workflows, sent as task messages.

Each is a ``Signature`` whose ``kwargs`` hold its parts: ``{"tasks": [...]}`` for chain and
group, ``{"header": group, "body": signature}`` for chord.

How a canvas runs: ``apply_async`` clones it, pushes the canvas's options down to its tasks,
gives every task its id (so that every result handle exists before anything runs), and
publishes, all encoded before any is sent, only the messages that can start now. What comes
later travels inside those messages (the protocol's ``chain``, ``chord``, ``callbacks`` and
``errbacks``) and the worker that finishes a task sends it (``celeriac.workflow``). A group
followed by more steps becomes a chord, whose body gets the list of the group's results.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Self

from celeriac import signals
from celeriac.result import GroupResult
from celeriac.routing import _check_options as check_options
from celeriac.signature import (
    KINDS,
    Prepared,
    Signature,
    as_list,
    plain,
    publish,
    signature,
)
from celeriac.task import Task, current_request

if TYPE_CHECKING:
    from celeriac.app import Celeriac

__all__ = ["Signature", "chain", "chord", "chunks", "group", "signature", "xmap", "xstarmap"]

#: Options that apply to the messages published first, not to every task of a canvas.
_FIRST_ONLY = ("countdown", "eta")


class _Canvas(Signature):
    """What chain, group and chord share: sending the whole canvas at once."""

    def apply_async(
        self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:  # fmt: skip
        """Publish what can start now (nothing if any message cannot be encoded); returns the
        result handle of the canvas."""
        app = self.app
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        canvas = self._prepared(options)
        for leaf in canvas._leaves():  # steps sent later by a worker are checked now too
            check_options(leaf.options)
        result = canvas.freeze()
        now: dict[str, Any] = {}
        if current_request() is None:  # inside a task, the running task is parent and root
            now["root_id"] = next((leaf.id for leaf in canvas._leaves()), None)
        publish(app, canvas._messages(app, args, kwargs, now, [], None))
        return result

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``apply_async`` with partial arguments, as Celery's canvases do."""
        return self.apply_async(args, kwargs)

    def _prepared(self, options: Mapping[str, Any]) -> Self:
        """A copy with the call's options applied and pushed down to its tasks."""
        canvas = self.clone()
        canvas.options.update(options)
        canvas._prepare({})
        return canvas

    def _own_options(self, inherited: Mapping[str, Any]) -> dict[str, Any]:
        """This canvas's options over the inherited ones, taken off it (so preparing twice
        changes nothing)."""
        merged = dict(inherited)
        for key, value in self.options.items():
            if key in ("link", "link_error"):
                merged[key] = [*as_list(merged.get(key)), *as_list(value)]
            else:
                merged[key] = value
        self.options.clear()
        return merged


class chain(_Canvas):
    """Tasks run one after another; each result is the first argument of the next."""

    def __init__(self, *tasks: Any, app: Celeriac | None = None, **options: Any) -> None:
        if len(tasks) == 1 and not isinstance(tasks[0], Mapping):
            tasks = tuple(tasks[0])  # chain([a, b]) or chain(generator)
        steps = [_as_step(t, app) for t in tasks]
        super().__init__("celeriac.chain", (), {"tasks": steps}, options, "chain", app=app)

    @property
    def tasks(self) -> list[Signature]:
        """The steps, in order."""
        steps: list[Signature] = self.kwargs["tasks"]
        return steps

    def _prepare(self, inherited: Mapping[str, Any]) -> None:
        opts = self._own_options(inherited)
        last: dict[str, Any] = {key: opts.pop(key) for key in ("task_id", "link") if key in opts}
        first = {key: opts.pop(key) for key in _FIRST_ONLY if key in opts}
        for index, step in enumerate(self.tasks):
            extra = dict(opts)
            if index == 0:
                extra.update(first)
            if index == len(self.tasks) - 1:
                extra.update(last)
            step._prepare(extra)

    def freeze(self, _id: str | None = None) -> Any:
        """Give every step its id; the result is the last step's, its ``parent`` the one before."""
        if _id is not None and self.tasks:
            self.tasks[-1].options["task_id"] = _id
        previous = None
        for step in self.tasks:
            result = step.freeze()
            _first_of(result).parent = previous
            previous = result
        return previous

    def _leaves(self) -> Iterator[Signature]:
        for step in self.tasks:
            yield from step._leaves()

    def _messages(
        self,
        app: Celeriac,
        args: Iterable[Any] | None,
        kwargs: Mapping[str, Any] | None,
        now: Mapping[str, Any],
        rest: list[dict[str, Any]],
        tail: Mapping[str, Any] | None,
    ) -> list[Prepared]:
        steps: list[Any] = [*self.tasks, *rest]
        if not steps:
            return []
        if tail:
            steps[-1] = with_tail(signature(steps[-1], app=app), tail)
        first = signature(steps[0], app=app)
        return first._messages(app, args, kwargs, now, [plain(s) for s in steps[1:]], None)

    def apply(
        self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:  # fmt: skip
        """Run the steps here, one after another; stops at the first failure."""
        canvas = self._prepared(options)
        result = None
        for step in canvas.tasks:
            step_args = args if result is None else (result.get(),)
            next_result = step.apply(step_args, kwargs if result is None else None)
            _first_of(next_result).parent = result
            result = next_result
            if not result.successful():
                break
        return result

    def __repr__(self) -> str:
        return " | ".join(repr(step) for step in self.tasks) or "chain()"


class group(_Canvas):
    """Tasks run in parallel; the result is a GroupResult with their results in call order."""

    def __init__(self, *tasks: Any, app: Celeriac | None = None, **options: Any) -> None:
        if len(tasks) == 1 and not isinstance(tasks[0], Mapping):
            tasks = tuple(tasks[0])  # group([a, b]) or group(generator)
        members: list[Signature] = []
        for task in tasks:
            step = _as_step(task, app)
            members.extend(_flattened(step) if isinstance(step, group) else [step])
        super().__init__("celeriac.group", (), {"tasks": members}, options, "group", app=app)

    @property
    def tasks(self) -> list[Signature]:
        """The members, in call order."""
        members: list[Signature] = self.kwargs["tasks"]
        return members

    def link(self, callback: Mapping[str, Any]) -> Mapping[str, Any]:
        """Refused: a group has no single result to pass on; a chord does."""
        raise TypeError(
            "a group has no single result to pass to a callback: "
            "use chord(group, callback) or group | callback"
        )

    def __or__(self, other: Any) -> Signature:  # type: ignore[override] # | chains, as Celery's
        if isinstance(other, Signature) and not isinstance(other, group):
            return chord(self, other, app=self._app)
        return super().__or__(other)

    def _prepare(self, inherited: Mapping[str, Any]) -> None:
        opts = self._own_options(inherited)
        group_id = opts.pop("task_id", None)
        if opts.pop("link", None):
            group.link(self, {})  # refused, with the way to do it
        if group_id is not None:
            self.options["task_id"] = group_id
        for member in self.tasks:
            member._prepare(opts)

    def freeze(self, _id: str | None = None) -> GroupResult:
        """Give the group and every member its id."""
        if _id is not None:
            self.options["task_id"] = _id
        group_id = self.options.setdefault("task_id", str(uuid.uuid4()))
        return GroupResult(group_id, [m.freeze() for m in self.tasks], app=self.app)

    def _leaves(self) -> Iterator[Signature]:
        for member in self.tasks:
            yield from member._leaves()

    def _messages(
        self,
        app: Celeriac,
        args: Iterable[Any] | None,
        kwargs: Mapping[str, Any] | None,
        now: Mapping[str, Any],
        rest: list[dict[str, Any]],
        tail: Mapping[str, Any] | None,
        chord_body: dict[str, Any] | None = None,
    ) -> list[Prepared]:
        if rest:  # the steps after a group wait for all of it: that is a chord
            body = _chain_of([signature(step, app=app) for step in rest], app)
            return chord(self, body, app=app)._messages(app, args, kwargs, now, [], tail)
        if tail:
            raise TypeError("a chord header member cannot end with a group; use a chord")
        prepared: list[Prepared] = []
        for index, member in enumerate(self.tasks):
            member_tail: dict[str, Any] = {"group_id": self.id, "group_index": index}
            if chord_body is not None:
                member_tail["chord"] = chord_body
            prepared += member._messages(app, args, kwargs, now, [], member_tail)
        return prepared

    def apply(
        self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult:  # fmt: skip
        """Run every member here; returns their results in call order."""
        canvas = self._prepared(options)
        group_id = canvas.options.get("task_id") or str(uuid.uuid4())
        results = [member.apply(args, kwargs) for member in canvas.tasks]
        return GroupResult(group_id, results, app=self.app)

    def __repr__(self) -> str:
        return f"group([{', '.join(repr(m) for m in self.tasks)}])"


class chord(_Canvas):
    """A group (the header) and a body that runs once with the list of the header's results."""

    def __init__(
        self,
        header: Any,
        body: Mapping[str, Any] | None = None,
        app: Celeriac | None = None,
        **options: Any,
    ) -> None:
        header_group = header if isinstance(header, group) else group(header, app=app)
        parts: dict[str, Any] = {"header": header_group, "body": None}
        if body is not None:
            parts["body"] = _as_step(body, app)
        super().__init__("celeriac.chord", (), parts, options, "chord", app=app)

    @property
    def header(self) -> group:
        """The tasks that run first, in parallel."""
        value: group = self.kwargs["header"]
        return value

    @property
    def body(self) -> Signature:
        """What runs once the header is done, with the list of its results."""
        value: Signature | None = self.kwargs["body"]
        if value is None:
            raise TypeError("this chord has no body: call chord(header)(body)")
        return value

    def __call__(self, body: Mapping[str, Any] | None = None, **options: Any) -> Any:
        """``chord(header)(body)``: send the chord with this body."""
        canvas = self if body is None else chord(self.header, body, app=self._app, **self.options)
        return canvas.apply_async((), None, **options)

    def link(self, callback: Mapping[str, Any]) -> Mapping[str, Any]:
        """Apply ``callback`` with the body's result."""
        return self.body.link(callback)

    def link_error(self, errback: Mapping[str, Any]) -> Mapping[str, Any]:
        """Apply ``errback`` if the chord fails (a header task or the body)."""
        return self.body.link_error(errback)

    def _prepare(self, inherited: Mapping[str, Any]) -> None:
        opts = self._own_options(inherited)
        body_only: dict[str, Any] = {
            k: opts.pop(k) for k in ("task_id", "link", "link_error") if k in opts
        }
        header_only = {k: opts.pop(k) for k in _FIRST_ONLY if k in opts}
        self.header._prepare({**opts, **header_only})
        self.body._prepare({**opts, **body_only})

    def freeze(self, _id: str | None = None) -> Any:
        """Give the header and the body their ids; the result is the body's, its ``parent``
        the header's GroupResult."""
        header = self.header.freeze()
        result = self.body.freeze(_id)
        _first_of(result).parent = header
        return result

    def _leaves(self) -> Iterator[Signature]:
        yield from self.header._leaves()
        if self.kwargs.get("body") is not None:
            yield from self.body._leaves()

    def _messages(
        self,
        app: Celeriac,
        args: Iterable[Any] | None,
        kwargs: Mapping[str, Any] | None,
        now: Mapping[str, Any],
        rest: list[dict[str, Any]],
        tail: Mapping[str, Any] | None,
    ) -> list[Prepared]:
        body = self.body
        if rest:
            body = _chain_of([body, *(signature(step, app=app) for step in rest)], app)
        if tail:
            body = with_tail(body, tail)
        if not self.header.tasks:  # nothing to wait for: the body runs now, with []
            return body._messages(app, ([],), None, now, [], None)
        body_dict = plain(body)
        body_dict["chord_size"] = len(self.header.tasks)
        return self.header._messages(app, args, kwargs, now, [], None, chord_body=body_dict)

    def apply(
        self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:  # fmt: skip
        """Run the header here, then the body with its results (or fail with ChordError)."""
        from celeriac.workflow import eager_chord_body

        canvas = self._prepared(options)
        header = canvas.header.apply(args, kwargs)
        result = eager_chord_body(self.app, canvas.body, header)
        _first_of(result).parent = header
        return result

    def __repr__(self) -> str:
        body = self.kwargs.get("body")
        return f"chord({self.header!r}, {body!r})"


class chunks(Signature):
    """A task over many argument tuples, cut into groups of ``n`` calls per message."""

    def __init__(
        self, task: Mapping[str, Any], it: Iterable[Any], n: int, app: Celeriac | None = None,
        **options: Any,
    ) -> None:  # fmt: skip
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"chunks needs a chunk size of at least 1, not {n!r}")
        parts = {"task": _as_step(task, app), "it": [list(item) for item in it], "n": n}
        super().__init__("celeriac.chunks", (), parts, options, "chunks", app=app)

    def group(self) -> group:
        """The group of ``starmap`` tasks this stands for."""
        task, items, n = self.kwargs["task"], self.kwargs["it"], self.kwargs["n"]
        parts = [xstarmap(task, items[i : i + n], self._app) for i in range(0, len(items), n)]
        return group(parts, app=self._app, **self.options)

    def apply_async(
        self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:  # fmt: skip
        """Send the chunks as a group; returns its GroupResult."""
        return self.group().apply_async(args, kwargs, **options)

    def apply(
        self, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:  # fmt: skip
        """Run the chunks here; returns a GroupResult."""
        return self.group().apply(args, kwargs, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)


def xmap(task: Mapping[str, Any], it: Iterable[Any], app: Celeriac | None = None) -> Signature:
    """One message that calls ``task(item)`` for each item, on one worker."""
    parts = {"task": plain(task), "it": list(it)}
    return Signature("celeriac.map", (), parts, subtask_type="xmap", immutable=True, app=app)


def xstarmap(task: Mapping[str, Any], it: Iterable[Any], app: Celeriac | None = None) -> Signature:
    """One message that calls ``task(*args)`` for each args tuple, on one worker."""
    parts = {"task": plain(task), "it": [list(item) for item in it]}
    kind = "xstarmap"
    return Signature("celeriac.starmap", (), parts, subtask_type=kind, immutable=True, app=app)

# -- from data ---------------------------------------------------------------------------


def _parts(data: Mapping[str, Any], key: str) -> Any:
    """A part of a canvas dict, refusing a dict that is not one."""
    parts = data.get("kwargs")
    if not isinstance(parts, Mapping) or key not in parts:
        raise TypeError(f"not a {data.get('subtask_type')} signature (no {key!r}): {data!r}")
    return parts[key]


def _steps(data: Mapping[str, Any], app: Celeriac | None) -> list[Signature]:
    tasks = _parts(data, "tasks")
    if not isinstance(tasks, list):
        raise TypeError(f"a canvas's tasks must be a list, not {tasks!r}")
    return [signature(task, app=app) for task in tasks]


KINDS.update(
    chain=lambda d, app: chain(*_steps(d, app), app=app, **(d.get("options") or {})),
    group=lambda d, app: group(_steps(d, app), app=app, **(d.get("options") or {})),
    chord=lambda d, app: chord(
        signature(_parts(d, "header"), app=app),
        None if _parts(d, "body") is None else signature(_parts(d, "body"), app=app),
        app=app,
        **(d.get("options") or {}),
    ),
    chunks=lambda d, app: chunks(
        _parts(d, "task"), _parts(d, "it"), _parts(d, "n"), app=app, **(d.get("options") or {})
    ),
)

def with_tail(sig: Signature, tail: Mapping[str, Any]) -> Signature:
    """A copy whose result-producing task carries ``tail`` (its group and chord options)."""
    copy = sig.clone()
    if isinstance(copy, chain) and copy.tasks:
        copy.tasks[-1] = with_tail(copy.tasks[-1], tail)
    elif isinstance(copy, chord):
        copy.kwargs["body"] = with_tail(copy.body, tail)
    elif isinstance(copy, group | chunks):
        raise TypeError("a chord header member cannot end with a group; use a chord")
    else:
        copy.options.update(tail)
    return copy

# -- helpers -----------------------------------------------------------------------------


def _as_step(value: Any, app: Celeriac | None) -> Signature:
    """A canvas part as a signature; chunks become their group."""
    if not isinstance(value, Mapping):
        raise TypeError(f"a canvas is made of signatures (add.s(...)), not {value!r}")
    step = signature(value, app=app)
    return step.group() if isinstance(step, chunks) else step


def _flattened(inner: group) -> list[Signature]:
    """The members of a group inside a group, each with the inner group's options."""
    options = {key: value for key, value in inner.options.items() if key != "task_id"}
    if not options:
        return list(inner.tasks)
    members = [member.clone() for member in inner.tasks]
    for member in members:
        member._prepare(options)
    return members


def _chain_of(steps: list[Signature], app: Celeriac | None) -> Signature:
    """One step as itself, several as a chain."""
    return steps[0] if len(steps) == 1 else chain(*steps, app=app)


def _first_of(result: Any) -> Any:
    """The earliest result of a chain of results (the one whose parent is set next)."""
    while getattr(result, "parent", None) is not None:
        result = result.parent
    return result

# -- the built-in tasks behind map and starmap ------------------------------------------------


def _map(self: Task[Any, Any], task: Mapping[str, Any], it: list[Any]) -> list[Any]:
    """celeriac.map: call a task on each item, in this worker."""
    fn = signature(task, app=self.app)
    return [fn(item) for item in it]


def _starmap(self: Task[Any, Any], task: Mapping[str, Any], it: list[Any]) -> list[Any]:
    """celeriac.starmap: call a task on each args list, in this worker."""
    fn = signature(task, app=self.app)
    return [fn(*item) for item in it]


def register_builtins(sender: Any, **_: Any) -> None:
    """Register celeriac.map and celeriac.starmap with an app as it finalizes."""
    for name, fn in (("celeriac.map", _map), ("celeriac.starmap", _starmap)):
        if name not in sender.tasks:
            sender.task(name=name, bind=True)(fn)


signals.import_modules.connect(register_builtins)
