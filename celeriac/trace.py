"""Running one task under its request: the outcome a worker (or eager mode) acts on."""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import signal
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeriac import signals, states
from celeriac.backend import format_traceback
from celeriac.errors import Ignore, Reject, Retry, SoftTimeLimitExceeded
from celeriac.task import Request, Task, pop_request, push_request

if TYPE_CHECKING:
    import asyncio

    from celeriac.message import Message
    from celeriac.result import EagerResult

IGNORED = "IGNORED"  #: the task raised Ignore: store nothing


@dataclass(slots=True)
class Outcome:
    """What running a task came to: a state, a value or an exception, and what to do next."""

    state: str
    result: Any = None
    traceback: str | None = None
    runtime: float = 0.0
    #: for RETRY: the message of the next attempt
    retry_message: Message | None = None
    #: for REJECTED: put the message back instead of dead-lettering it
    requeue: bool = False


_loops = threading.local()


def thread_loop() -> asyncio.AbstractEventLoop:
    """This thread's event loop for ``async def`` tasks, made once and kept."""
    import asyncio  # here: most workers never run a coroutine, and its import is 40 ms

    loop: asyncio.AbstractEventLoop | None = getattr(_loops, "loop", None)
    if loop is None or loop.is_closed():
        loop = _loops.loop = asyncio.new_event_loop()
    return loop


@contextlib.contextmanager
def soft_time_limit(seconds: float | None) -> Iterator[None]:
    """Give the tasks called in this thread a soft time limit (see ``call_task``)."""
    _loops.soft = seconds
    try:
        yield
    finally:
        _loops.soft = None


