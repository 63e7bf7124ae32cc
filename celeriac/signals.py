"""Named hooks that user code connects to: ``@task_prerun.connect`` and friends."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

Receiver = Callable[..., Any]


class Signal:
    """A list of receivers called with keyword arguments when the signal is sent."""

    def __init__(self, name: str, doc: str = "") -> None:
        self.name = name
        self.__doc__ = doc
        self._receivers: list[Receiver] = []
        self._lock = threading.Lock()

    def connect(self, receiver: Receiver | None = None, **_options: Any) -> Any:
        """Connect a receiver; usable as ``@signal.connect`` or ``@signal.connect()``."""
        if receiver is None:
            return self.connect
        with self._lock:
            if receiver not in self._receivers:
                self._receivers.append(receiver)
        return receiver

    def disconnect(self, receiver: Receiver) -> None:
        """Remove a receiver if it is connected."""
        with self._lock:
            if receiver in self._receivers:
                self._receivers.remove(receiver)

    @property
    def receivers(self) -> list[Receiver]:
        """The connected receivers, in connection order."""
        return list(self._receivers)

    def __bool__(self) -> bool:
        """True when a receiver is connected (senders skip building what nobody reads)."""
        return bool(self._receivers)

    def send(self, sender: Any = None, **named: Any) -> list[tuple[Receiver, Any]]:
        """Call every receiver; a receiver that raises is logged and does not stop the others."""
        responses: list[tuple[Receiver, Any]] = []
        for receiver in self._receivers:
            try:
                responses.append((receiver, receiver(sender=sender, signal=self, **named)))
            except Exception as exc:
                logger.exception("signal %s: receiver %r raised", self.name, receiver)
                responses.append((receiver, exc))
        return responses

    def __repr__(self) -> str:
        return f"<Signal: {self.name}>"


before_task_publish = Signal("before_task_publish", "A message is about to be published.")
after_task_publish = Signal("after_task_publish", "A message was published.")
task_received = Signal("task_received", "A worker received a message.")
task_prerun = Signal("task_prerun", "A task is about to run.")
task_postrun = Signal("task_postrun", "A task has run (whatever its outcome).")
task_success = Signal("task_success", "A task succeeded.")
task_failure = Signal("task_failure", "A task raised.")
task_retry = Signal("task_retry", "A task will be retried.")
task_revoked = Signal("task_revoked", "A task was revoked or expired.")
task_rejected = Signal("task_rejected", "A message was dead-lettered by a worker.")
task_unknown = Signal(
    "task_unknown", "A worker received a message for a task it does not know (dead-lettered)."
)
import_modules = Signal("import_modules", "The app imported its task modules.")
worker_init = Signal("worker_init", "A worker is starting.")
worker_process_init = Signal("worker_process_init", "A pool process started.")
worker_ready = Signal("worker_ready", "A worker is ready to take work.")
worker_shutting_down = Signal("worker_shutting_down", "A worker began shutting down.")
worker_shutdown = Signal("worker_shutdown", "A worker stopped.")
beat_init = Signal("beat_init", "A scheduler (celeriac beat) is starting.")
beat_embedded_init = Signal(
    "beat_embedded_init", "A scheduler is starting inside a worker (worker -B)."
)
