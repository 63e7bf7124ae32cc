"""Run one client-side scenario of one peer and print its figures as one line of JSON.

``python runner.py enqueue PEER N``: N no-op tasks sent one by one, tasks/s.
``python runner.py round_trip PEER N``: N times enqueue then wait for the result, on a worker
the driver has started: p50/p95/p99 in ms, after 50 warm-up calls (which also wait for the
worker to come up).

Runs only with the peers' virtual environment's python; ``PEERS_REDIS_URL`` names the server.
A peer module has ``send(i)`` and ``call(i)``; an asyncio peer's are coroutines, and it also
has ``start()`` and ``stop()`` for its client side.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from types import ModuleType
from typing import Any, TypeVar

T = TypeVar("T")
WARM_UP = 50


def enqueue(module: ModuleType, n: int) -> dict[str, float]:
    """Tasks per second sent one at a time with the peer's usual call."""
    send = module.send
    if asyncio.iscoroutinefunction(send):
        seconds = asyncio.run(_session(module, _total_async(send, n)))
    else:
        seconds = _total_sync(send, n)
    return {"rate": n / seconds}


def round_trip(module: ModuleType, n: int) -> dict[str, float]:
    """Latency (ms) of enqueue then wait for the result: p50, p95, p99."""
    call = module.call
    if asyncio.iscoroutinefunction(call):
        samples = asyncio.run(_session(module, _samples_async(call, n)))
    else:
        samples = _samples_sync(call, n)
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98]}


def _total_sync(fn: Callable[[int], Any], n: int) -> float:
    """Seconds for n calls."""
    started = time.perf_counter()
    for i in range(n):
        fn(i)
    return time.perf_counter() - started


def _samples_sync(fn: Callable[[int], Any], n: int) -> list[float]:
    """Milliseconds of each of n calls, after the warm-up."""
    for i in range(WARM_UP):
        fn(i)
    samples = []
    for i in range(n):
        started = time.perf_counter()
        fn(i)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def _total_async(fn: Callable[[int], Awaitable[Any]], n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        await fn(i)
    return time.perf_counter() - started


async def _samples_async(fn: Callable[[int], Awaitable[Any]], n: int) -> list[float]:
    for i in range(WARM_UP):
        await fn(i)
    samples = []
    for i in range(n):
        started = time.perf_counter()
        await fn(i)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def _session(module: ModuleType, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` between the asyncio peer's client ``start()`` and ``stop()``."""
    await module.start()
    try:
        return await work
    finally:
        await module.stop()


SCENARIOS = {"enqueue": enqueue, "round_trip": round_trip}


def main(argv: list[str]) -> int:
    """``runner.py SCENARIO PEER N``: print the figures as JSON on the last line."""
    scenario, peer, n = argv[1], argv[2], int(argv[3])
    module = importlib.import_module(f"peer_{peer}")
    print(json.dumps(SCENARIOS[scenario](module, n)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
