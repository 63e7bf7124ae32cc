"""State-changing routes: shut a worker down, resize its pool, revoke / terminate / retry a task,
redrive dead letters, set or clear a task's rate limit.

Each is a POST that needs the operator role and the session's CSRF token, and a request
from a page of another origin is refused. A form carries a one-time ``action_id``: the first
request with it claims it in the broker (an atomic ``incr``, so it holds across processes)
and runs; a repeat (a double click, a resubmitted form) runs nothing and is told so. An
action refused (a bad rate, say) gives back its claim, and a browser is sent back to the
page with the reason shown there; a program gets a 400 with the reason as JSON.
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from celeriac.dashboard.data import registered
from celeriac.dashboard.security import base_path, principal_of
from celeriac.errors import LimitError

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.dashboard.monitor import Monitor

ACTION_KEY = "celeriac-dashboard-action-"
DONE_KEY = "celeriac-dashboard-done-"
REFUSED_KEY = "celeriac-dashboard-refused-"
ACTION_TTL = 3600.0
MAX_FORM = 64 * 1024
REDRIVE_ALL_LIMIT = 10_000
REPLY_TIMEOUT = 1.0


class Refused(Exception):
    """An action that cannot be done: its message is shown to the user (status 400)."""


async def read_form(request: Request) -> dict[str, str]:
    """The fields of a urlencoded body (the first value of each)."""
    body = await request.body()
    if len(body) > MAX_FORM:
        return {}
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[0] for key, values in fields.items()}


def _refusal(request: Request, form: dict[str, str]) -> Response | None:
    """Why the request may not change anything (or None: it may)."""
    principal = principal_of(request)
    if principal is None:
        return JSONResponse({"error": "authentication required"}, status_code=401)
    if not principal.can_act:
        return JSONResponse({"error": "this needs the operator role"}, status_code=403)
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        return JSONResponse({"error": "a request from another origin"}, status_code=403)
    token = form.get("csrf") or request.headers.get("x-csrf-token", "")
    auth = request.scope["celeriac.auth"]
    if not auth.check_csrf(str(request.scope["celeriac.sid"]), token):
        return JSONResponse({"error": "CSRF token missing or wrong; reload the page"},
                            status_code=403)  # fmt: skip
    return None


async def perform(request: Request) -> Response:
    """The one POST endpoint for actions: ``/actions/{kind}``."""
    form = await read_form(request)
    refused = _refusal(request, form)
    if refused is not None:
        return refused
    monitor: Monitor = request.app.state.monitor
    handler = HANDLERS.get(request.path_params["kind"])
    if handler is None:
        return JSONResponse({"error": "no such action"}, status_code=404)
    action_id = form.get("action_id", "")
    try:
        message = await run_in_threadpool(_once, monitor, action_id, handler, form)
        status = 200
    except Refused as exc:
        message, status = str(exc), 400
    return _answer(request, form, action_id, message, status)


def _once(monitor: Monitor, action_id: str, handler: Any, form: dict[str, str]) -> str:
    """Run ``handler`` unless ``action_id`` was used before; remember what it said."""
    app = monitor.app
    if action_id:
        if len(action_id) > 64:
            raise Refused("an action id is at most 64 characters")
        if app.broker.incr(ACTION_KEY + action_id, 1, ACTION_TTL) > 1:
            earlier = app.broker.get(DONE_KEY + action_id)
            said = f" ({earlier.decode()})" if earlier else ""
            return f"Already done: this form was sent before{said}; nothing was repeated."
    try:
        message: str = handler(monitor, form)
    except Refused as exc:
        if action_id:  # nothing was done: the form, corrected, may be sent again
            app.broker.delete(ACTION_KEY + action_id)
            app.broker.put(REFUSED_KEY + action_id, str(exc).encode(), ACTION_TTL)
        raise
    if action_id:
        app.broker.put(DONE_KEY + action_id, message.encode(), ACTION_TTL)
    return message


def flash(app: Celeriac, action_id: str) -> tuple[str, bool]:
    """What the action ``action_id`` said, for the page it redirects to, and whether it was
    refused."""
    if not action_id or len(action_id) > 64:
        return "", False
    said = app.broker.get(DONE_KEY + action_id)
    if said:
        return said.decode(errors="replace"), False
    refused = app.broker.get(REFUSED_KEY + action_id)
    return (f"Not done: {refused.decode(errors='replace')}", True) if refused else ("", False)


def _answer(
    request: Request, form: dict[str, str], action_id: str, message: str, status: int
) -> Response:
    accept = request.headers.get("accept", "")
    from_page = "text/html" in accept and 0 < len(action_id) <= 64 and status == 400
    if "application/json" in accept or (status != 200 and not from_page):
        return JSONResponse({"ok": status == 200, "message": message}, status_code=status)
    target = form.get("next", "")
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        target = "/"
    separator = "&" if "?" in target else "?"
    url = f"{base_path(request)}{target}{separator}done={action_id}" if action_id else target
    return RedirectResponse(url, status_code=303)


# -- the actions -----------------------------------------------------------------------------


def _replies(replies: list[dict[str, Any]] | None, what: str) -> str:
    merged: dict[str, Any] = {}
    for reply in replies or []:
        merged.update(reply)
    if not merged:
        return f"{what}: no worker replied within {REPLY_TIMEOUT:g} s."
    parts = []
    for host, value in sorted(merged.items()):
        text = value.get("error") or value.get("ok") if isinstance(value, dict) else value
        parts.append(f"{host}: {text}")
    return f"{what}: " + "; ".join(parts)


def worker_action(monitor: Monitor, form: dict[str, str]) -> str:
    """shutdown, pool_grow or pool_shrink one worker."""
    host, command = form.get("hostname", ""), form.get("command", "")
    if not host:
        raise Refused("which worker? (hostname is missing)")
    control = monitor.app.control
    if command == "shutdown":
        replies = control.shutdown([host], reply=True, timeout=REPLY_TIMEOUT)
        return _replies(replies, f"Shutdown of {host}")
    if command in ("pool_grow", "pool_shrink"):
        try:
            n = int(form.get("n", "1"))
        except ValueError:
            raise Refused("n is a whole number") from None
        if not 1 <= n <= 100:
            raise Refused("n is between 1 and 100")
        resize = control.pool_grow if command == "pool_grow" else control.pool_shrink
        return _replies(resize(n, [host], True, REPLY_TIMEOUT), f"{command} {n} on {host}")
    raise Refused(f"unknown worker command {command!r}")


def task_action(monitor: Monitor, form: dict[str, str]) -> str:
    """revoke, terminate or retry one task."""
    app = monitor.app
    task_id, command = form.get("task_id", ""), form.get("command", "")
    if not task_id:
        raise Refused("which task? (task_id is missing)")
    if command in ("revoke", "terminate"):
        terminate = command == "terminate"
        replies = app.control.revoke(
            task_id, terminate=terminate, signal="SIGKILL", reply=True, timeout=REPLY_TIMEOUT
        )
        stored = f"Revoked {task_id} (kept in the broker, so workers refuse it later too)"
        return stored + ". " + _replies(replies, "Replies")
    if command == "retry":
        return _retry(monitor, task_id)
    raise Refused(f"unknown task command {command!r}")


def _retry(monitor: Monitor, task_id: str) -> str:
    """Send the task again (a new id) with its arguments, when they are known exactly:
    kept by the result store (``result_extended``), or readable back from their reprs."""
    app = monitor.app
    with monitor.lock:
        task = monitor.state.tasks.get(task_id)
        seen = (task.name, task.args, task.kwargs, task.queue) if task else (None,) * 4
    meta = app.results.get_meta(task_id)
    name = meta.get("name") or seen[0]
    args, kwargs = meta.get("args"), meta.get("kwargs")
    if args is None or kwargs is None:
        args, kwargs = _literal(seen[1] or ""), _literal(seen[2] or "")
    if not name or not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        raise Refused(
            "cannot retry: the task's arguments are known only as a shortened text; turn "
            "on result_extended to keep them"
        )
    queue = meta.get("queue") or seen[3]
    if queue:
        result = app.send_task(name, list(args), kwargs, queue=queue)
    else:
        result = app.send_task(name, list(args), kwargs)
    return f"Sent {name} again as {result.id}"


def _literal(text: str) -> Any:
    """A repr read back as a Python literal, or None (a shortened or object repr)."""
    if not text or "..." in text:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def redrive(monitor: Monitor, form: dict[str, str]) -> str:
    """Put one dead letter (``id``) or all of them (``all``) back on their queues."""
    app = monitor.app
    if form.get("all"):
        letters = app.broker.dead_letters(limit=REDRIVE_ALL_LIMIT)
        moved = sum(1 for letter in letters if app.broker.redrive(letter.message_id))
        return f"{moved} dead letter(s) put back on their queues."
    message_id = form.get("id", "")
    if not message_id:
        raise Refused("which dead letter? (id is missing)")
    if app.broker.redrive(message_id):
        return f"Redrove {message_id}."
    return f"{message_id} is no longer in the dead-letter queue; nothing was redriven."


def rate_limit(monitor: Monitor, form: dict[str, str]) -> str:
    """Set a task's rate limit for every worker (stored in the broker, so workers that start
    later keep it too); an empty rate goes back to the task's own limit."""
    name, rate = form.get("task", "").strip(), form.get("rate", "").strip()
    if not name or len(name) > 200:
        raise Refused("which task? (its name, such as proj.tasks.add)")
    if len(rate) > 40:
        raise Refused("a rate is short: such as '10/s', '100/m' or '1000/h'")
    known = registered(monitor)
    if rate and known and name not in known:
        raise Refused(f"no worker has registered a task named {name!r}; check the name")
    try:
        replies = monitor.app.control.rate_limit(
            name, rate or None, reply=True, timeout=REPLY_TIMEOUT
        )
    except LimitError:
        raise Refused(
            f"bad rate {rate!r} for {name}: expected a rate such as '10/s', '100/m' or "
            "'1000/h', a number of tasks per second, 0 for no limit, or nothing to go back "
            "to the task's own"
        ) from None
    if rate:
        return _replies(replies, f"Rate limit of {name} set to {rate} for every worker")
    return _replies(replies, f"Rate limit of {name} cleared (back to the task's own)")


HANDLERS = {
    "worker": worker_action, "task": task_action, "redrive": redrive, "rate_limit": rate_limit,
}  # fmt: skip
