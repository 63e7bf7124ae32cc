"""What follows a task's outcome: callbacks, the next chain step, chord accounting.

``celeriac.worker.execute.describe_outcome`` calls ``after_outcome`` only for a message carrying
``callbacks``, ``errbacks``, ``chain`` or ``chord``; eager mode calls ``after_eager_outcome``.
It runs in the pool process before the consumer stores the task's result and acks it, so a
worker that dies in between runs the task again and sends again (at least once), and the chord
accounting below makes that harmless for a chord. For the same reason, a step that fails for
want of the broker (a ``TransportError``) makes ``after_outcome`` return False: the consumer
then gives the message back instead of acknowledging it, and the task runs again rather than
its callbacks, next step or chord part being lost.

- Success: each callback (``link``) is applied with the result as its first argument, then the
  next chain step is; all in one publish.
- Failure (or a ``Reject`` that dead-letters): errbacks run (in this process with ``(request,
  exc, traceback)`` when the errback task takes three arguments, Celery's new style; else sent
  with the task id), the chain's remaining tasks are stored as failed with the same error (so
  ``get()`` on the last raises instead of waiting forever), and a chord header task fails its
  chord.

Chord accounting, per chord (group id G, header of n tasks), under transport keys:

- ``celeriac-chord-G-<index>``: the header task's state and result. A put: a redelivered task
  writes it again, which changes nothing.
- ``celeriac-chord-G-count``: incremented after each put. It only triggers the check: at n or
  more, the parts are read, and the chord is complete when all n are there. A redelivered task
  counts twice; that only makes the check run again.
- ``celeriac-chord-G-body``, on the broker: whoever finds the chord complete publishes the
  body with ``publish_once`` under this key, which publishes and sets the key in one atomic
  step unless the key exists. So the body is sent once however often header tasks run and
  however many find the chord complete at the same moment, and a process that dies before
  sending it leaves it to the header task's next run.
- ``celeriac-chord-G-done``: on failure, incremented by each header task that finds the chord
  failed; every one stores the chord's failure, only the one that gets 1 runs the errbacks.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from celeriac import states
from celeriac.backend import meta_key
from celeriac.canvas import chain
from celeriac.errors import ChordError, TransportError
from celeriac.result import EagerResult, GroupResult
from celeriac.signature import Prepared, Signature, publish, publish_once, signature
from celeriac.task import Request

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.message import Message
    from celeriac.trace import Outcome

logger = logging.getLogger("celeriac.worker")


def after_outcome(app: Celeriac, message: Message, hostname: str, outcome: Outcome) -> bool:
    """Send what follows a finished task (never raises).

    Returns False when a step failed because the broker did (see above): the task should run
    again. Any other error is logged, and the task's own result still stored.
    """
    done = True
    if outcome.state == states.SUCCESS:
        done &= _guard(message, "callbacks and the next step", _send_next, app, message,
                       outcome.result)  # fmt: skip
        if message.chord:
            done &= _guard(message, "chord accounting", _chord_part, app, message, outcome)
    elif _ends_in_failure(outcome):
        exc, tb = outcome.result, outcome.traceback
        if message.errbacks:
            request = Request.from_message(message, hostname, {"routing_key": message.queue}, False)
            done &= _guard(message, "errbacks", run_errbacks, app, message.errbacks, request,
                           exc, tb)  # fmt: skip
        if message.chain:
            done &= _guard(message, "failing the chain", _mark_failed, app, message.chain,
                           exc, tb)  # fmt: skip
        if message.chord:
            done &= _guard(message, "chord accounting", _chord_part, app, message, outcome)
    return done


def after_eager_outcome(
    app: Celeriac, message: Message, request: Request, outcome: Outcome
) -> None:
    """Eager mode: run callbacks, the rest of the chain, or errbacks here and now."""
    if outcome.state == states.SUCCESS:
        for callback in message.callbacks or ():
            signature(callback, app=app).apply((outcome.result,))
        if message.chain:
            steps = [signature(step, app=app) for step in reversed(message.chain)]
            chain(*steps, app=app).apply((outcome.result,))
    elif _ends_in_failure(outcome):
        errbacks = message.errbacks
        run_errbacks(app, errbacks, request, outcome.result, outcome.traceback, eager=True)


def _ends_in_failure(outcome: Outcome) -> bool:
    """A failure, or a rejection that dead-letters the message: nothing more will run."""
    return outcome.state == states.FAILURE or (
        outcome.state == states.REJECTED and not outcome.requeue
    )


def _guard(message: Message, what: str, step: Callable[..., Any], *args: Any) -> bool:
    """Run one follow-up step; False if the broker failed it (the task should run again)."""
    try:
        step(*args)
    except TransportError:
        logger.exception("Task %s[%s]: %s failed; the task will run again", *_who(message), what)
        return False
    except Exception:
        logger.exception("Task %s[%s]: %s failed", message.task, message.id, what)
    return True


def _parent_ids(message: Message) -> dict[str, Any]:
    """The ids every message sent after ``message`` carries: it is their parent."""
    return {"parent_id": message.id, "root_id": message.root_id or message.id}


def _send_next(app: Celeriac, message: Message, value: Any) -> None:
    """Apply the callbacks and the next chain step with the task's return value."""
    now = _parent_ids(message)
    prepared: list[Prepared] = []
    for callback in message.callbacks or ():
        try:
            prepared += _start(app, callback, (value,), now)
        except Exception:
            logger.exception("Task %s[%s]: callback %r not sent", *_who(message), callback)
    if message.chain:
        try:
            step = signature(message.chain[-1], app=app)
            prepared += step._messages(app, (value,), None, now, message.chain[-2::-1], None)
        except Exception as exc:
            logger.exception("Task %s[%s]: the next chain step failed", message.task, message.id)
            _mark_failed(app, message.chain, exc, None)
    publish(app, prepared)


