"""The worker's side of monitoring and remote control.

``WorkerControl`` starts with the consumer and gives the worker:

- an event sender (``celeriac.events``), heartbeats (``heartbeat.py``) and, with ``-E``,
  task events (``task_events.py``);
- a thread that listens on the control topic and answers the commands of ``commands.py``
  (the wire format is in ``celeriac.control``); a command it does not know gets an error
  reply;
- with ``control_signing_key``, a check that refuses (and logs) requests without a valid
  signature, stale ones and replays (``celeriac.signing``);
- the set of revoked task ids, loaded from the broker at start and kept up to date by
  ``revoke`` commands: a revoked task is refused when it arrives, and again when a pool slot
  would start it.
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from celeriac import states
from celeriac.control import REVOKE_EXPIRES, TOPIC, VERSION, revoked_history
from celeriac.events import EventSender, use_sender
from celeriac.signing import RequestCheck, sign, signature_problem
from celeriac.worker.commands import COMMANDS, CommandError
from celeriac.worker.execute import JobDone
from celeriac.worker.heartbeat import Heartbeat, load_average
from celeriac.worker.task_events import TaskEvents

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.message import Message
    from celeriac.transports.base import Subscription
    from celeriac.worker.consumer import Consumer
    from celeriac.worker.endings import Inflight
    from celeriac.worker.pools import Job

logger = logging.getLogger("celeriac.worker")

#: The most revoked ids a worker remembers (the oldest are forgotten first).
REVOKED_MAX = 50_000


class RevokedSet(dict[str, float]):
    """Revoked task ids and when they were revoked; ``id in revoked`` is a dict lookup."""

    def add(self, ids: Iterable[str]) -> None:
        """Remember ``ids``; forget ids older than REVOKE_EXPIRES, and the oldest past the max."""
        now = time.time()
        for task_id in ids:
            self.pop(task_id, None)
            self[task_id] = now
        for task_id, at in list(self.items()):
            if now - at < REVOKE_EXPIRES and len(self) <= REVOKED_MAX:
                break
            del self[task_id]


class WorkerControl:
    """Events, heartbeats, revocations and the control thread of one consumer."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.app = consumer.app
        self.hostname = consumer.hostname
        self.revoked: RevokedSet = consumer.revoked
        self.sender = EventSender(self.app, self.hostname)
        self.heartbeat = Heartbeat(self.sender, self.counters)
        #: job id -> when it started, for the jobs the pool has started
        self.started: dict[int, float] = {}
        self.since = time.time()
        #: with control_signing_key: the key, and the check every request must pass
        self.key: str | None = self.app.conf.control_signing_key
        self.signed = RequestCheck(self.key) if self.key else None
        self._stop = threading.Event()
        self._subscription: Subscription | None = None
        self._thread = threading.Thread(target=self._listen, name="remote-control", daemon=True)

    def start(self) -> None:
        """Load revocations, listen for commands, then go online."""
        self.load_revoked()
        self._subscription = self.app.broker.listen([TOPIC])
        self.sender.start()
        use_sender(self.app, self.sender)
        if self.app.conf.worker_send_task_events:
            self.consumer.task_events = TaskEvents(self.sender)
        self.consumer.pool.on_start = self.job_started
        self.heartbeat.start()
        self._thread.start()

    def stop(self) -> None:
        """Stop answering, go offline, send what is left."""
        self._stop.set()
        if self._subscription is not None:
            self._subscription.close()
        self._thread.join(2.0)
        self.sender.flush()  # the last task events, then worker-offline
        self.heartbeat.stop()
        self.sender.stop()

    def load_revoked(self) -> None:
        """The revocations the broker keeps (a worker started later still honours them)."""
        self.revoked.add(read_revoked(self.app, self.key))

    # -- called by the pool and the heartbeat -----------------------------------------------

    def job_started(self, job: Job) -> JobDone | None:
        """A pool slot starts ``job``: refuse it if revoked meanwhile, else note and report it."""
        message = job.message
        if not self.consumer.still_held(job.job_id):
            logger.warning("Skipping %s[%s]: its lease ran out before it could start (was the "
                           "worker frozen?); another worker runs it", message.task, message.id)
            return JobDone(job.job_id, states.PENDING, skipped=True)
        if message.id in self.revoked:
            logger.info("Discarding revoked task: %s[%s]", message.task, message.id)
            return revoked_job(self.consumer, job.job_id, message)
        self.started[job.job_id] = time.time()
        if self.consumer.task_events is not None:
            self.consumer.task_events.started(message)
        return None

    def running(self) -> list[tuple[int, Inflight, float]]:
        """``(job id, item, started)`` for the held jobs the pool has started."""
        held = self.consumer.pool.held(running_only=True)
        if held is not None:  # a consuming pool: its children hold them
            return [(job_id, item, at) for job_id, item, at in held if at is not None]
        inflight = dict(self.consumer.inflight)
        for job_id in [j for j in list(self.started) if j not in inflight]:
            self.started.pop(job_id, None)
        return [(j, inflight[j], at) for j, at in list(self.started.items()) if j in inflight]

    def counters(self) -> dict[str, Any]:
        """The numbers a heartbeat carries."""
        return {
            "active": len(self.running()),
            "processed": self.consumer.total_processed(),
            "loadavg": load_average(),
            "pool_size": self.consumer.pool.concurrency,
        }

    # -- the control thread ------------------------------------------------------------------

    def _listen(self) -> None:
        assert self._subscription is not None
        while not self._stop.is_set():
            try:
                items = self._subscription.get(timeout=0.5)
            except Exception:
                logger.exception("listening for control commands failed; trying again in 1s")
                self._stop.wait(1.0)
                continue
            for _, body in items:
                self.handle(body)

    def handle(self, body: bytes) -> None:
        """Run one control request addressed to this worker, and reply if asked to."""
        request = _parse_request(body)
        if request is None or not self._addressed(request):
            return
        answer = self._answer(request)
        reply_to = request.get("reply_to")
        if isinstance(reply_to, str) and reply_to:
            self._reply(reply_to, request.get("id"), answer)

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        refused = self._refused(request)
        if refused is not None:
            return {"ok": False, "error": refused}
        try:
            return {"ok": True, "reply": self.run(request)}
        except CommandError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:
            logger.exception("control command %r failed", request.get("command"))
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    def _refused(self, request: dict[str, Any]) -> str | None:
        """Why a request is refused (signing is on and it is not validly signed), or None."""
        if self.signed is None or (problem := self.signed.problem(request)) is None:
            return None
        logger.warning("Refused control command %r from %s: %s",
                       request.get("command"), request.get("sender"), problem)  # fmt: skip
        return f"refused: {problem}; this worker takes only commands signed with its key"

    def _addressed(self, request: dict[str, Any]) -> bool:
        destination = request.get("destination")
        if isinstance(destination, list):
            return self.hostname in destination
        return destination is None

    def run(self, request: dict[str, Any]) -> Any:
        """The reply to a request, or CommandError."""
        if request.get("v") != VERSION:
            raise CommandError(
                f"unsupported control message version {request.get('v')!r} "
                f"(this worker speaks version {VERSION})"
            )
        name, arguments = request.get("command"), request.get("arguments") or {}
        handler = COMMANDS.get(name) if isinstance(name, str) else None
        if handler is None:
            known = ", ".join(sorted(COMMANDS))
            raise CommandError(f"unknown command {name!r}; this worker knows: {known}")
        if not isinstance(arguments, dict):
            raise CommandError(f"arguments for {name!r} must be an object")
        try:
            inspect.signature(handler).bind(self, **arguments)
        except TypeError as exc:
            raise CommandError(f"bad arguments for {name!r}: {exc}") from None
        return handler(self, **arguments)

    def _reply(self, topic: str, request_id: Any, answer: dict[str, Any]) -> None:
        body = {"v": VERSION, "id": request_id, "hostname": self.hostname, **answer}
        try:
            text = json.dumps(body, default=str)
            if self.key:  # signed as sent: the JSON text, read back
                text = json.dumps(sign(json.loads(text), self.key))
            self.app.broker.broadcast(topic, text.encode())
        except Exception as exc:
            logger.warning("could not reply to a control command: %s", exc)


