"""celeriac's benchmark: ``python3 dev.py bench [--engines sqlite] [--tasks 20000] [--peers]
[--scenarios throughput,workflows,rate_limit]``.

For each engine it measures, in one run, celeriac and the ceiling (bare client code doing
the same broker work per task) and prints the ratio; then the completion time of a 1,000-task
chord and a 1,000-link chain, and how closely a cluster-wide rate limit holds with two worker
processes. It writes every figure to a JSON file.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import machine, peers_driver

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # benchtasks, as the worker processes import it

#: (pool, concurrency, prefetch multiplier): the default multiplier (4) and deeper ones (a
#: prefork child fetches that many at a time, and a fetch, a result write and a word to the
#: parent each cost about the same for 64 messages as for 4; threads and solo keep a fetch
#: in flight while the tasks of the previous one run)
DRAIN_CONFIGS = (
    ("prefork", 2, 4), ("prefork", 4, 4), ("prefork", 2, 16), ("prefork", 4, 16),
    ("prefork", 2, 64), ("prefork", 4, 64),
    ("threads", 4, 4), ("threads", 4, 32), ("solo", 1, 4), ("solo", 1, 64),
)  # fmt: skip
SCENARIOS = ("throughput", "workflows", "rate_limit")


def run_engine(
    url: str, engine: str, tasks: int, work: Path, chosen: tuple[str, ...] = SCENARIOS
) -> dict[str, Any]:
    """The chosen scenarios on one engine."""
    os.environ["CELERIAC_BROKER_URL"] = url
    import benchtasks

    from bench import scenarios

    app = benchtasks.app
    app.close()
    app.broker.purge("celeriac")
    figures: dict[str, Any] = {"engine": engine, "url": url}
    if engine == "redis":
        figures["machine"] = machine.mood(url)
    if "throughput" in chosen:
        figures.update(throughput(app, url, engine, tasks, work))
    if "workflows" in chosen:
        figures["workflows"] = scenarios.workflows(app, url, work)
    if "rate_limit" in chosen:
        figures["rate_limit"] = scenarios.rate_limit(app, url, work)
    app.broker.purge("celeriac")
    return figures


def throughput(app: Any, url: str, engine: str, tasks: int, work: Path) -> dict[str, Any]:
    """Enqueue, drain, events, round trip and memory, celeriac and ceiling."""
    from bench import scenarios

    body = _sample_body(app)
    figures: dict[str, Any] = {"body_bytes": len(body)}
    bare_one, bare_bulk, bare_drain = _bare(engine, url, body, tasks, work)
    one = _alternating(lambda: scenarios.enqueue_one(app, tasks), bare_one)
    bulk = _alternating(lambda: scenarios.enqueue_bulk(app, tasks), bare_bulk)
    figures["enqueue_one"], figures["enqueue_bulk"] = one["ours"], bulk["ours"]
    figures["enqueue_ratios"] = {"one": one, "bulk": bulk}
    drains = {
        _config_name(pool, c, m): scenarios.drain(app, url, tasks, pool, c, work, *_prefetch(m))
        for pool, c, m in DRAIN_CONFIGS
    }
    best = max(drains, key=drains.__getitem__)
    pool, concurrency, multiplier = DRAIN_CONFIGS[list(drains).index(best)]
    bare_drains = {p: bare_drain(p) for p in (2, 4)}
    most = max(bare_drains, key=bare_drains.__getitem__)
    # One drain a configuration picks the best; the best and the ceiling's best are then
    # drained in turn, three rounds, as one drain swings by a fifth from run to run.
    paired = _alternating(
        lambda: scenarios.drain(app, url, tasks, pool, concurrency, work, *_prefetch(multiplier)),
        lambda: bare_drain(most),
    )
    figures["drain"] = {"best": paired["ours"], "config": best, "all": drains, "paired": paired}
    figures["events"] = {"config": best, **scenarios.events_cost(
        app, url, tasks, pool, concurrency, work, *_prefetch(multiplier)
    )}  # fmt: skip
    figures["round_trip_ms"] = scenarios.round_trip(app, url, 1000, work)
    figures["idle_memory"] = scenarios.idle_memory(app, url, work)
    figures["ceiling"] = {
        "enqueue_one": one["bare"],
        "enqueue_bulk": bulk["bare"],
        "drain": {"best": paired["bare"], "config": f"{most} processes", "all": bare_drains},
    }
    return figures


def _alternating(
    ours: Callable[[], float], bare: Callable[[], float], rounds: int = 3
) -> dict[str, Any]:
    """Rates of celeriac and of the ceiling, measured in turn ``rounds`` times: the median of
    each, and the median of the rounds' ratios (a pair measured a moment apart shares the
    machine's mood, so the ratio holds steadier than either rate)."""
    pairs = [(ours(), bare()) for _ in range(rounds)]
    return {
        "ours": statistics.median(o for o, _ in pairs),
        "bare": statistics.median(b for _, b in pairs),
        "ratio": statistics.median(o / b for o, b in pairs),
        "rounds": pairs,
    }


