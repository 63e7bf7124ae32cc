"""Plain calls: ``delay()`` and ``apply_async()`` without options, sent from a template.

Most messages are plain calls of a task from outside any task, and their envelopes differ
only in the task id, the arguments and the arguments' reprs. For each task (and queue) the
envelope of such a call is encoded once, by ``message.encode`` from a sample ``Message``
whose variable parts are unique marks, and kept as text with holes where the marks were; a
call fills the holes. Both ways give the same bytes (a test holds them to it), and the
template way costs a fifth as much.

A call takes the general way, through ``Message``, when it is not plain: options given, a
parent task running, a receiver on ``before_task_publish`` or ``after_task_publish``,
``task_send_sent_event``, a serializer other than JSON, ``expires`` or ``concurrency_key``
on the task, keyword names that are not all strings, or arguments JSON cannot carry (the
general way then raises its own, fuller error). A template is kept with what it was made
from (the settings' generation, the process id in ``origin``, the task's options) and made
again when any of that changes.

``Task.apply_async`` sends a plain call with ``send``: the task's template and a publisher
bound to its queue (``Transport.publisher``, its checks and key names made once), kept with
the broker they were made for; ``send_task`` and ``send_many`` fill templates with
``prepare``. A task whose route is a function, or ``task_always_eager``, takes the way
through ``send_task``.
"""

from __future__ import annotations

from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any

from celeriac import pid, signals
from celeriac.errors import SerializationError
from celeriac.message import Message, encode, new_id, short_repr
from celeriac.result import AsyncResult
from celeriac.routing import check_call_arguments, route_queue
from celeriac.serialization import json_text
from celeriac.task import current_request

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.task import Task


