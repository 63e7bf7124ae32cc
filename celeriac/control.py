"""Remote control of workers from Python: ``app.control.ping()``, ``inspect()``, ``revoke()``.

The wire format (version 1). A request is one JSON object broadcast on the topic
``celeriac.control``, which every worker listens to::

    {"v": 1, "id": "<request id>", "command": "ping", "arguments": {...},
     "destination": null | ["w1@host", ...], "reply_to": null | "celeriac.reply.<id>",
     "sender": "pid@host", "sent": <seconds since the epoch>}

A worker named in ``destination`` (or every worker, when it is null) runs the command and,
when ``reply_to`` is set, broadcasts its reply on that topic::

    {"v": 1, "id": "<request id>", "hostname": "w1@host", "ok": true, "reply": <value>}
    {"v": 1, "id": "<request id>", "hostname": "w1@host", "ok": false, "error": "<text>"}

A command a worker does not know, arguments it cannot take, or a request of another
version get an error reply; the worker goes on. Replies come back to Python as Celery shapes
them: ``[{"w1@host": value}, ...]`` from ``broadcast``, ``{"w1@host": value}`` from inspect
methods, with ``{"error": text}`` as the value of a worker that refused.

With ``control_signing_key`` set, requests, replies and kept revocations carry an HMAC-SHA256
``signature`` (``celeriac.signing``): workers refuse, and log, requests without a valid one.

Revocations are also stored in the broker, so that a worker that is busy, or starts later,
still refuses the task: a key ``celeriac-revoked-<task id>`` and an entry in the history
``celeriac-revoked`` (``celeriac.history``), both kept ``REVOKE_EXPIRES`` seconds.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal as signals_module
import socket
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from celeriac.history import History
from celeriac.limits import RATE_LIMIT_KEY, parse_rate
from celeriac.signing import sign, signature_problem

if TYPE_CHECKING:
    from celeriac.app import Celeriac

logger = logging.getLogger(__name__)

VERSION = 1
TOPIC = "celeriac.control"
REPLY_TOPIC = "celeriac.reply."
REVOKED_KEY = "celeriac-revoked-"
REVOKED_HISTORY = "celeriac-revoked"
#: Seconds a revocation is kept (Celery's default), and how many revoke requests.
REVOKE_EXPIRES = 3 * 3600.0
REVOKED_HISTORY_LENGTH = 1000
DEFAULT_TIMEOUT = 1.0

Replies = list[dict[str, Any]]


def revoked_history(app: Celeriac) -> History:
    """The broker's history of recent revoke requests."""
    return History(app.broker, REVOKED_HISTORY, REVOKED_HISTORY_LENGTH, REVOKE_EXPIRES)