def _config_name(pool: str, concurrency: int, multiplier: int) -> str:
    deep = f" --prefetch-multiplier {multiplier}" if multiplier != 4 else ""
    return f"{pool} -c {concurrency}{deep}"


def _prefetch(multiplier: int) -> tuple[str, ...]:
    return ("--prefetch-multiplier", str(multiplier)) if multiplier != 4 else ()


def _sample_body(app: Any) -> bytes:
    from celeriac.message import encode

    return encode(app.build_message("benchtasks.noop", (12345,)))


def _bare(
    engine: str, url: str, body: bytes, tasks: int, work: Path
) -> tuple[Callable[[], float], Callable[[], float], Callable[[int], float]]:
    """The bare client's enqueue one by one, enqueue bulk and drain (by processes)."""
    if engine == "sqlite":
        from bench import ceiling_sqlite as bare_sqlite

        path = work / "ceiling.sqlite3"
        return (
            lambda: bare_sqlite.enqueue_one(path, body, tasks),
            lambda: bare_sqlite.enqueue_bulk(path, body, tasks),
            lambda p: bare_sqlite.drain(path, body, tasks, p),
        )
    from bench import ceiling_redis as bare_redis

    return (
        lambda: bare_redis.enqueue_one(url, body, tasks),
        lambda: bare_redis.enqueue_bulk(url, body, tasks),
        lambda p: bare_redis.drain(url, body, tasks, p),
    )


def table(results: list[dict[str, Any]]) -> str:
    """The figures as a table with ratios to the ceiling."""
    rows: list[tuple[str, ...]] = [("engine", "scenario", "celeriac", "ceiling", "ratio", "target")]
    for r in results:
        if "enqueue_one" in r:
            rows += _throughput_rows(r)
        rows += _limit_and_workflow_rows(r)
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))
                     for row in rows)  # fmt: skip


