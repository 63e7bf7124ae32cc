"""The demo's tasks. No broker is configured: celeriac uses ./celeriac.sqlite3."""

from __future__ import annotations

from celeriac import Celeriac

app = Celeriac("demo")


@app.task
def add(x: int, y: int) -> int:
    """Add two numbers."""
    return x + y


@app.task
def checked_sqrt(n: int) -> float:
    """Square root; refuses negative numbers (the demo sends a few on purpose)."""
    if n < 0:
        raise ValueError(f"no real square root of {n}")
    return float(n) ** 0.5