def _start(
    app: Celeriac, data: Mapping[str, Any], args: Iterable[Any], now: Mapping[str, Any]
) -> list[Prepared]:
    """The messages that start a signature dict found in a message (a callback, a body)."""
    sig = signature(data, app=app)
    sig._prepare({})
    sig.freeze()
    return sig._messages(app, args, None, now, [], None)


def _leaf_ids(data: Mapping[str, Any], app: Celeriac | None = None) -> list[str]:
    """The task ids frozen inside a signature dict (the results it would produce)."""
    return [leaf.id for leaf in signature(data, app=app)._leaves() if leaf.id]


def _mark_failed(
    app: Celeriac, steps: Iterable[Mapping[str, Any]], exc: BaseException, tb: str | None
) -> None:
    """Store FAILURE for every task of ``steps``, which will never run."""
    for step in steps:
        for task_id in _leaf_ids(step, app):
            app.results.store(task_id, states.FAILURE, exc, traceback=tb)


# -- errbacks -------------------------------------------------------------------------------


def run_errbacks(
    app: Celeriac,
    errbacks: Iterable[Mapping[str, Any]] | None,
    request: Request,
    exc: BaseException,
    tb: str | None,
    eager: bool = False,
) -> None:
    """Call new-style errbacks here with (request, exc, traceback); send the others the id."""
    by_id: list[Signature] = []
    for data in errbacks or ():
        try:
            errback = signature(data, app=app)
            if _takes_request(app, errback):
                errback(request, exc, tb)
            else:
                by_id.append(errback)
        except Exception:
            logger.exception("Task %s[%s]: errback %r failed", request.task, request.id, data)
    if not by_id:
        return
    if eager:
        for errback in by_id:
            errback.apply((request.id,))
        return
    now = {"parent_id": request.id, "root_id": request.root_id or request.id}
    publish(app, [m for errback in by_id for m in _start(app, errback, (request.id,), now)])


def _takes_request(app: Celeriac, errback: Signature) -> bool:
    """True for a task here whose function takes (request, exc, traceback) after its partial
    arguments: Celery's new-style errback."""
    if type(errback) is not Signature or errback.immutable:
        return False
    task = app.tasks.get(errback.task)
    if task is None:
        return False
    try:
        parameters = inspect.signature(task.run).parameters.values()
    except (TypeError, ValueError):
        return False
    kinds = [p.kind for p in parameters]
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        return True
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    count = sum(kind in positional for kind in kinds) - (1 if task.bind else 0)
    return count - len(errback.args) >= 3


# -- chords ---------------------------------------------------------------------------------


def _chord_key(group_id: str, part: int | str) -> str:
    return f"celeriac-chord-{group_id}-{part}"


def _chord_part(app: Celeriac, message: Message, outcome: Outcome) -> None:
    """Record one header task's outcome; complete the chord if it was the last (see above)."""
    body, group_id, index = message.chord or {}, message.group, message.group_index
    size = body.get("chord_size")
    if group_id is None or index is None or not isinstance(size, int) or not 0 <= index < size:
        logger.error("Task %s[%s]: chord message without a group, index or size", *_who(message))
        return
    store, keys = app.results, app.results.transport
    ttl = store.expires or None
    meta = store.build_meta(
        message.id, outcome.state, outcome.result, outcome.traceback, name=message.task
    )
    keys.put(_chord_key(group_id, index), store.encode_meta(meta), ttl)
    failed: dict[str, Any] | None = None
    values: list[Any] = []
    if outcome.state == states.SUCCESS:
        if keys.incr(_chord_key(group_id, "count"), 1, ttl) < size:
            return
        parts = _read_parts(app, group_id, size)
        if parts is None:
            return  # a part is still missing: the task that writes it completes the chord
        failed = next((part for part in parts if part.get("status") != states.SUCCESS), None)
        values = [part.get("result") for part in parts]
    else:
        failed = meta
    if failed is None:
        _send_body(app, message, body, values, _chord_key(group_id, "body"), ttl)
    else:
        _fail_chord(app, message, body, failed, _chord_key(group_id, "done"), ttl)


