"""The benchmark's scenarios, run against celeriac itself through its public API."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from bench.processes import group_rss_kib, start_worker, stop_worker, wait_ready
from celeriac import Celeriac


def enqueue_one(app: Celeriac, n: int) -> float:
    """Tasks per second sent one ``delay()`` at a time."""
    noop = app.tasks["benchtasks.noop"]
    started = time.perf_counter()
    for i in range(n):
        noop.delay(i)
    return n / (time.perf_counter() - started)


def enqueue_bulk(app: Celeriac, n: int, batch: int = 1000) -> float:
    """Tasks per second sent with ``app.send_many`` in batches."""
    noop = app.tasks["benchtasks.noop"]
    started = time.perf_counter()
    for first in range(0, n, batch):
        app.send_many([(noop, (i,), {}) for i in range(first, min(first + batch, n))])
    return n / (time.perf_counter() - started)


def backlog(app: Celeriac, n: int) -> None:
    """Queue ``n`` no-op tasks (not timed)."""
    app.broker.purge("celeriac")
    enqueue_bulk(app, n)


def wait_drained(app: Celeriac, queue: str = "celeriac", timeout: float = 600.0) -> None:
    """Poll until the queue is empty."""
    deadline = time.monotonic() + timeout
    while app.broker.size(queue):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{queue} not drained after {timeout}s")
        time.sleep(0.02)


def drain(
    app: Celeriac, url: str, n: int, pool: str, concurrency: int, work: Path, *extra: str
) -> float:
    """Tasks per second to drain a backlog of ``n``, from worker start to the last ack."""
    backlog(app, n)
    started = time.perf_counter()
    log = work / f"drain-{pool}-{concurrency}{''.join(extra)}.log"
    worker = start_worker(url, pool, concurrency, log, *extra)
    try:
        wait_drained(app)
        return n / (time.perf_counter() - started)
    finally:
        stop_worker(worker)


def round_trip(app: Celeriac, url: str, n: int, work: Path) -> dict[str, float]:
    """Latency (ms) of enqueue then ``get()`` on an idle worker: p50, p95, p99."""
    app.broker.purge("celeriac")
    log = work / "round-trip.log"
    worker = start_worker(url, "prefork", 2, log)
    noop = app.tasks["benchtasks.noop"]
    try:
        wait_ready(app, worker)
        for i in range(50):  # warm up both ends
            noop.delay(i).get(timeout=30)
        samples = []
        for i in range(n):
            started = time.perf_counter()
            noop.delay(i).get(timeout=30)
            samples.append((time.perf_counter() - started) * 1000)
    finally:
        stop_worker(worker)
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98]}


def idle_memory(app: Celeriac, url: str, work: Path, concurrency: int = 2) -> dict[str, Any]:
    """RSS of an idle prefork worker: each process and the total, in MB."""
    log = work / "idle.log"
    worker = start_worker(url, "prefork", concurrency, log)
    try:
        wait_ready(app, worker)
        time.sleep(1.0)  # let it settle into its idle loop
        sizes = sorted(group_rss_kib(worker.pid), reverse=True)
    finally:
        stop_worker(worker)
    return {
        "processes_mb": [round(kib / 1024, 1) for kib in sizes],
        "total_mb": round(sum(sizes) / 1024, 1),
        "largest_mb": round(max(sizes) / 1024, 1) if sizes else 0.0,
    }


def events_cost(
    app: Celeriac, url: str, n: int, pool: str, concurrency: int, work: Path, rounds: int = 2
) -> dict[str, float]:
    """Drain throughput with task events off and on (worker -E), best of ``rounds`` each,
    alternating; ``cost_percent`` is the throughput events take away."""
    off: list[float] = []
    on: list[float] = []
    for _ in range(rounds):
        off.append(drain(app, url, n, pool, concurrency, work))
        on.append(drain(app, url, n, pool, concurrency, work, "-E"))
    best_off, best_on = max(off), max(on)
    return {"off": best_off, "on": best_on, "cost_percent": 100 * (1 - best_on / best_off)}