def _throughput_rows(r: dict[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    bare = r["ceiling"]
    paired = r.get("enqueue_ratios", {})
    rows += [
        _rate_row(r, "enqueue one by one", r["enqueue_one"], bare.get("enqueue_one"), 0.9,
                  paired.get("one", {}).get("ratio")),
        _rate_row(r, "enqueue bulk", r["enqueue_bulk"], bare.get("enqueue_bulk"), 0.5,
                  paired.get("bulk", {}).get("ratio")),
        _rate_row(
            r, f"drain ({r['drain']['config']})", r["drain"]["best"],
            bare.get("drain", {}).get("best"), 0.6, r["drain"].get("paired", {}).get("ratio"),
        ),
    ]  # fmt: skip
    if "events" in r:
        ev = r["events"]
        rows.append((r["engine"], f"drain with events on ({ev['config']})",
                     f"{ev['on']:,.0f}/s", f"off: {ev['off']:,.0f}/s",
                     f"cost {ev['cost_percent']:.1f}%", "cost < 10%"))  # fmt: skip
    rt = r["round_trip_ms"]
    rows.append((r["engine"], "round trip p50/p95/p99",
                 f"{rt['p50']:.2f}/{rt['p95']:.2f}/{rt['p99']:.2f} ms", "", "",
                 "p50 <= 1, p99 <= 3 ms"))  # fmt: skip
    mem = r["idle_memory"]
    sizes = f"{mem['largest_mb']}/{mem['total_mb']} MB"
    rows.append((r["engine"], "idle worker RSS (largest/total)", sizes, "", "",
                 "< 40 MB a process"))  # fmt: skip
    return rows


def _limit_and_workflow_rows(r: dict[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    if "workflows" in r:
        w = r["workflows"]
        for kind, what in (("chord", "tasks"), ("chain", "links")):
            rows.append((r["engine"], f"{kind} of {w['size']:,} {what} ({w['config']})",
                         f"{w[kind + '_s']:.2f} s", "", "", "completion time"))  # fmt: skip
    if "rate_limit" in r:
        rl = r["rate_limit"]
        rows.append((r["engine"], f"rate limit {rl['limit']:g}/s, {rl['workers']} workers, "
                     f"{rl['tasks']} tasks", f"{rl['measured']:.2f}/s",
                     f"busiest 1 s: {rl['busiest_second']}", f"{rl['error_percent']:+.2f}%",
                     "within 5%"))  # fmt: skip
    return rows


def _rate_row(
    r: dict[str, Any], name: str, ours: float, bare: float | None, target: float,
    paired: float | None = None,
) -> tuple[str, ...]:
    """A rate against the ceiling; ``paired``: the median ratio of alternating rounds."""
    if paired is not None:
        ratio = f"{paired:.2f} (median of rounds)"
    else:
        ratio = f"{ours / bare:.2f}" if bare else ""
    return (r["engine"], name, f"{ours:,.0f}/s", f"{bare:,.0f}/s" if bare else "", ratio,
            f">= {target:.2f} of ceiling")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(prog="python3 dev.py bench", description=__doc__)
    parser.add_argument("--engines", default="sqlite,redis", help="comma-separated: sqlite,redis")
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--json", default=str(HERE.parent / ".bench" / "latest.json"))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated: {','.join(SCENARIOS)}")  # fmt: skip
    parser.add_argument("--peers", action="store_true",
                        help="also measure Celery, Huey, Dramatiq, taskiq")  # fmt: skip
    options = parser.parse_args()
    chosen = tuple(name.strip() for name in options.scenarios.split(","))
    if unknown := set(chosen) - set(SCENARIOS):
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from "
                     f"{', '.join(SCENARIOS)}")  # fmt: skip
    if options.peers and "throughput" not in chosen:
        parser.error("--peers compares drain throughput: include the throughput scenario")
    # An installed package comes with its bytecode (pip compiles it); an editable checkout
    # under PYTHONDONTWRITEBYTECODE compiles every module at every start. Compile it once,
    # so that a worker starts here as it would where celeriac was installed.
    for package in (HERE.parent / "celeriac", HERE):  # the processes timed load no source
        compileall.compile_dir(package, quiet=1)
    results = []
    peers = None
    with tempfile.TemporaryDirectory(prefix="celeriac-bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        for engine in options.engines.split(","):
            url = broker_url(engine.strip(), work, stack)
            results.append(run_engine(url, engine.strip(), options.tasks, work, chosen))
        if options.peers:
            peers = peers_driver.measure(results, options.tasks, work, stack)
    header = (f"celeriac benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
              f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
              f"{options.tasks:,} tasks, scenarios: {', '.join(chosen)}")  # fmt: skip
    print(header)
    for figures in results:
        if "machine" in figures:
            print(machine.line(figures["machine"]))
    print(table(results))
    if peers:
        print(peers_driver.report(peers, results))
    out = Path(options.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"header": header, "results": results, "peers": peers}, indent=2))
    print(f"\nfigures written to {out}")
    return 0


def broker_url(engine: str, work: Path, stack: ExitStack) -> str:
    """The broker URL for an engine name (Redis: a private server for this run)."""
    if engine == "sqlite":
        return f"sqlite:///{work / 'bench.sqlite3'}"
    if engine == "redis":
        from bench.redis_server import BenchRedis

        return stack.enter_context(BenchRedis()).url
    raise SystemExit(f"unknown engine {engine!r}; choose sqlite or redis")


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    print(f"(took {time.perf_counter() - started:.0f} s)")
    raise SystemExit(code)
