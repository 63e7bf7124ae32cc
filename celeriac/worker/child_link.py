"""A consuming prefork child's pipe to its parent, and the lease keeper that uses it.

A child that fetches for itself (``celeriac.worker.child``) leaves its leases to the parent,
out of reach of a task that holds the child's GIL. It tells the parent what it holds with the
lease helper's messages (``celeriac.worker.renewal``), batched as the ``LeaseKeeper`` batches
them, with two additions: each held delivery goes as ``(queue, message id, lease token,
deliveries, priority, body, number)``, where ``number`` counts the child's deliveries and is
what the child writes in shared memory while it runs that one (so the parent knows what a dead
child was running without a message per task), and ``("released", count)`` answers a stop.

The parent answers each renewal round as the helper does, and sends commands: ``("stop",)``,
``("revoke", ids)``, ``("queues", names)``, ``("rate", name, rate, local)``,
``("time_limit", name, soft, hard)``; the keeper's thread reads them and passes them on.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from celeriac.worker.leases import LeaseKeeper, Owner

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.transports.base import Delivery
    from celeriac.worker.renewal import Helper

logger = logging.getLogger("celeriac.worker")

#: Seconds between the child's reports of what it no longer holds (the parent's view of what
#: the child holds, as ``inspect reserved`` shows it, lags by at most this).
FLUSH = 0.2
#: Reports the parent sends; anything else on the pipe is a command.
REPORTS = ("renewed", "error")


class ChildLink:
    """The child's end of the pipe, shaped as the keeper's ``Helper``."""

    def __init__(self, conn: Connection, on_command: Callable[[tuple[Any, ...]], None]) -> None:
        self.conn = conn
        self.pid = os.getppid()
        self.on_command = on_command
        self._lock = threading.Lock()  # the fetcher, the main loop and the keeper all send
        self._numbers: dict[str, int] = {}  # lease token -> the delivery's number
        self._count = 0

    def ready(self, timeout: float) -> bool:
        """The parent runs: it forked us."""
        return True

    def send(self, message: tuple[Any, ...]) -> None:
        """Pass a message to the parent; held deliveries are numbered on the way."""
        with self._lock:
            kind = message[0]
            if kind == "hold":
                self._forget(message[2])
                message = ("hold", [self._describe(d) for d in message[1]], message[2])
            elif kind == "drop":
                self._forget(message[1])
            self.conn.send(message)

    def number(self, lease: str) -> int:
        """The number the parent knows the delivery of ``lease`` by (0: not sent)."""
        return self._numbers.get(lease, 0)

    def receive(self, wait: float) -> list[tuple[Any, ...]]:
        """The parent's renewal reports within ``wait`` seconds; commands are run on the way."""
        reports: list[tuple[Any, ...]] = []
        ready = self.conn.poll(wait)
        while ready:
            message = self.conn.recv()
            if message[0] in REPORTS:
                reports.append(message)
            else:
                self.on_command(message)
            ready = self.conn.poll(0)
        return reports

    def stop(self) -> None:
        """Nothing to stop: the pipe closes with the process."""

    def _describe(self, delivery: Delivery) -> tuple[Any, ...]:
        self._count += 1
        self._numbers[delivery.lease] = self._count
        d = delivery
        return (d.queue, d.message_id, d.lease, d.deliveries, d.priority, d.body, self._count)

    def _forget(self, tokens: list[str]) -> None:
        for token in tokens:
            self._numbers.pop(token, None)


class ChildLeases(LeaseKeeper):
    """A lease keeper whose renewals run in the parent, reached through ``link``."""

    def __init__(self, app: Celeriac, lease: float, owner: Owner, link: ChildLink) -> None:
        super().__init__(app, lease, owner, helper=True)
        self.link = link

    def _spawn_helper(self) -> Helper | None:
        return self.link  # type: ignore[return-value]  # a Helper in all but name

    def _read_helper(self, wait: float) -> None:
        # Wake often enough to tell the parent what ended (see FLUSH).
        super()._read_helper(min(wait, FLUSH))

    def _replace_helper(self) -> None:
        # The parent is gone: nothing we hold is renewed any more, and no one supervises us.
        logger.error("pool process %s: the worker process is gone; exiting", os.getpid())
        os._exit(1)
