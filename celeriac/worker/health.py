"""The health file: touched every few seconds while the worker is healthy, for orchestrators.

A container's liveness probe checks the file's age (``find PATH -mmin -1``, or
``test $(($(date +%s) - $(stat -c %Y PATH))) -lt 30``). Healthy means: the main loop ran
recently and the broker answered recently. The file is removed when the worker stops.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Protocol

logger = logging.getLogger("celeriac.worker")

#: Seconds between touches of the file.
INTERVAL = 2.0
#: A worker whose loop or broker has been silent this long is not healthy.
STALE_AFTER = 30.0


class Monitored(Protocol):
    """What the health file watches (the consumer)."""

    last_loop: float
    last_broker_ok: float


class HealthFile:
    """A thread that keeps ``path`` fresh while ``watched`` is healthy."""

    def __init__(self, path: str, watched: Monitored) -> None:
        self.path = Path(path)
        self.watched = watched
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="health-file", daemon=True)

    def start(self) -> None:
        """Touch the file now and keep touching it."""
        self._thread.start()

    def healthy(self) -> bool:
        """The main loop and the broker both showed life within STALE_AFTER seconds."""
        now = time.monotonic()
        return (
            now - self.watched.last_loop < STALE_AFTER
            and now - self.watched.last_broker_ok < STALE_AFTER
        )

    def _loop(self) -> None:
        while True:
            if self.healthy():
                try:
                    self.path.touch()
                except OSError as exc:
                    logger.warning("cannot touch the health file %s: %s", self.path, exc)
            if self._stop.wait(INTERVAL):
                return

    def stop(self) -> None:
        """Stop touching and remove the file."""
        self._stop.set()
        self._thread.join(INTERVAL + 1)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
