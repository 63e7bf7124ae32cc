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
    app: Celeriac, url: str, n: int, pool: str, concurrency: int, work: Path, *extra: str
) -> dict[str, float]:
    """Drain throughput with task events off and on (worker -E), in turn, three rounds:
    the median of each, and ``cost_percent``, the throughput events take away by the median
    of the rounds' on/off ratios (a pair drained a moment apart shares the machine's mood)."""
    pairs = [
        (
            drain(app, url, n, pool, concurrency, work, *extra),
            drain(app, url, n, pool, concurrency, work, *extra, "-E"),
        )
        for _ in range(3)
    ]
    return {
        "off": statistics.median(off for off, _ in pairs),
        "on": statistics.median(on for _, on in pairs),
        "cost_percent": 100 * (1 - statistics.median(on / off for off, on in pairs)),
        "rounds": pairs,
    }


def workflows(app: Celeriac, url: str, work: Path, size: int = 1000) -> dict[str, Any]:
    """Seconds from sending to the final result: a chord of ``size`` tasks, a chain of ``size``
    links, on one prefork worker of two processes."""
    from celeriac import chain, chord

    noop, add1, total = (app.tasks[f"benchtasks.{name}"] for name in ("noop", "add1", "total"))
    app.broker.purge("celeriac")
    worker = start_worker(url, "prefork", 2, work / "workflows.log")
    try:
        wait_ready(app, worker)
        started = time.perf_counter()
        body = chord(noop.s(i) for i in range(size))(total.s())
        assert body.get(timeout=600) == sum(range(size))
        chord_s = time.perf_counter() - started
        started = time.perf_counter()
        last = chain(add1.s(0), *(add1.s() for _ in range(size - 1))).apply_async()
        assert last.get(timeout=600) == size
        chain_s = time.perf_counter() - started
    finally:
        stop_worker(worker)
    return {"size": size, "config": "prefork -c 2", "chord_s": chord_s, "chain_s": chain_s}


def rate_limit(app: Celeriac, url: str, work: Path, n: int = 500) -> dict[str, Any]:
    """How closely a cluster-wide rate limit holds with two worker processes (threads -c 4
    each): the starts of ``n`` tasks limited to ``benchtasks.RATE`` per second."""
    import benchtasks

    limited = app.tasks["benchtasks.limited"]
    app.broker.purge("celeriac")
    workers = [
        start_worker(url, "threads", 4, work / f"rate-{name}.log", "-n", f"{name}@%h")
        for name in ("w1", "w2")
    ]
    try:
        for worker in workers:
            wait_ready(app, worker)
        results = [limited.delay(i) for i in range(n)]
        starts = [result.get(timeout=600) for result in results]
    finally:
        for worker in workers:
            stop_worker(worker)
    times = sorted(at for at, _ in starts)
    measured = (n - 1) / (times[-1] - times[0])
    busiest = max(sum(1 for t in times[i:] if t < start + 1.0) for i, start in enumerate(times))
    limit = float(benchtasks.RATE)
    return {
        "limit": limit, "tasks": n, "workers": 2, "measured": measured,
        "error_percent": 100 * (measured / limit - 1), "busiest_second": busiest,
        "per_worker": {host: sum(1 for _, h in starts if h == host)
                       for host in sorted({h or "" for _, h in starts})},
    }  # fmt: skip
