"""Events: what workers and clients report about tasks and themselves, for monitors.

An event is a flat dict with Celery's field names. Every event has ``type``, ``hostname``,
``timestamp`` (seconds since the epoch), ``pid`` and ``clock`` (a counter of its sender, one
for task events and one for worker events); the rest depends on the type:

    task-sent        uuid name args kwargs retries eta expires queue root_id parent_id
    task-received    uuid name args kwargs retries eta expires queue root_id parent_id
    task-started     uuid
    task-succeeded   uuid result runtime
    task-failed      uuid exception traceback runtime
    task-retried     uuid exception traceback
    task-rejected    uuid requeue reason
    task-revoked     uuid terminated expired
    task-progress    uuid name state meta           (update_state with a custom state)
    worker-online    freq sw_ident sw_ver sw_sys pool_size
    worker-heartbeat freq active processed loadavg pool_size
    worker-offline   (nothing more)

``args``, ``kwargs`` and ``result`` are reprs (short text), never the values themselves.

Fields whose value is None are left out, and so is ``root_id`` when it is the task's own id.

On the wire, events travel in batches on the topic ``celeriac.events``: an ``EventSender``
buffers them and broadcasts every ~0.1 s one JSON body per ``MAX_BATCH`` events (compressed
with zlib when it is larger than ``COMPRESS_ABOVE`` bytes; a plain body starts with ``{``)::

    {"v": 1, "sender": "<random id of the sender>", "hostname": ..., "pid": ...,
     "first": <clock of the first event>, "events": [{"type", "timestamp", ...}, ...]}

An event's ``hostname`` and ``pid`` are the batch's unless it says otherwise, and its
``clock`` is ``first`` plus its place in the batch.

The broker also keeps recent batches (``celeriac.history``): task events in the history
``celeriac-events`` (``event_history_length`` entries, each the bodies one sender broadcast
in about a second, one a line, up to about ``MAX_BATCH`` events), worker events in
``celeriac-workers``, both kept ``event_history_age`` seconds.
An ``EventReceiver`` replays them first, then goes live.
Task events are sent only when they are on (worker ``-E``, ``worker_send_task_events``;
``task_send_sent_event`` for task-sent); worker events always.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Iterator
from json.encoder import encode_basestring_ascii as quote  # json's own string quoting (C)
from typing import TYPE_CHECKING, Any

from celeriac.history import History

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.message import Message
    from celeriac.transports.base import Subscription

logger = logging.getLogger(__name__)

TOPIC = "celeriac.events"
EVENTS_HISTORY = "celeriac-events"
WORKERS_HISTORY = "celeriac-workers"
#: Worker events kept for workers and monitors that start later (each its own entry).
WORKERS_HISTORY_LENGTH = 256
#: Seconds between broadcasts of buffered events, and the most events in one batch.
FLUSH_INTERVAL = 0.1
MAX_BATCH = 1000
#: Batch bodies larger than this many bytes are compressed.
COMPRESS_ABOVE = 1024
#: Seconds a sender gathers events before it adds them to the broker's history.
HISTORY_INTERVAL = 1.0
#: Seconds between worker heartbeats; a worker is offline after this many missed beats.
HEARTBEAT_INTERVAL = 2.0
MISSED_BEATS = 3

TASK_EVENTS = (
    "task-sent", "task-received", "task-started", "task-succeeded", "task-failed",
    "task-retried", "task-rejected", "task-revoked", "task-progress",
)  # fmt: skip
WORKER_EVENTS = ("worker-online", "worker-heartbeat", "worker-offline")

Event = dict[str, Any]


def encode_batch(
    sender: str, hostname: str, pid: int, first: int, events: list[Event | str]
) -> bytes:
    """One batch of events from one sender, as broadcast and kept (see the module docstring).

    An event is a dict, or already JSON text (``message_event`` and ``TaskEvents`` write the
    events every task sends as text: that costs half of building and encoding a dict).
    """
    head = json.dumps({"v": 1, "sender": sender, "hostname": hostname, "pid": pid,
                       "first": first}, separators=(",", ":"))  # fmt: skip
    items = ",".join(
        event if isinstance(event, str) else json.dumps(event, default=str, separators=(",", ":"))
        for event in events
    )
    body = f'{head[:-1]},"events":[{items}]}}'.encode()
    # Batches repeat their keys and ids: zlib at its fastest makes them about 7 times smaller
    # (less for the broker to write and keep) and releases the GIL while it works.
    return zlib.compress(body, 1) if len(body) > COMPRESS_ABOVE else body


def decode_batch(body: bytes) -> tuple[str, list[Event]]:
    """``(sender, events)`` from a batch, each event complete with hostname, pid and clock.

    A body that is not a batch gives no events (and a log line): a monitor goes on.
    """
    try:
        data = json.loads(body if body[:1] == b"{" else zlib.decompress(body))
    except (ValueError, zlib.error):
        logger.warning("ignoring an event batch that is not JSON (%d bytes)", len(body))
        return "", []
    if not isinstance(data, dict) or not isinstance(data.get("events"), list):
        logger.warning("ignoring an event batch of unknown shape")
        return "", []
    hostname, pid, first = data.get("hostname"), data.get("pid"), data.get("first")
    first = first if isinstance(first, int) else 0
    events = []
    for index, event in enumerate(data["events"]):
        if isinstance(event, dict) and isinstance(event.get("type"), str):
            event.setdefault("hostname", hostname)
            event.setdefault("pid", pid)
            event["clock"] = first + index
            events.append(event)
    return str(data.get("sender", "")), events


def message_event(type: str, message: Message, at: float | None = None) -> str:
    """task-sent or task-received for a message, as JSON text (None fields left out); its
    timestamp is ``at``, or now."""
    extra = ""
    if message.root_id and message.root_id != message.id:
        extra += f',"root_id":{quote(message.root_id)}'
    if message.parent_id:
        extra += f',"parent_id":{quote(message.parent_id)}'
    if message.eta:
        extra += f',"eta":{quote(message.eta.isoformat())}'
    if message.expires:
        extra += f',"expires":{quote(message.expires.isoformat())}'
    return (
        f'{{"type":{quote(type)},"timestamp":{time.time() if at is None else at!r},'
        f'"uuid":{quote(message.id)},'
        f'"name":{quote(message.task)},"args":{quote(message.argsrepr)},'
        f'"kwargs":{quote(message.kwargsrepr)},"retries":{int(message.retries)},'
        f'"queue":{quote(message.queue)}{extra}}}'
    )


class EventSender:
    """Buffers events and broadcasts them in batches from a thread of its own.

    ``send`` only appends a dict to a deque, so a worker's hot path pays for building the
    event and nothing more. A broker that fails is logged, and the events of that batch are
    dropped: monitoring never stops the work it watches.
    """

    def __init__(self, app: Celeriac, hostname: str | None = None) -> None:
        self.app = app
        self.hostname = hostname or f"{os.getpid()}@{socket.gethostname()}"
        self.pid = os.getpid()
        self.id = uuid.uuid4().hex[:12]
        conf = app.conf
        length, age = conf.event_history_length, conf.event_history_age
        self.history = History(app.broker, EVENTS_HISTORY, length, age)
        self.workers = History(app.broker, WORKERS_HISTORY, WORKERS_HISTORY_LENGTH, age)
        self._pending: deque[Event | str] = deque()  # not broadcast yet
        self._clock = 0  # the clock of the last event broadcast
        self._unkept: list[bytes] = []  # bodies broadcast, not in the history yet
        self._unkept_events = 0
        self._unkept_since = 0.0
        self._worker_clock = 0
        self._lock = threading.Lock()  # one flush at a time: clocks and history keep order
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error = 0.0

    def start(self) -> EventSender:
        """Start the thread that broadcasts the buffered events."""
        self._thread = threading.Thread(target=self._loop, name="event-sender", daemon=True)
        self._thread.start()
        return self

    def send(self, type: str, **fields: Any) -> None:
        """Buffer a task event; it is broadcast within ``FLUSH_INTERVAL`` seconds."""
        fields["type"] = type
        self.put(fields)

    def put(self, event: Event | str) -> None:
        """Buffer an event built by the caller: a dict with ``type`` (the timestamp is added),
        or JSON text with ``type`` and ``timestamp``."""
        if not isinstance(event, str):
            event["timestamp"] = time.time()
        pending = self._pending
        pending.append(event)
        if len(pending) == 1:
            self._wake.set()

    def send_worker(self, type: str, **fields: Any) -> None:
        """Broadcast a worker event at once, and keep it in the workers' history."""
        with self._lock:
            self._worker_clock += 1
            event = {"type": type, "timestamp": time.time(), **fields}
            body = encode_batch(self.id + "-w", self.hostname, self.pid, self._worker_clock,
                                [event])  # fmt: skip
            try:
                self.app.broker.broadcast(TOPIC, body)
                self.workers.append(body)
            except Exception as exc:
                self._failed(exc, 1)

    def flush(self, keep: bool = True) -> None:
        """Broadcast what is buffered; with ``keep``, add all of it to the history now."""
        with self._lock:
            while self._pending:
                batch = _take(self._pending, MAX_BATCH)
                body = encode_batch(self.id, self.hostname, self.pid, self._clock + 1, batch)
                self._clock += len(batch)
                self._broadcast(body, len(batch))
                if not self._unkept:
                    self._unkept_since = time.monotonic()
                self._unkept.append(body)
                self._unkept_events += len(batch)
            self._keep(force=keep)

    @property
    def stopped(self) -> bool:
        """True once ``stop`` was called: nothing sent afterwards goes out by itself."""
        return self._stop.is_set()

    def stop(self) -> None:
        """Broadcast and keep what is left, and stop the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self.flush()

    # -- inside -----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            # Until an event comes, or broadcast ones are due in the history.
            self._wake.wait(self._keep_wait())
            self._wake.clear()
            if self._pending:
                self._stop.wait(FLUSH_INTERVAL)  # gather: one broadcast carries many events
            self.flush(keep=False)

    def _keep_wait(self) -> float | None:
        """Seconds until broadcast events are due in the history (None: nothing waits)."""
        if not self._unkept:
            return None
        return max(0.0, self._unkept_since + HISTORY_INTERVAL - time.monotonic())

    def _broadcast(self, body: bytes, count: int) -> None:
        try:
            self.app.broker.broadcast(TOPIC, body)
        except Exception as exc:
            self._failed(exc, count)

    def _keep(self, force: bool) -> None:
        """Add what was broadcast to the history about once a second, or every ``MAX_BATCH``
        events: the bodies as they were broadcast, one a line (caller holds the lock)."""
        due = force or self._unkept_events >= MAX_BATCH or self._keep_wait() == 0.0
        if not self._unkept or not due:
            return
        bodies, count = self._unkept, self._unkept_events
        self._unkept, self._unkept_events = [], 0
        try:
            self.history.append(b"\n".join(bodies))
        except Exception as exc:
            self._failed(exc, count)

    def _failed(self, exc: Exception, count: int) -> None:
        if time.monotonic() - self._last_error > 30:
            self._last_error = time.monotonic()
            logger.warning("could not send %d event(s): %s", count, exc)


def _take(pending: deque[Event | str], limit: int) -> list[Event | str]:
    """Up to ``limit`` events from the front of ``pending`` (safe beside appending threads)."""
    batch: list[Event | str] = []
    try:
        while len(batch) < limit:
            batch.append(pending.popleft())
    except IndexError:
        pass
    return batch


# -- events sent from a client or a pool process ------------------------------------------

_senders: dict[int, tuple[int, EventSender]] = {}
_senders_lock = threading.Lock()


def sender_for(app: Celeriac) -> EventSender:
    """This process's sender for ``app`` (started on first use; flushed at exit)."""
    found = _senders.get(id(app))
    if found is not None and found[0] == os.getpid() and not found[1].stopped:
        return found[1]
    with _senders_lock:
        found = _senders.get(id(app))
        if found is None or found[0] != os.getpid() or found[1].stopped:
            sender = EventSender(app).start()
            atexit.register(sender.stop)
            _senders[id(app)] = (os.getpid(), sender)
            return sender
        return found[1]


