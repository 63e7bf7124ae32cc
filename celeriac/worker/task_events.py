"""The consumer's steps as task events (worker ``-E``): received, started, succeeded, ...

Only built when task events are on; the consumer calls it behind a single ``if``. The three
events every task sends are written as JSON text at once (see ``events.encode_batch``).
"""

from __future__ import annotations

import time
from json.encoder import encode_basestring_ascii as quote  # json's own string quoting (C)
from typing import TYPE_CHECKING

from celeriac import states
from celeriac.events import EventSender, message_event

if TYPE_CHECKING:
    from celeriac.message import Message
    from celeriac.transports.base import Delivery
    from celeriac.worker.execute import JobDone


class TaskEvents:
    """Sends task-* events through the worker's event sender."""

    def __init__(self, sender: EventSender) -> None:
        self.send = sender.send
        self.put = sender.put  # the common events skip building keyword arguments

    def received(self, message: Message) -> None:
        """A message passed its checks and is held by this worker."""
        self.put(message_event("task-received", message))

    def started(self, message: Message) -> None:
        """A job began running in the pool."""
        self.put(
            f'{{"type":"task-started","timestamp":{time.time()!r},"uuid":{quote(message.id)}}}'
        )

    def finished(self, message: Message, done: JobDone) -> None:
        """A job ended: succeeded, failed, retried, rejected or revoked."""
        state, uuid = done.state, message.id
        if state == states.SUCCESS:
            self.put(
                f'{{"type":"task-succeeded","timestamp":{time.time()!r},"uuid":{quote(uuid)},'
                f'"result":{quote(done.summary)},"runtime":{float(done.runtime)!r}}}'
            )
        elif state == states.FAILURE:
            self.send("task-failed", uuid=uuid, exception=done.summary,
                      traceback=done.traceback, runtime=done.runtime)  # fmt: skip
        elif state == states.RETRY:
            self.send("task-retried", uuid=uuid, exception=done.summary, traceback=done.traceback)
        elif state == states.REJECTED:
            self.send("task-rejected", uuid=uuid, requeue=done.requeue, reason=done.reason)
        elif state == states.REVOKED:
            self.revoked(message)

    def failed(self, message: Message, exception: str) -> None:
        """A job ended outside its task: its process died, or it passed its hard limit."""
        self.send("task-failed", uuid=message.id, exception=exception, traceback=None)

    def rejected(self, delivery: Delivery, reason: str) -> None:
        """A message was dead-lettered before it could run (not decodable, unknown task)."""
        self.send("task-rejected", uuid=None, requeue=False, reason=reason,
                  queue=delivery.queue, message_id=delivery.message_id)  # fmt: skip

    def revoked(self, message: Message, *, expired: bool = False, terminated: bool = False) -> None:
        """A task will not run (or was stopped): revoked, expired or terminated."""
        self.send("task-revoked", uuid=message.id, expired=expired, terminated=terminated)
