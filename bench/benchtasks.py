"""The tasks the benchmark runs: no-ops, so the figures measure celeriac, not the work."""

from __future__ import annotations

from celeriac import Celeriac

app = Celeriac("bench")  # the broker comes from CELERIAC_BROKER_URL, set by the benchmark


@app.task
def noop(i: int) -> int:
    """Return the argument."""
    return i