def use_sender(app: Celeriac, sender: EventSender) -> None:
    """Make ``sender`` the one this process uses for ``app`` (a worker shares its own)."""
    with _senders_lock:
        _senders[id(app)] = (os.getpid(), sender)


def _reset_after_fork() -> None:
    global _senders_lock
    _senders_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def task_sent(app: Celeriac, message: Message, at: float) -> None:
    """Send task-sent for a message published from time ``at`` on (``task_send_sent_event``).

    Stamped with when the publish began: a worker can receive the message, and stamp its
    task-received, before the publish returns."""
    sender_for(app).put(message_event("task-sent", message, at))


def task_progress(
    app: Celeriac, task_id: str, name: str, state: str, meta: Any, hostname: str | None
) -> None:
    """Send task-progress for ``update_state`` with a custom state, when task events are on."""
    fields: Event = {"uuid": task_id, "name": name, "state": state, "meta": _jsonable(meta)}
    if hostname:
        fields["hostname"] = hostname
    sender_for(app).send("task-progress", **fields)


def _jsonable(value: Any) -> Any:
    """``value`` if JSON can carry it, else its repr."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


# -- receiving ------------------------------------------------------------------------------


class EventReceiver:
    """Yields the events of every worker and client: first the kept history, then live.

    The subscription opens before the history is read, so nothing falls between the two;
    an event seen in both is yielded once. As senders add to the history about once a
    second, the history is read once more after ``HISTORY_INTERVAL``, for the events broadcast
    just before this receiver opened.
    """

    def __init__(self, app: Celeriac, *, history: bool = True) -> None:
        self.app = app
        self._subscription: Subscription = app.broker.listen([TOPIC])
        self._seen: set[tuple[str, int]] | None = None
        self._backlog: list[Event] = []
        self._reread_at: float | None = None
        if history:
            self._seen = set()
            self._backlog = self._unseen(self._read_history())
            self._reread_at = time.monotonic() + HISTORY_INTERVAL + 2 * FLUSH_INTERVAL

    def history(self) -> list[Event]:
        """The events the broker keeps, oldest first."""
        events = [event for _, batch in self._read_history() for event in batch]
        return sorted(events, key=_timestamp)

    def get(self, timeout: float | None = None) -> list[Event]:
        """The next events, oldest first; waits up to ``timeout`` seconds for some."""
        if self._backlog:
            backlog, self._backlog = self._backlog, []
            return backlog
        if self._reread_at is not None:
            left = self._reread_at - time.monotonic()
            if left <= 0:
                return self._reread()
            timeout = left if timeout is None else min(timeout, left)
        events: list[Event] = []
        for _, body in self._subscription.get(timeout):
            events.extend(self._unseen([decode_batch(body)]))
        return events

    def iter(self, timeout: float | None = None, limit: int | None = None) -> Iterator[Event]:
        """Events until ``limit`` of them or ``timeout`` seconds (either None: no bound)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        count = 0
        while limit is None or count < limit:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            for event in self.get(0.5 if left is None else min(left, 0.5)):
                yield event
                count += 1
                if limit is not None and count >= limit:
                    return

    def __iter__(self) -> Iterator[Event]:
        return self.iter()

    def close(self) -> None:
        """Stop listening."""
        self._subscription.close()

    def __enter__(self) -> EventReceiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- inside -----------------------------------------------------------------------------

    def _read_history(self) -> list[tuple[str, list[Event]]]:
        """Both kept histories as ``(sender, events)`` batches."""
        conf, broker = self.app.conf, self.app.broker
        age = conf.event_history_age
        tasks = History(broker, EVENTS_HISTORY, conf.event_history_length, age)
        workers = History(broker, WORKERS_HISTORY, WORKERS_HISTORY_LENGTH, age)
        return [
            decode_batch(line)
            for history in (workers, tasks)
            for _, body in history.read()
            for line in body.split(b"\n")
        ]

    def _reread(self) -> list[Event]:
        """The second look at the history; after it, live events need no more checking."""
        self._reread_at = None
        events = self._unseen(self._read_history())
        self._seen = None
        return events

    def _unseen(self, batches: list[tuple[str, list[Event]]]) -> list[Event]:
        """The events of ``batches`` not yielded before, ordered by time."""
        fresh = []
        for sender, events in batches:
            for event in events:
                if self._seen is not None:
                    key = (sender, int(event.get("clock") or 0))
                    if key in self._seen:
                        continue
                    self._seen.add(key)
                fresh.append(event)
        fresh.sort(key=_timestamp)
        return fresh


def _timestamp(event: Event) -> float:
    try:
        return float(event.get("timestamp") or 0.0)
    except (TypeError, ValueError):
        return 0.0
