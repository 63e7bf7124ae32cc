"""What the worker process knows of one consuming prefork child: its process, its pipe, its
shared slot, and the deliveries and concurrency slots it said it holds (``ChildState``).

The child's messages (``celeriac.worker.child_link``) keep ``held`` up to date and feed the
``Renewer`` that renews them; when the child dies, ``held`` is what must be settled.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from celeriac.errors import MessageError
from celeriac.message import decode
from celeriac.transports.base import Delivery
from celeriac.worker.child import IDLE, RUNNING, STARTED
from celeriac.worker.endings import Inflight
from celeriac.worker.renewal import Renewer

if TYPE_CHECKING:
    from celeriac.worker.child import Slot

logger = logging.getLogger("celeriac.worker")

#: A held delivery as the child describes it: queue, message id, lease token, deliveries,
#: priority, body; decoded into an ``Inflight`` when the parent needs the message.
Described = tuple[str, str, str, int, int, bytes]


@dataclass(eq=False)
class ChildState:
    """One child, as its parent sees it."""

    index: int
    process: BaseProcess
    conn: Connection
    slot: Slot
    renewer: Renewer
    #: delivery number -> what the child holds (see ``Described``)
    held: dict[int, Described | Inflight] = field(default_factory=dict)
    numbers: dict[str, int] = field(default_factory=dict)  # lease token -> delivery number
    #: the delivery number of the job killed at its hard time limit
    timed_out: float | None = None
    #: the delivery number of the job it was asked to give back the work waiting behind
    asked: float | None = None
    #: let go by ``shrink``: not replaced when it exits
    dismissed: bool = False
    #: deliveries it gave back since it was told to stop (None: it has not answered)
    released: int | None = None
    accept: list[str] = field(default_factory=list)
    _send_lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, message: tuple[Any, ...]) -> None:
        """Apply one message from the child (the caller holds the pool's lock)."""
        kind = message[0]
        if kind == "hold":
            self._forget(message[2])
            for described in message[1]:
                number = described[6]
                self.held[number] = described[:6]
                self.numbers[described[2]] = number
            held = [(d[0], d[1], d[2], d[3], d[4]) for d in message[1]]
            self.renewer.apply(("hold", held, message[2]))
        elif kind == "drop":
            self._forget(message[1])
            self.renewer.apply(message)
        elif kind == "slot":
            self.renewer.apply(message)
        elif kind == "released":
            self.released = (self.released or 0) + message[1]

    def send(self, message: tuple[Any, ...]) -> None:
        """Send the child a report or command; a dead child's pipe is ignored."""
        with self._send_lock, contextlib.suppress(OSError, ValueError):
            self.conn.send(message)

    def running(self) -> float:
        """The delivery number of the job running now, or IDLE."""
        return float(self.slot[RUNNING])

    def item(self, number: float) -> Inflight | None:
        """The held delivery of ``number``, decoded (and kept so); None if unknown or bad."""
        described = self.held.get(int(number))
        if described is None or isinstance(described, Inflight):
            return described
        queue, message_id, lease, deliveries, priority, body = described
        delivery = Delivery(queue, body, message_id, lease, deliveries, priority)
        try:
            item = Inflight(delivery, decode(body, self.accept), body)
        except MessageError:
            return None  # the child refused it: not running, and the child ended it
        self.held[int(number)] = item
        return item

    def pop(self, number: float) -> Inflight | None:
        """Take the held delivery of ``number`` out, decoded."""
        item = self.item(number)
        self.held.pop(int(number), None)
        return item

    def deliveries(self) -> list[Delivery]:
        """Everything still held, as deliveries; forgets it all."""
        out = []
        for described in self.held.values():
            if isinstance(described, Inflight):
                out.append(described.delivery)
            else:
                queue, message_id, lease, deliveries, priority, body = described
                out.append(Delivery(queue, body, message_id, lease, deliveries, priority))
        self.held.clear()
        self.numbers.clear()
        return out

    def entries(self, running_only: bool) -> list[tuple[int, Inflight, float | None]]:
        """``(job id, item, started or None)`` for ``inspect``: the job id names the child and
        the delivery (``celeriac.worker.consuming.job_id``)."""
        running = self.running()
        if running_only:
            numbers: list[float] = [running] if running != IDLE else []
        else:
            numbers = list(self.held)
        out = []
        for number in numbers:
            item = self.item(number)
            if item is not None:
                started = float(self.slot[STARTED]) if number == running else None
                out.append(((self.index << 32) | int(number), item, started))
        return out

    def _forget(self, tokens: list[str]) -> None:
        for token in tokens:
            number = self.numbers.pop(token, None)
            if number is not None:
                self.held.pop(number, None)
