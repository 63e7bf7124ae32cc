"""How the machine treats short waits, measured in the run: what a latency figure stands on.

A round trip wakes several processes one after another (the client, Redis, the worker), and
code that runs right after a wait finds cold caches. On some virtual machines a Redis PING
after a short idle costs three times one sent in a loop, and Python code after 20 ms of
sleep runs ten times slower than warm; a round trip there is slow for every task queue. The
figures go with the run, so that runs on different machines can be told apart.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import redis


def mood(url: str, samples: int = 500) -> dict[str, float]:
    """Redis PING p50 (µs) back to back and after 2 ms idle; how many times slower a small
    piece of Python runs after 20 ms of sleep than in a loop."""
    client = redis.Redis.from_url(url, protocol=2)
    conn: Any = client.connection_pool.get_connection()
    try:
        busy = _median(lambda: _ping(conn), samples, idle=0.0)
        idle = _median(lambda: _ping(conn), samples, idle=0.002)
    finally:
        conn.disconnect()
    warm = _median(_work, samples, idle=0.0)
    cold = _median(_work, samples // 5, idle=0.02)
    return {"ping_us": busy, "ping_after_idle_us": idle, "python_after_idle_x": cold / warm}


def line(figures: dict[str, float]) -> str:
    """The figures as one line of the report."""
    return (
        f"machine: Redis PING {figures['ping_us']:.0f} µs in a row, "
        f"{figures['ping_after_idle_us']:.0f} µs after 2 ms idle; Python code "
        f"{figures['python_after_idle_x']:.1f}x slower after 20 ms idle than warm"
    )


def _ping(conn: Any) -> None:
    conn.send_command("PING")
    conn.read_response()


def _work() -> None:
    """A few microseconds of the kind of code a task queue runs: dicts, strings, calls."""
    fields = {f"k{i}": str(i) for i in range(20)}
    "-".join(sorted(fields.values()))


def _median(call: Any, samples: int, idle: float) -> float:
    times = []
    for _ in range(samples):
        if idle:
            time.sleep(idle)
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1e6)
    return statistics.median(times)
