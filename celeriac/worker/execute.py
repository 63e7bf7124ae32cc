"""Run one message in a pool process and describe what the consumer must do with it.

This is the per-message hot path, read top to bottom: find the task, build the request,
run it, and encode what to store and what to publish next. It touches the broker only for
``track_started``; storing and acknowledging happen in the consumer, which holds the lease.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeriac import states
from celeriac.backend import format_traceback, safe_str
from celeriac.errors import NotRegistered
from celeriac.message import PLAIN_TYPES, Message, encode
from celeriac.task import Request
from celeriac.trace import IGNORED, Outcome, trace_task
from celeriac.workflow import after_outcome

if TYPE_CHECKING:
    from celeriac.app import Celeriac

_short = reprlib.Repr()
_short.maxstring = 200
_short.maxother = 200
#: The longest repr of a plain result that reprlib leaves as it is.
_SHORT_NUMBER = _short.maxlong


@dataclass(slots=True)
class JobDone:
    """What a pool sends back for one job; small and picklable."""

    job_id: int
    state: str
    runtime: float = 0.0
    #: encoded meta to store under the task's result key (None: store nothing)
    meta: bytes | None = None
    #: short text for the log line: the result's repr or the exception
    summary: str = ""
    #: for RETRY: the next attempt's body and due time
    retry_body: bytes | None = None
    retry_due: float | None = None
    #: for REJECTED: a dead-letter reason, or requeue
    reason: str | None = None
    requeue: bool = False
    #: for FAILURE and RETRY: the traceback text (for task events)
    traceback: str | None = None
    #: what follows the task (callbacks, chain, chord) failed for want of the broker: give the
    #: message back so that the task runs again (celeriac.workflow)
    redeliver: bool = False
    #: never started: its lease ran out while it waited (the broker gives it to another worker)
    skipped: bool = False


def run_message(
    app: Celeriac, job_id: int, message: Message, hostname: str, delivery: dict[str, Any]
) -> JobDone:
    """Execute a decoded, accepted message and return what to store, ack or publish."""
    try:
        task = app.get_task(message.task)
    except NotRegistered:
        return JobDone(job_id, states.REJECTED, reason="unknown_task", summary=message.task)
    request = Request.from_message(message, hostname, delivery, eager=False)
    if task.track_started or (task.track_started is None and app.conf.task_track_started):
        app.results.store(message.id, states.STARTED, {"hostname": hostname, "pid": _pid()})
    outcome = trace_task(task, request)
    return describe_outcome(app, job_id, message, hostname, outcome)


def failed_job(app: Celeriac, job_id: int, message: Message, exc: BaseException) -> JobDone:
    """A FAILURE for a job whose execution broke outside the task (never ack without one)."""
    meta = app.results.build_meta(
        message.id, states.FAILURE, exc, format_traceback(exc), name=message.task
    )
    summary = f"{type(exc).__name__}({safe_str(exc)})"
    return JobDone(job_id, states.FAILURE, meta=app.results.encode_meta(meta), summary=summary)


def describe_outcome(
    app: Celeriac, job_id: int, message: Message, hostname: str, outcome: Outcome
) -> JobDone:
    """Turn an outcome into the consumer's instructions."""
    done = JobDone(job_id, outcome.state, outcome.runtime)
    if message.callbacks or message.errbacks or message.chain or message.chord:
        # canvas: callbacks, next step, chord
        done.redeliver = not after_outcome(app, message, hostname, outcome)
    if outcome.state == states.SUCCESS:
        done.summary = _summary(outcome.result)
    elif outcome.state in (states.FAILURE, states.RETRY):
        done.summary = f"{type(outcome.result).__name__}({safe_str(outcome.result)})"
        done.traceback = outcome.traceback
    if outcome.state == states.RETRY and outcome.retry_message is not None:
        nxt = outcome.retry_message
        done.retry_body = encode(nxt, app.conf.task_serializer)
        done.retry_due = nxt.due_timestamp()
    if outcome.state == states.REJECTED:
        done.reason = str(getattr(outcome.result, "reason", "rejected"))
        done.requeue = outcome.requeue
    if _should_store(app, message, outcome):
        results = app.results
        done.meta = results.encode_meta(
            results.build_meta(
                message.id,
                outcome.state,
                outcome.result,
                outcome.traceback,
                **_extended(app, message, hostname),
            )
        )
    return done


def _summary(value: Any) -> str:
    """A result's repr for the log and events, elided past 200 characters."""
    if type(value) in PLAIN_TYPES:
        text = repr(value)  # what reprlib writes for these when short, at a fraction of its cost
        if len(text) <= _SHORT_NUMBER:
            return text
    return _short.repr(value)


def _should_store(app: Celeriac, message: Message, outcome: Outcome) -> bool:
    if outcome.state in (IGNORED, states.REJECTED):
        return False
    if not message.ignore_result:
        return True
    errors_too = app.conf.task_store_errors_even_if_ignored
    return bool(errors_too) and outcome.state == states.FAILURE


def _extended(app: Celeriac, message: Message, hostname: str) -> dict[str, Any]:
    """The extra fields stored with a result."""
    extra: dict[str, Any] = {
        "name": message.task,
        "worker": hostname,
        "retries": message.retries,
        "queue": message.queue,
        "parent_id": message.parent_id,
        "root_id": message.root_id,
    }
    if app.conf.result_extended:
        extra["args"] = list(message.args)
        extra["kwargs"] = dict(message.kwargs)
    return extra


def _pid() -> int:
    import os

    return os.getpid()
