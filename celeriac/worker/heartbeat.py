"""Heartbeats: workers announce themselves, and learn of each other.

A worker sends ``worker-online`` as it starts, ``worker-heartbeat`` every
``HEARTBEAT_INTERVAL`` seconds (what it runs, what it has done, its load), and
``worker-offline`` as it stops. Before going online it reads the worker events the broker
keeps and logs the other workers it found, or that it is alone. Monitors count a worker
offline after ``MISSED_BEATS`` missed heartbeats.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
from collections.abc import Callable
from typing import Any

from celeriac import __version__
from celeriac.events import (
    HEARTBEAT_INTERVAL,
    MISSED_BEATS,
    WORKERS_HISTORY,
    WORKERS_HISTORY_LENGTH,
    EventSender,
    decode_batch,
)
from celeriac.history import History

logger = logging.getLogger("celeriac.worker")


class Heartbeat:
    """A thread that sends this worker's heartbeats through ``sender``."""

    def __init__(
        self,
        sender: EventSender,
        counters: Callable[[], dict[str, Any]],
        interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        self.sender = sender
        self.counters = counters
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def start(self) -> None:
        """Log the other workers online, announce this one, and keep beating."""
        try:
            log_peers(self.sender)
        except Exception as exc:
            logger.warning("could not look for other workers: %s", exc)
        self.sender.send_worker(
            "worker-online", freq=self.interval, sw_ident="celeriac", sw_ver=__version__,
            sw_sys=platform.system(), **self.counters(),
        )  # fmt: skip
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                fields = self.counters()
            except Exception:
                logger.exception("heartbeat: could not count this worker's work")
                fields = {}
            self.sender.send_worker("worker-heartbeat", freq=self.interval, **fields)

    def stop(self) -> None:
        """Stop beating and announce that this worker is going offline."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.interval + 1)
        self.sender.send_worker("worker-offline")


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (zeros where the system does not tell)."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return [0.0, 0.0, 0.0]


def online_workers(sender: EventSender, now: float | None = None) -> dict[str, dict[str, Any]]:
    """The workers whose last kept event says they are online and beating, by hostname."""
    history = History(
        sender.app.broker, WORKERS_HISTORY, WORKERS_HISTORY_LENGTH, sender.workers.age
    )
    last: dict[str, dict[str, Any]] = {}
    for _, body in history.read():
        for line in body.split(b"\n"):
            for event in decode_batch(line)[1]:
                last[str(event.get("hostname"))] = event
    now = time.time() if now is None else now
    return {name: event for name, event in last.items() if beating(event, now)}


def beating(event: dict[str, Any], now: float) -> bool:
    """True if a worker's last event says it is online and it has missed no more than
    ``MISSED_BEATS`` heartbeats."""
    if event.get("type") == "worker-offline":
        return False
    freq = float(event.get("freq") or HEARTBEAT_INTERVAL)
    return now - float(event.get("timestamp") or 0) < freq * MISSED_BEATS


def log_peers(sender: EventSender) -> None:
    """Log the other workers online, or that this one is alone; warn of a name in use."""
    others = online_workers(sender)
    twin = others.pop(sender.hostname, None)
    if twin is not None and twin.get("pid") != sender.pid:
        logger.warning(
            "A worker named %s (pid %s) sent a heartbeat %.1f s ago: if it still runs, give "
            "each worker its own name with -n", sender.hostname, twin.get("pid"),
            time.time() - float(twin.get("timestamp") or 0),
        )  # fmt: skip
    if others:
        logger.info("Other workers online: %s", ", ".join(sorted(others)))
    else:
        logger.info("No other workers online: this worker is alone.")