def check_timeout(timeout: float) -> float:
    """A timeout is a positive, finite number of seconds."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if not 0 < timeout < math.inf:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout}")
    return float(timeout)


def check_destination(destination: str | Iterable[str] | None) -> list[str] | None:
    """None (every worker), or the worker names as a list."""
    if destination is None:
        return None
    names = [destination] if isinstance(destination, str) else list(destination)
    if not names or not all(isinstance(name, str) and name.strip() for name in names):
        raise ValueError(f"destination must be worker names such as 'w1@host', not {names!r}")
    return [name.strip() for name in names]


def signal_number(name: str | int) -> int:
    """The number of a signal given as 'SIGKILL', 'KILL' or 9."""
    if isinstance(name, int) and not isinstance(name, bool):
        return int(signals_module.Signals(name))
    if not isinstance(name, str):
        raise TypeError(f"a signal is a name such as 'SIGKILL', not {name!r}")
    text = name.upper()
    text = text if text.startswith("SIG") else "SIG" + text
    try:
        return int(signals_module.Signals[text])
    except KeyError:
        raise ValueError(f"unknown signal {name!r}; use a name such as 'SIGKILL'") from None


class Control:
    """Commands for workers, sent over the broker (``app.control``)."""

    def __init__(self, app: Celeriac) -> None:
        self.app = app

    def broadcast(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        destination: str | Iterable[str] | None = None,
        reply: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        limit: int | None = None,
    ) -> Replies | None:
        """Send ``command`` to workers; with ``reply``, collect their replies for ``timeout``.

        Collecting stops early once ``limit`` replies came (by default, one from each named
        destination). Returns ``[{hostname: reply}, ...]``, or None without ``reply``.
        """
        request = self._request(command, arguments, destination, reply)
        timeout = check_timeout(timeout)
        names = request["destination"]
        if limit is None and names is not None:
            limit = len(names)
        key = self.app.conf.control_signing_key
        body = json.dumps(sign(request, key) if key else request).encode()
        if not reply:
            self.app.broker.broadcast(TOPIC, body)
            return None
        with self.app.broker.listen([request["reply_to"]]) as subscription:
            self.app.broker.broadcast(TOPIC, body)
            return _collect(subscription, request["id"], timeout, limit, key)

    def _request(
        self,
        command: str,
        arguments: dict[str, Any] | None,
        destination: str | Iterable[str] | None,
        reply: bool,
    ) -> dict[str, Any]:
        if not isinstance(command, str) or not command:
            raise ValueError(f"a command is a non-empty name such as 'ping', not {command!r}")
        if arguments is not None and not isinstance(arguments, dict):
            raise TypeError(f"arguments must be a dict, not {type(arguments).__name__}")
        request_id = str(uuid.uuid4())
        request = {
            "v": VERSION, "id": request_id, "command": command, "arguments": arguments or {},
            "destination": check_destination(destination),
            "reply_to": REPLY_TOPIC + request_id if reply else None,
            "sender": f"{os.getpid()}@{socket.gethostname()}", "sent": time.time(),
        }  # fmt: skip
        try:
            json.dumps(request)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"control arguments must be JSON: {exc}") from None
        return request

    # -- the usual commands ------------------------------------------------------------------

    def ping(
        self, destination: str | Iterable[str] | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> Replies:
        """``[{hostname: {"ok": "pong"}}, ...]`` from the workers that answered in time."""
        return self.broadcast("ping", {}, destination, reply=True, timeout=timeout) or []

    def inspect(
        self, destination: str | Iterable[str] | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> Inspect:
        """Questions to workers: ``inspect().active()``, ``.stats()``, ..."""
        return Inspect(self, destination, timeout)

    def revoke(
        self,
        task_id: str | Iterable[str],
        destination: str | Iterable[str] | None = None,
        terminate: bool = False,
        signal: str | int = "SIGTERM",
        reply: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Replies | None:
        """Ask workers not to run these tasks; with ``terminate``, stop them if they run.

        The revocation is stored in the broker for ``REVOKE_EXPIRES`` seconds, so a worker
        that receives the task later, or starts later, refuses it too. Terminating stops the
        prefork process running the task; pool processes ignore SIGTERM, so SIGTERM and
        SIGINT are sent as SIGKILL. Threads cannot be stopped: there the task only revokes.
        """
        ids = _task_ids(task_id)
        signum = signal_number(signal)
        record = json.dumps(self._signed({"ids": ids, "terminate": bool(terminate)})).encode()
        for one in ids:
            self.app.broker.put(REVOKED_KEY + one, record, REVOKE_EXPIRES)
        revoked_history(self.app).append(record)
        arguments = {"task_id": ids, "terminate": bool(terminate), "signal": signum}
        return self.broadcast("revoke", arguments, destination, reply, timeout)

    def _signed(self, record: dict[str, Any]) -> dict[str, Any]:
        key = self.app.conf.control_signing_key
        return sign({**record, "sent": time.time()}, key) if key else record

    def terminate(
        self,
        task_id: str | Iterable[str],
        destination: str | Iterable[str] | None = None,
        signal: str | int = "SIGKILL",
        reply: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Replies | None:
        """Revoke and stop running tasks (``revoke(terminate=True)``)."""
        return self.revoke(task_id, destination, True, signal, reply, timeout)

    def time_limit(
        self, task_name: str, soft: float | None = None, hard: float | None = None,
        destination: str | Iterable[str] | None = None, reply: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Replies | None:  # fmt: skip
        """Set a task's soft and hard time limits on workers, for the runs that start next.

        As in Celery, both are set: a limit given as None falls back to the app's default
        (``task_soft_time_limit`` / ``task_time_limit``).
        """
        if not isinstance(task_name, str) or not task_name:
            raise ValueError(f"a task name is a non-empty string, not {task_name!r}")
        arguments = {"task_name": task_name, "soft": _limit("soft", soft),
                     "hard": _limit("hard", hard)}  # fmt: skip
        if soft is not None and hard is not None and soft > hard:
            raise ValueError(f"the soft limit ({soft:g} s) is longer than the hard ({hard:g} s)")
        return self.broadcast("time_limit", arguments, destination, reply, timeout)

    def rate_limit(
        self, task_name: str, rate_limit: str | float | None,
        destination: str | Iterable[str] | None = None, reply: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Replies | None:  # fmt: skip
        """Change a task's rate limit: ``'10/s'``, ``'100/m'``, ``'1000/h'``, tasks per second,
        or 0 for none; None goes back to the task's own limit.

        Without ``destination`` the new limit is stored in the broker (``RATE_LIMIT_KEY``),
        so every worker honours it, those that start later too; workers read it again at
        once when the command arrives. With ``destination``, only those workers change it,
        for themselves (for tasks with ``rate_limit_scope="worker"``).
        """
        if not isinstance(task_name, str) or not task_name:
            raise ValueError(f"a task name is a non-empty string, not {task_name!r}")
        parse_rate(rate_limit)  # LimitError for a bad rate, before anything is stored or sent
        stored = destination is None
        if stored and rate_limit is None:
            self.app.broker.delete(RATE_LIMIT_KEY + task_name)
        elif stored:
            self.app.broker.put(RATE_LIMIT_KEY + task_name, str(rate_limit).encode())
        arguments = {"task_name": task_name, "rate_limit": rate_limit, "stored": stored}
        return self.broadcast("rate_limit", arguments, destination, reply, timeout)

    def is_revoked(self, task_id: str) -> bool:
        """True if the task was revoked within the last ``REVOKE_EXPIRES`` seconds."""
        return self.app.broker.get(REVOKED_KEY + task_id) is not None

    def shutdown(
        self, destination: str | Iterable[str] | None = None, reply: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Replies | None:  # fmt: skip
        """Stop workers gracefully, as SIGTERM does."""
        return self.broadcast("shutdown", {}, destination, reply, timeout)

    def pool_grow(
        self, n: int = 1, destination: str | Iterable[str] | None = None, reply: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Replies | None:  # fmt: skip
        """Add ``n`` processes (or threads) to the workers' pools."""
        return self.broadcast("pool_grow", {"n": _count(n)}, destination, reply, timeout)

    def pool_shrink(
        self, n: int = 1, destination: str | Iterable[str] | None = None, reply: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Replies | None:  # fmt: skip
        """Take ``n`` idle processes (or threads) out of the workers' pools."""
        return self.broadcast("pool_shrink", {"n": _count(n)}, destination, reply, timeout)

    def add_consumer(
        self, queue: str, destination: str | Iterable[str] | None = None, reply: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Replies | None:  # fmt: skip
        """Make workers take tasks from ``queue`` too."""
        return self.broadcast("add_consumer", {"queue": queue}, destination, reply, timeout)

    def cancel_consumer(
        self, queue: str, destination: str | Iterable[str] | None = None, reply: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Replies | None:  # fmt: skip
        """Make workers stop taking tasks from ``queue``."""
        return self.broadcast("cancel_consumer", {"queue": queue}, destination, reply, timeout)


class Inspect:
    """Questions to workers; each method returns ``{hostname: reply}``, or None if none replied."""

    def __init__(
        self,
        control: Control,
        destination: str | Iterable[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.control = control
        self.destination = check_destination(destination)
        self.timeout = check_timeout(timeout)

    def _ask(self, command: str, **arguments: Any) -> dict[str, Any] | None:
        replies = self.control.broadcast(
            command, arguments, self.destination, reply=True, timeout=self.timeout
        )
        merged: dict[str, Any] = {}
        for one in replies or []:
            merged.update(one)
        return merged or None

    def ping(self) -> dict[str, Any] | None:
        """``{hostname: {"ok": "pong"}}``."""
        return self._ask("ping")

    def active(self) -> dict[str, Any] | None:
        """The tasks each worker is running."""
        return self._ask("active")

    def reserved(self) -> dict[str, Any] | None:
        """The tasks each worker holds and has not started."""
        return self._ask("reserved")

    def scheduled(self) -> dict[str, Any] | None:
        """Tasks held with an ETA: always empty lists, as the broker holds delayed work."""
        return self._ask("scheduled")

    def registered(self) -> dict[str, Any] | None:
        """The task names each worker knows."""
        return self._ask("registered")

    def stats(self) -> dict[str, Any] | None:
        """Each worker's pool, counters, broker and resource use."""
        return self._ask("stats")

    def active_queues(self) -> dict[str, Any] | None:
        """The queues each worker takes tasks from."""
        return self._ask("active_queues")

    def conf(self, with_defaults: bool = False) -> dict[str, Any] | None:
        """Each worker's settings (those changed from the defaults), passwords masked."""
        return self._ask("conf", with_defaults=with_defaults)

    def revoked(self) -> dict[str, Any] | None:
        """The task ids each worker holds as revoked."""
        return self._ask("revoked")


def _collect(
    subscription: Any, request_id: str, timeout: float, limit: int | None, key: str | None = None
) -> Replies:
    """Replies to one request until ``timeout``, or until ``limit`` of them came."""
    replies: Replies = []
    deadline = time.monotonic() + timeout
    while limit is None or len(replies) < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for _, body in subscription.get(left):
            reply = _parse_reply(body, request_id, key)
            if reply is not None:
                replies.append(reply)
    return replies


def _parse_reply(body: bytes, request_id: str, key: str | None = None) -> dict[str, Any] | None:
    """``{hostname: value}`` from a reply body; a malformed or unsigned reply: an error value."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("hostname"), str):
        logger.warning("malformed control reply: %r", body[:200])
        return {"unknown": {"error": f"malformed reply: {body[:200]!r}"}}
    if data.get("id") != request_id:
        return None  # a reply to another request on the same topic
    if key and (problem := signature_problem(data, key)) is not None:
        logger.warning("refused a control reply from %s: %s", data["hostname"], problem)
        return {data["hostname"]: {"error": f"reply refused: {problem}"}}
    if data.get("ok") is True:
        return {data["hostname"]: data.get("reply")}
    return {data["hostname"]: {"error": str(data.get("error", "the worker gave no reason"))}}


def _task_ids(task_id: str | Iterable[str]) -> list[str]:
    ids = [task_id] if isinstance(task_id, str) else list(task_id)
    if not ids or not all(isinstance(one, str) and one for one in ids):
        raise ValueError(f"task ids must be non-empty strings, not {ids!r}")
    return ids


def _limit(which: str, seconds: float | None) -> float | None:
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"the {which} limit must be a number of seconds, not {seconds!r}")
    if not 0 < seconds < math.inf:
        raise ValueError(f"the {which} limit must be a positive number of seconds, not {seconds}")
    return float(seconds)


def _count(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a whole number of at least 1, not {n!r}")
    return n
