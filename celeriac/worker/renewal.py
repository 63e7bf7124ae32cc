"""Renewing leases: one round of renewals (``Renewer``), and the lease helper process that
runs those rounds for a worker whose tasks run in its own process (``Helper``).

The helper is started with ``python -c``: it imports celeriac and the broker's transport,
never the user's app, and opens its own connection to the broker. The worker sends it what
to renew over a pipe (``Renewer.apply``): ``("hold", [Delivery], [lease token ended])``,
``("slot", slot)``, ``("drop", [lease token], [slot])``, ``("close",)``; it reads them every
``TICK`` and answers each round with ``("renewed", kept, [(lease token, message id)], [slot
key], started)`` (``started``: ``time.monotonic()`` as the round began, a clock every process
of the host shares) or ``("error", text)``.

It renews only while the worker runs: when ``/proc/<worker>/stat`` says the worker is stopped
(SIGSTOP) it skips its rounds, so that a frozen worker loses its leases as it would without a
helper, and when the worker is gone it exits. It ignores SIGINT, SIGTERM and SIGQUIT, which
reach the worker's whole process group: it renews through a graceful shutdown.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celeriac.transports.base import Delivery

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.transports.base import Transport
    from celeriac.worker.limits import Slot

#: States in /proc/<pid>/stat of a process that runs no code: stopped, traced, dead.
_NOT_RUNNING = frozenset("TtZXx")
#: Seconds between the helper's reads of what the worker sent (at most; and its rounds).
TICK = 0.05


class Renewer:
    """The leases and slots to renew, and one round of renewing them."""

    def __init__(self, broker: Transport, lease: float) -> None:
        self.broker = broker
        self.lease = lease
        # lease token -> the delivery, or its fields without the body as the worker sent them
        # (made a Delivery at its first renewal: most are dropped before that)
        self.leases: dict[str, Delivery | tuple[Any, ...]] = {}
        self.slots: set[Slot] = set()
        # the worker's threads tell it, its own renews; an RLock, as a signal handler of the
        # worker's main thread (SIGQUIT: abandon_running) may come back in
        self._lock = threading.RLock()

    def apply(self, message: tuple[Any, ...]) -> None:
        """Take a ``hold``, ``slot`` or ``drop`` message."""
        with self._lock:
            self._apply(message)

    def _apply(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "hold":  # ("hold", deliveries, lease tokens ended since the last message)
            for token in message[2]:
                self.leases.pop(token, None)
            for d in message[1]:  # Delivery, or its fields without the body (from the worker)
                self.leases[d.lease if isinstance(d, Delivery) else d[2]] = d
        elif kind == "slot":
            self.slots.add(message[1])
        elif kind == "drop":
            for token in message[1]:
                self.leases.pop(token, None)
            self.slots.difference_update(message[2])

    def renew(self) -> tuple[Any, ...] | None:
        """Renew everything held; forget and report what was lost. None: nothing held."""
        with self._lock:
            held: list[Delivery] = []
            for token, d in self.leases.items():
                if not isinstance(d, Delivery):
                    d = self.leases[token] = Delivery(d[0], b"", *d[1:])
                held.append(d)
            slots = list(self.slots)
        if not held and not slots:
            return None
        started = time.monotonic()
        try:
            kept = {d.lease for d in self.broker.extend(held, self.lease)} if held else set()
            slots_held = self.broker.renew_slots(slots, self.lease) if slots else []
        except Exception as exc:
            return ("error", f"{type(exc).__name__}: {exc}")
        lost = [(d.lease, d.message_id) for d in held if d.lease not in kept]
        lost_slots = [slot for slot, ok in zip(slots, slots_held, strict=True) if not ok]
        with self._lock:
            for token, _ in lost:
                self.leases.pop(token, None)
            self.slots.difference_update(lost_slots)
        return ("renewed", len(kept), lost, [key for key, _ in lost_slots], started)


class Helper:
    """The worker's handle on its lease helper process."""

    def __init__(self, process: subprocess.Popen[bytes], conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.pid = process.pid

    @classmethod
    def spawn(cls, app: Celeriac, lease: float) -> Helper:
        """Start a helper process for the worker (see ``ready``)."""
        broker = type(app.broker)
        setup = (
            f"{broker.__module__}:{broker.__qualname__}", app.broker_url,
            dict(app.conf.broker_transport_options or {}), lease, os.getpid(),
        )  # fmt: skip
        ours, theirs = multiprocessing.Pipe()
        package_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (package_root, os.environ.get("PYTHONPATH")) if p
        )}  # fmt: skip
        code = f"from celeriac.worker.renewal import helper_main; helper_main({theirs.fileno()})"
        process = subprocess.Popen(
            [sys.executable, "-c", code], pass_fds=[theirs.fileno()], env=env,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        theirs.close()
        helper = cls(process, ours)
        try:
            ours.send(setup)
        except BaseException:
            helper.stop()
            raise
        return helper

    def ready(self, timeout: float) -> bool:
        """Wait until the helper runs; False if it did not start within ``timeout``."""
        try:
            return bool(self.conn.poll(timeout)) and self.conn.recv() == ("ready",)
        except (EOFError, OSError):
            return False

    def send(self, message: tuple[Any, ...]) -> None:
        """Pass a message to the helper (deliveries as plain tuples, without their bodies)."""
        if message[0] == "hold":
            held = [(d.queue, d.message_id, d.lease, d.deliveries, d.priority) for d in message[1]]
            message = ("hold", held, message[2])
        self.conn.send(message)

    def receive(self, wait: float) -> list[tuple[Any, ...]]:
        """The reports that arrive within ``wait`` seconds (EOFError: the helper is gone)."""
        reports: list[tuple[Any, ...]] = []
        while self.conn.poll(wait if not reports else 0):
            reports.append(self.conn.recv())
        return reports

    def stop(self) -> None:
        """Tell the helper to exit; kill it if it does not."""
        with contextlib.suppress(OSError):
            self.conn.send(("close",))
        try:
            self.process.wait(2.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.conn.close()


def helper_main(fd: int) -> None:
    """The helper process: renew what the worker holds while the worker runs."""
    # Ctrl-C and SIGTERM reach the worker's whole process group: the helper keeps renewing
    # through the worker's graceful shutdown, and ends with the worker.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_IGN)
    conn = Connection(fd)
    target, url, options, lease, worker = conn.recv()
    module, name = target.split(":")
    broker: Transport = getattr(importlib.import_module(module), name)(url, options)
    renewer = Renewer(broker, lease)
    conn.send(("ready",))
    try:
        _helper_loop(conn, renewer, worker)
    except (EOFError, OSError):
        pass  # the worker is gone
    finally:
        broker.close()


def _helper_loop(conn: Connection, renewer: Renewer, worker: int) -> None:
    interval = renewer.lease / 3
    next_round = 0.0  # the first round at once: the worker may have fetched while we started
    while True:
        for _ in range(10_000):  # everything sent so far, but never put a round off for long
            if not conn.poll(0):
                break
            message = conn.recv()
            if message[0] == "close":
                return
            renewer.apply(message)
        now = time.monotonic()
        if now < next_round:
            # Messages are read in batches, not one wakeup each: a busy worker sends many.
            time.sleep(min(TICK, next_round - now))
            continue
        next_round = now + interval
        if os.getppid() != worker:
            return  # the worker died: nothing of its may be renewed
        if not _running(worker):
            continue  # stopped (SIGSTOP): its leases run out, as the worker's own would
        report = renewer.renew()
        if report is not None:
            conn.send(report)


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (not stopped, traced or dead); True where /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return not Path("/proc/self/stat").exists()  # no /proc here: assume it runs
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] not in _NOT_RUNNING
