"""``--autoscale MAX,MIN``: grow the pool with the backlog, shrink it when slots sit idle."""

from __future__ import annotations

import logging
import time

from celeriac.worker.pools import Pool

logger = logging.getLogger("celeriac.worker")


class Autoscaler:
    """Keeps the pool between ``minimum`` and ``maximum`` slots, following the work."""

    def __init__(
        self, pool: Pool, maximum: int, minimum: int, keepalive: float = 10.0
    ) -> None:
        if not 0 < minimum <= maximum:
            raise ValueError(f"--autoscale needs 0 < MIN <= MAX, got {maximum},{minimum}")
        self.pool = pool
        self.maximum = maximum
        self.minimum = minimum
        self.keepalive = keepalive
        self._last_busy = time.monotonic()
        self._last_step = 0.0

    def step(self, running: int) -> None:
        """Look at the work once a second: grow at once, shrink after ``keepalive`` idle."""
        now = time.monotonic()
        if now - self._last_step < 1.0:
            return
        self._last_step = now
        size, backlog = self.pool.concurrency, self.pool.backlog()
        if backlog and size < self.maximum:
            more = min(backlog, self.maximum - size)
            logger.info("autoscale: %d waiting, growing the pool %d -> %d", backlog, size,
                        size + more)  # fmt: skip
            self.pool.grow(more)
        if backlog or running >= size:
            self._last_busy = now
        elif size > self.minimum and now - self._last_busy > self.keepalive:
            logger.info("autoscale: idle, shrinking the pool %d -> %d", size, size - 1)
            self.pool.shrink(1)
            self._last_busy = now