def call_task(task: Task[Any, Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Call the function; a coroutine function runs to completion on this thread's loop.

    The soft time limit raises ``SoftTimeLimitExceeded`` inside the task: a coroutine is
    cancelled by the loop's timeout; a plain function is interrupted by SIGALRM, which only
    the main thread can receive (threads cannot be interrupted; their limit is not enforced).
    """
    soft = getattr(_loops, "soft", None)
    if soft and not inspect.iscoroutinefunction(task.run):
        with _alarm(soft):
            value = task.run(task, *args, **kwargs) if task.bind else task.run(*args, **kwargs)
    else:  # no alarm to set: most tasks, and the cost of the check and the context per task
        value = task.run(task, *args, **kwargs) if task.bind else task.run(*args, **kwargs)
    if inspect.iscoroutine(value):
        return thread_loop().run_until_complete(_within(value, soft) if soft else value)
    return value


async def _within(coro: Coroutine[Any, Any, Any], seconds: float) -> Any:
    """Await ``coro``; past ``seconds`` it is cancelled and SoftTimeLimitExceeded raised."""
    import asyncio

    try:
        async with asyncio.timeout(seconds) as scope:
            return await coro
    except TimeoutError:
        if scope.expired():
            raise SoftTimeLimitExceeded(f"soft time limit ({seconds}s) exceeded") from None
        raise


@contextlib.contextmanager
def _alarm(seconds: float | None) -> Iterator[None]:
    """Raise SoftTimeLimitExceeded in the main thread after ``seconds``."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise SoftTimeLimitExceeded(f"soft time limit ({seconds}s) exceeded")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def trace_task(task: Task[Any, Any], request: Request) -> Outcome:
    """Run ``task`` under ``request`` with signals, retries and error capture."""
    token, started = _begin(task, request)
    try:
        outcome = _run(task, request)
    finally:
        pop_request(token)
    return _end(task, request, outcome, started)


def _run(task: Task[Any, Any], request: Request) -> Outcome:
    """Call the task and classify how it ended."""
    try:
        value = call_task(task, request.args, request.kwargs)
    except BaseException as exc:  # SystemExit in a task is its failure, not the worker's exit
        return classify_error(task, request, exc)
    return succeeded(task, value)


async def trace_task_async(task: Task[Any, Any], request: Request) -> Outcome:
    """``trace_task`` for the asyncio pool: a coroutine task is awaited on the running loop."""
    token, started = _begin(task, request)
    try:
        fn, args = (task.run, [task, *request.args]) if task.bind else (task.run, request.args)
        value = fn(*args, **request.kwargs)
        if inspect.iscoroutine(value):
            value = await value
    except BaseException as exc:
        outcome = classify_error(task, request, exc)
    else:
        outcome = succeeded(task, value)
    finally:
        pop_request(token)
    return _end(task, request, outcome, started)


def _begin(task: Task[Any, Any], request: Request) -> tuple[contextvars.Token[Any], float]:
    """Make the request current and send task_prerun; the token and the start time."""
    token = push_request(task, request)
    signals.task_prerun.send(
        sender=task, task_id=request.id, task=task, args=request.args, kwargs=request.kwargs
    )
    return token, time.perf_counter()


def _end(task: Task[Any, Any], request: Request, outcome: Outcome, started: float) -> Outcome:
    """Record the runtime and send task_postrun."""
    outcome.runtime = time.perf_counter() - started
    signals.task_postrun.send(
        sender=task, task_id=request.id, task=task, args=request.args, kwargs=request.kwargs,
        retval=outcome.result, state=outcome.state,
    )  # fmt: skip
    return outcome


def succeeded(task: Task[Any, Any], value: Any) -> Outcome:
    """The outcome of a task that returned."""
    signals.task_success.send(sender=task, result=value)
    return Outcome(states.SUCCESS, value)


def classify_error(task: Task[Any, Any], request: Request, exc: BaseException) -> Outcome:
    """The outcome of a task that raised: a retry, a rejection, or a failure."""
    if isinstance(exc, Retry):
        return _retried(task, request, exc)
    if isinstance(exc, Ignore):
        return Outcome(IGNORED)
    if isinstance(exc, Reject):
        return Outcome(states.REJECTED, exc, requeue=exc.requeue)
    if task.autoretry_for and isinstance(exc, task.autoretry_for):
        return _autoretry(task, request, exc)  # type: ignore[arg-type]
    return _failed(task, request, exc)


def _autoretry(task: Task[Any, Any], request: Request, exc: Exception) -> Outcome:
    """Retry after an exception listed in ``autoretry_for``, with backoff."""
    options = dict(task.retry_kwargs)
    options.setdefault("countdown", task.backoff_delay(request.retries))
    token = push_request(task, request)
    try:
        task.retry(exc=exc, **options)
    except Retry as retry:
        return _retried(task, request, retry)
    except Exception as final:
        return _failed(task, request, final)
    finally:
        pop_request(token)


def _retried(task: Task[Any, Any], request: Request, retry: Retry) -> Outcome:
    """The outcome of a retry; a Retry raised without a next message is a failure."""
    if retry.message is None:
        return _failed(task, request, RuntimeError("Retry raised without a message to send"))
    reason = retry.exc if retry.exc is not None else retry
    signals.task_retry.send(sender=task, request=request, reason=reason)
    tb = format_traceback(retry.exc) if retry.exc is not None else None
    return Outcome(states.RETRY, reason, tb, retry_message=retry.message)


def _failed(task: Task[Any, Any], request: Request, exc: BaseException) -> Outcome:
    """The outcome of a task that raised."""
    text = format_traceback(exc)
    signals.task_failure.send(
        sender=task, task_id=request.id, exception=exc, args=request.args,
        kwargs=request.kwargs, traceback=text,
    )  # fmt: skip
    return Outcome(states.FAILURE, exc, text)


def apply_eagerly(
    task: Task[Any, Any],
    args: tuple[Any, ...] | list[Any] | None,
    kwargs: dict[str, Any] | None,
    **options: Any,
) -> EagerResult[Any]:
    """Run a task in this process as a worker would; retries run again at once."""
    from celeriac.result import EagerResult

    message = task.app.build_message(task.name, args, kwargs, task=task, **options)
    while True:
        request = Request.from_message(message, None, {"routing_key": message.queue}, eager=True)
        outcome = trace_task(task, request)
        if outcome.state != states.RETRY or outcome.retry_message is None:
            break
        message = outcome.retry_message
    if message.callbacks or message.errbacks or message.chain:
        from celeriac.workflow import after_eager_outcome  # canvas: callbacks, next step

        after_eager_outcome(task.app, message, request, outcome)
    throw = options.get("throw", task.app.conf.task_eager_propagates)
    if outcome.state == states.FAILURE and throw:
        raise outcome.result
    meta = {
        "task_id": message.id,
        "status": states.SUCCESS if outcome.state == IGNORED else outcome.state,
        "result": outcome.result,
        "traceback": outcome.traceback,
        "name": task.name,
        "retries": message.retries,
    }
    return EagerResult(message.id, meta, task.app, task.name)