def _read_parts(app: Celeriac, group_id: str, size: int) -> list[dict[str, Any]] | None:
    """Every header task's stored outcome, in header order; None if one is missing."""
    keys = app.results.transport
    parts = []
    for index in range(size):
        raw = keys.get(_chord_key(group_id, index))
        if raw is None:
            return None
        parts.append(app.results.decode(raw))
    return parts


def _send_body(
    app: Celeriac,
    message: Message,
    body: dict[str, Any],
    values: list[Any],
    key: str,
    ttl: float | None,
) -> None:
    """Publish the chord's body with the header's results, once per chord (``key``).

    A body that cannot be built or encoded is stored as failed; a broker error propagates
    (the header task runs again, and sends the body if no one else did).
    """
    try:
        prepared = _start(app, body, (values,), _parent_ids(message))
    except Exception as exc:
        logger.exception("Task %s[%s]: the chord body could not be sent", *_who(message))
        _mark_failed(app, [body], exc, None)
        return
    publish_once(app, key, prepared, ttl)


def _fail_chord(
    app: Celeriac,
    message: Message,
    body: dict[str, Any],
    failed: dict[str, Any],
    key: str,
    ttl: float | None,
) -> None:
    """Store the chord's failure for the body's tasks and run its errbacks, once.

    The first header task to count itself at ``key`` does both. A later one stores the
    failure only if none is stored yet: the first may have died before storing it (its
    errbacks are then lost, never the failure a client waits for).
    """
    error = _chord_error(message.group, failed)
    tb = failed.get("traceback")
    if app.results.transport.incr(key, 1, ttl) != 1:
        stored = [app.results.transport.get(meta_key(i)) for i in _leaf_ids(body, app)[:1]]
        if None in stored:
            _mark_failed(app, [body], error, tb)
        return
    _mark_failed(app, [body], error, tb)
    request = _body_request(signature(body, app=app), message)
    run_errbacks(app, _errbacks_of(body, app), request, error, tb)


def _chord_error(group_id: str | None, failed: Mapping[str, Any]) -> ChordError:
    """The error a chord fails with, naming the header task that failed and why."""
    exc = failed.get("result")
    reason = exc.get("exc_type", "Exception") if isinstance(exc, Mapping) else "Exception"
    if isinstance(exc, Mapping) and exc.get("exc_message"):
        reason += f": {exc['exc_message']}"
    task = f"{failed.get('name') or 'task'}[{failed.get('task_id')}]"
    return ChordError(f"chord {group_id}: header task {task} failed: {reason}")


def _errbacks_of(body: Mapping[str, Any], app: Celeriac) -> list[dict[str, Any]]:
    """The errbacks of the body's tasks, each once (a chain body's are on every step)."""
    found: list[dict[str, Any]] = []
    for leaf in signature(body, app=app)._leaves():
        for errback in leaf.options.get("link_error") or ():
            if errback not in found:
                found.append(errback)
    return found


def _body_request(body: Signature, message: Message) -> Request:
    """The request a chord body would have run under (for its errbacks)."""
    first = next(body._leaves(), body)
    return Request(
        id=first.id, task=first.task, args=list(first.args), kwargs=dict(first.kwargs),
        group=message.group, root_id=message.root_id, parent_id=message.id,
    )  # fmt: skip


def eager_chord_body(app: Celeriac, body: Signature, header: GroupResult) -> Any:
    """Eager mode: run a chord's body with the header's results, or fail the chord."""
    failed = next((r for r in header.results if not r.successful()), None)
    if failed is None:
        return body.apply((header.get(),))
    exc = failed.result
    failed_meta = {"task_id": failed.id, "name": failed.name, "result": _names(exc)}
    error = _chord_error(header.id, failed_meta)
    first = next(body._leaves(), body)
    request = Request(id=first.id, task=first.task, group=header.id, is_eager=True)
    run_errbacks(app, _errbacks_of(body, app), request, error, None, eager=True)
    meta = {"task_id": first.id, "status": states.FAILURE, "result": error, "traceback": None}
    return EagerResult(first.id or str(uuid.uuid4()), meta, app, first.task)


def _names(exc: Any) -> dict[str, str]:
    """An exception as the names a stored failure keeps."""
    return {"exc_type": type(exc).__name__, "exc_message": str(exc)}


def _who(message: Message) -> tuple[str, str]:
    return message.task, message.id