class Envelope:
    """The encoded envelope of one task's plain calls, with holes for a call's own parts."""

    def __init__(self, sample: Message) -> None:
        """Encode ``sample`` with unique marks for its variable parts and cut them out;
        ValueError if the text does not hold each mark where expected."""
        self.queue, self.priority = sample.queue, sample.priority
        mark = new_id().replace("-", "")
        task_id, arg, key = "i" + mark, "a" + mark, "k" + mark
        marked = sample.replace(
            id=task_id, root_id=task_id, correlation_id=task_id, args=(arg,), kwargs={key: 0},
            argsrepr="r" + mark, kwargsrepr="w" + mark,
        )  # fmt: skip
        text = encode(marked, "json").decode("utf-8")
        holes = [  # (the marked text, the value that fills it, how often it is there)
            (task_id, 0, 3),  # id, root_id, correlation_id
            (f'"r{mark}"', 1, 1),
            (f'"w{mark}"', 2, 1),
            (f'["{arg}"],{{"{key}":0}}', 3, 1),  # the body's args and kwargs
        ]
        found: list[tuple[int, int, int]] = []  # (where, how long, which value)
        for marked_text, value, count in holes:
            if text.count(marked_text) != count:
                raise ValueError(f"the envelope of {sample.task!r} does not hold its marks")
            at = -1
            for _ in range(count):
                at = text.index(marked_text, at + 1)
                found.append((at, len(marked_text), value))
        #: the text cut at its holes, a hole left as "" in between; where each value goes
        self._pieces: list[str] = []
        self._holes: list[tuple[int, int]] = []
        end = 0
        for at, length, value in sorted(found):
            self._pieces += [text[end:at], ""]
            self._holes.append((len(self._pieces) - 1, value))
            end = at + length
        self._pieces.append(text[end:])

    def fill(self, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        """The envelope of one call; SerializationError or UnicodeEncodeError if JSON or UTF-8
        cannot carry the arguments."""
        values = (
            task_id,
            encode_basestring(short_repr(args)) if args else '"()"',
            encode_basestring(short_repr(kwargs)) if kwargs else '"{}"',
            json_text([args, kwargs])[1:-1],
        )
        pieces = self._pieces.copy()  # joined, a fifth of the cost of str.format on the text
        for at, value in self._holes:
            pieces[at] = values[value]
        return "".join(pieces).encode("utf-8")


class Batch:
    """What the plain calls of one batch (``send_many``) look up once: each task's template,
    unless a route is a function, which may send each call elsewhere."""

    def __init__(self, app: Celeriac) -> None:
        self.per_call = _routes_per_call(app.conf.task_routes)
        self.found: dict[tuple[str, int], Envelope | None] = {}


def _routes_per_call(routes: Any) -> bool:
    """Whether ``task_routes`` holds a function, which may route each call elsewhere."""
    return callable(routes) or (
        isinstance(routes, list | tuple) and any(callable(route) for route in routes)
    )


class PlainCalls:
    """An app's templates, one per task and queue."""

    def __init__(self, app: Celeriac) -> None:
        self.app = app
        self._kept: dict[tuple[str, str], tuple[tuple[Any, ...], Envelope | None]] = {}
        #: Per task (by id): what it was made from, its envelope and its queue's publisher;
        #: no envelope when the task's plain calls cannot go this way (``send``).
        self._ready: dict[int, tuple[tuple[Any, ...], Envelope | None, Any]] = {}

    def send(
        self, task: Task[Any, Any], args: Any, kwargs: dict[str, Any] | None
    ) -> AsyncResult[Any] | None:
        """Publish a plain call of ``task`` from its template with its queue's publisher, the
        shortest way from ``delay()`` to the broker; None when the call is not plain (nothing
        is sent), or when the task's route is a function or ``task_always_eager`` is on.
        """
        if current_request() is not None or signals.before_task_publish:
            return None
        if signals.after_task_publish or (kwargs and not all(type(k) is str for k in kwargs)):
            return None
        app = self.app
        ready = self._ready.get(id(task))
        if ready is None or ready[0] != self._made_from(task):
            ready = self._make_ready(task)
        _, envelope, publish = ready
        if envelope is None:
            return None
        if type(args) is not tuple or (kwargs is not None and type(kwargs) is not dict):
            check_call_arguments(task.name, args, kwargs)  # delay() passes these types
        task_id = new_id()
        try:
            body = envelope.fill(task_id, tuple(args or ()), kwargs or {})
        except (SerializationError, UnicodeEncodeError):
            return None
        publish(body)
        return AsyncResult(task_id, app, task.name)

    def _made_from(self, task: Task[Any, Any]) -> tuple[Any, ...]:
        """What ``send``'s entry for ``task`` depends on: the settings' generation, the
        process, the broker (closed and opened again, it is another) and the task's options."""
        app = self.app
        return (app.conf.generation, pid.current(), app._broker, task.queue, *_options(task))

    def _make_ready(self, task: Task[Any, Any]) -> tuple[tuple[Any, ...], Envelope | None, Any]:
        conf, envelope, publish = self.app.conf, None, None
        if not conf.task_always_eager and not _routes_per_call(conf.task_routes):
            queue = route_queue(self.app, task.name, task, (), {}, {})
            envelope = self._envelope(task.name, task, queue)
            if envelope is not None:
                publish = self.app.broker.publisher(envelope.queue, envelope.priority)
        ready = self._ready[id(task)] = (self._made_from(task), envelope, publish)
        return ready

    def prepare(
        self,
        name: str,
        task: Task[Any, Any] | None,
        args: Any,
        kwargs: dict[str, Any] | None,
        batch: Batch | None = None,
    ) -> tuple[Envelope, str, bytes] | None:
        """``(envelope, task id, body)`` for a plain call with no options; None: not plain.

        The envelope tells the queue and priority to publish with."""
        if current_request() is not None or signals.before_task_publish:
            return None
        if signals.after_task_publish or (kwargs and not all(type(k) is str for k in kwargs)):
            return None
        key = (name, id(task))
        if batch is not None and key in batch.found:
            envelope = batch.found[key]
        else:
            queue = route_queue(self.app, name, task, args, kwargs, {})
            envelope = self._envelope(name, task, queue)
            if batch is not None and not batch.per_call:
                batch.found[key] = envelope
        if envelope is None:
            return None
        task_id = new_id()
        try:
            body = envelope.fill(task_id, tuple(args or ()), kwargs or {})
        except (SerializationError, UnicodeEncodeError):
            return None
        return envelope, task_id, body

    def _envelope(self, name: str, task: Task[Any, Any] | None, queue: str) -> Envelope | None:
        """The template for ``name`` on ``queue``, made again when what it came from changed."""
        made_from = (self.app.conf.generation, pid.current(), *_options(task))
        kept = self._kept.get((name, queue))
        if kept is not None and kept[0] == made_from:
            return kept[1]
        envelope = self._make(name, task, queue)
        self._kept[(name, queue)] = (made_from, envelope)
        return envelope

    def _make(self, name: str, task: Task[Any, Any] | None, queue: str) -> Envelope | None:
        conf = self.app.conf
        serializer = (task and task.serializer) or conf.task_serializer
        if serializer != "json" or conf.task_send_sent_event:
            return None
        if task is not None and (task.expires is not None or task.concurrency_key is not None):
            return None
        try:
            return Envelope(self.app.build_message(name, (), {}, task=task, queue=queue))
        except ValueError:  # not seen: a template that cannot be cut leaves the general way
            return None


def _options(task: Task[Any, Any] | None) -> tuple[Any, ...]:
    """What a template takes from the task."""
    if task is None:
        return ()
    return (
        task.priority, task.time_limit, task.soft_time_limit, task.ignore_result,
        task.expires, task.serializer, task.concurrency_key,
    )  # fmt: skip