def read_revoked(app: Celeriac, key: str | None) -> list[str]:
    """The task ids of the revocations the broker keeps; with ``key``, only signed ones."""
    ids: list[str] = []
    for _, body in revoked_history(app).read():
        try:
            record = json.loads(body)
            if key and (problem := signature_problem(record, key)) is not None:
                logger.warning("ignoring a kept revocation: %s", problem)
                continue
            ids.extend(str(one) for one in record["ids"])
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring a kept revocation of unknown shape")
    return ids


def _parse_request(body: bytes) -> dict[str, Any] | None:
    """The request in ``body``, or None (logged) when it is not a JSON object."""
    try:
        request = json.loads(body)
    except ValueError:
        request = None
    if not isinstance(request, dict):
        logger.warning("ignoring a control message that is not a JSON object: %r", body[:200])
        return None
    return request


def revoked_job(consumer: Consumer, job_id: int, message: Message) -> JobDone:
    """What a revoked job comes to: REVOKED stored, the message acknowledged."""
    results = consumer.app.results
    meta = results.build_meta(
        message.id, states.REVOKED, {"exc_type": "TaskRevokedError", "exc_message": "revoked"},
        name=message.task, worker=consumer.hostname,
    )  # fmt: skip
    return JobDone(job_id, states.REVOKED, meta=results.encode_meta(meta), summary="revoked")
