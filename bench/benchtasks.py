"""The tasks the benchmark runs: no-ops, so the figures measure celeriac, not the work."""

from __future__ import annotations

import time
from typing import Any

from celeriac import Celeriac

app = Celeriac("bench")  # the broker comes from CELERIAC_BROKER_URL, set by the benchmark

#: The rate limit of ``limited``, in tasks per second across every worker.
RATE = 50


@app.task
def noop(i: int) -> int:
    """Return the argument."""
    return i


@app.task
def add1(x: int) -> int:
    """One link of the benchmark's chain."""
    return x + 1


@app.task
def total(values: list[int]) -> int:
    """The body of the benchmark's chord."""
    return sum(values)


@app.task(bind=True, rate_limit=f"{RATE}/s")
def limited(self: Any, i: int) -> tuple[float, str | None]:
    """When it started, and where: the rate limit is measured on these."""
    return time.time(), self.request.hostname
