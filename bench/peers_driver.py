"""The peers, measured beside celeriac: ``python3 dev.py bench --peers``.

Celery 5 (its default prefork configuration, its recommended production settings and a few
others), Huey, Dramatiq and taskiq, each with its Redis broker on the run's private
redis-server (database 1, so celeriac's keys in database 0 are never touched). They are
installed into their own virtual environment, ``.bench/peers-venv``, made here on the first
run and reused after; the project's environment never imports them. Their code runs only in
subprocesses of that environment's python: ``bench/peers/runner.py`` for the client side and
each peer's own worker command.

Per peer: enqueue one by one; drain a backlog with a real worker in a few configurations
(time from worker start until the completion counter reaches N: every peer's no-op does one
INCR); round trip (enqueue, wait for the result). Each drain starts from the same backlog,
the keys the peer's own enqueue wrote, restored with DUMP/RESTORE.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

HERE = Path(__file__).resolve().parent
PEERS_DIR = HERE / "peers"
VENV = HERE.parent / ".bench" / "peers-venv"
PYTHON = VENV / "bin" / "python"
PACKAGES = ("celery[redis]", "huey", "dramatiq[redis]", "taskiq", "taskiq-redis", "redis[hiredis]")
DISTRIBUTIONS = ("celery", "kombu", "huey", "dramatiq", "taskiq", "taskiq-redis", "redis")
STAMP = VENV / ".peers-installed"
DONE_KEY = "bench:peers:done"  # bench/peers/peercommon.py
ROUND_TRIPS = 1000
STALL_SECONDS = 30.0
Backlog = list[tuple[bytes, int, bytes]]  # (key, ttl ms or -1, DUMP payload)


@dataclass(frozen=True)
class Config:
    """One way to run a peer's worker: ``argv[0]`` is a program in the peers' venv."""

    label: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Peer:
    """A peer, the worker configurations tried for its drain, and whether it has a result API."""

    name: str
    drains: tuple[Config, ...]
    round_trip: bool = True


def _celery(label: str, *args: str, acks_late: bool = False) -> Config:
    env = (("PEERS_CELERY_ACKS_LATE", "1"),) if acks_late else ()
    return Config(label, ("celery", "-A", "peer_celery", "worker", "-l", "warning", *args), env)


CELERY_DEFAULT = "default prefork -c 2"
CELERY_ACKS_LATE = "acks_late, prefetch 1, prefork -c 2"
# Chosen from a wider trial on a 2-core machine (20,000 tasks): Celery solo, threads -c 4 and
# the --without-mingle/gossip/heartbeat flags, Huey with 2 or 8 threads or 3 processes,
# Dramatiq -p 2 -t 1, -p 2 -t 16, -p 4 -t 2, -p 1 -t 8, and taskiq with 3 or 4 workers or
# --max-prefetch 100 were all slower than the best kept here.
PEERS = (
    Peer("celery", (
        _celery(CELERY_DEFAULT),  # -c defaults to the CPU count: 2 here
        _celery(CELERY_ACKS_LATE, acks_late=True),
        _celery("prefork -c 4", "-c", "4"),
        _celery("prefork -c 2, prefetch multiplier 16", "--prefetch-multiplier", "16"),
    )),
    Peer("huey", tuple(
        Config(f"-k {kind} -w {w}", ("huey_consumer", "peer_huey.huey", "-k", kind, "-w", str(w)))
        for kind, w in (("process", 2), ("process", 4), ("thread", 4))
    )),
    Peer("dramatiq", tuple(
        Config(f"-p {p} -t {t}", ("dramatiq", "peer_dramatiq", "-p", str(p), "-t", str(t)))
        for p, t in ((2, 8), (4, 8), (3, 4))
    )),
    Peer("taskiq", tuple(
        Config(" ".join(args), ("taskiq", "worker", "peer_taskiq:broker", "--log-level",
                                "WARNING", *args))
        for args in (("--workers", "2"), ("--workers", "2", "--no-parse"), ("--workers", "1"))
    )),
)  # fmt: skip


def measure(
    results: list[dict[str, Any]], tasks: int, work: Path, stack: ExitStack
) -> dict[str, Any]:
    """Every peer's figures, on the redis-server celeriac's Redis engine used in this run."""
    url = _redis_url(results, stack)
    peers_url = url.rsplit("/", 1)[0] + "/1"
    figures: dict[str, Any] = {"url": peers_url, "tasks": tasks}
    try:
        ensure_venv()
        figures["versions"] = _versions()
    except (OSError, subprocess.SubprocessError) as exc:  # celeriac's own figures still count
        figures["error"] = f"the peers' venv could not be made: {_describe(exc)}"
        return figures
    client = redis.Redis.from_url(peers_url)
    for peer in PEERS:
        print(f"peers: measuring {peer.name} ...", file=sys.stderr, flush=True)
        figures[peer.name] = _measure_peer(peer, client, peers_url, tasks, work)
    client.flushdb()
    return figures


def _redis_url(results: list[dict[str, Any]], stack: ExitStack) -> str:
    """The Redis engine's private server, or one of our own when the run has no Redis engine."""
    for r in results:
        if r["engine"] == "redis":
            return str(r["url"])
    from bench.redis_server import BenchRedis

    return stack.enter_context(BenchRedis()).url


def ensure_venv() -> None:
    """Create ``.bench/peers-venv`` with the peers installed, unless it is there already."""
    wanted = " ".join(PACKAGES)
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    print(f"peers: installing {wanted} into {VENV} ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(PYTHON), "-m", "pip", "install", "-qq", "--disable-pip-version-check"]
    subprocess.run([*pip, *PACKAGES], check=True)
    STAMP.write_text(wanted)


def _versions() -> dict[str, str]:
    code = ("import importlib.metadata as m, json, sys; "
            "print(json.dumps({d: m.version(d) for d in sys.argv[1:]}))")  # fmt: skip
    out = subprocess.run([str(PYTHON), "-c", code, *DISTRIBUTIONS], capture_output=True,
                         text=True, check=True, timeout=60)  # fmt: skip
    return dict(json.loads(out.stdout))


def _measure_peer(peer: Peer, client: redis.Redis, url: str, n: int, work: Path) -> dict[str, Any]:
    """One peer's enqueue, drains and round trip; a failure is recorded, not raised."""
    errors: dict[str, str] = {}
    figures: dict[str, Any] = {"errors": errors}
    try:
        client.flushdb()
        figures["enqueue_one"] = _runner(url, "enqueue", peer.name, n)["rate"]
        backlog = _snapshot(client)
    except Exception as exc:  # a peer that cannot enqueue is reported, the run goes on
        errors["enqueue"] = _describe(exc)
        return figures
    rates = _drains(peer, client, backlog, url, n, work, errors)
    if rates:
        best = max(rates, key=rates.__getitem__)
        figures["drain"] = {"best": rates[best], "config": best, "all": rates}
    if peer.round_trip:
        config = _round_trip_config(peer, rates)
        try:
            latency = _round_trip(peer.name, config, client, url, work)
            figures["round_trip_ms"] = {"config": config.label, **latency}
        except Exception as exc:
            errors[f"round trip {config.label}"] = _describe(exc)
    return figures


def _drains(
    peer: Peer, client: redis.Redis, backlog: Backlog, url: str, n: int, work: Path,
    errors: dict[str, str],
) -> dict[str, float]:  # fmt: skip
    """Drain rate per configuration that worked; the others' failures go into ``errors``."""
    rates: dict[str, float] = {}
    for config in peer.drains:
        try:
            rates[config.label] = _drain(config, client, backlog, url, n, work)
        except Exception as exc:
            errors[f"drain {config.label}"] = _describe(exc)
    return rates


def _round_trip_config(peer: Peer, rates: dict[str, float]) -> Config:
    """Celery: its default configuration (as celeriac's prefork -c 2); others: their best."""
    if peer.name == "celery" or not rates:
        return peer.drains[0]
    best = max(rates, key=rates.__getitem__)
    return next(c for c in peer.drains if c.label == best)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def _snapshot(client: redis.Redis) -> Backlog:
    """Every key of the peers' database as (key, ttl ms or -1, DUMP payload)."""
    backlog = []
    for key in client.scan_iter(count=1000):
        payload = client.dump(key)
        if payload is not None:
            backlog.append((key, int(client.pttl(key)), payload))
    if not backlog:
        raise RuntimeError("the enqueue wrote no keys")
    return backlog


def _restore(client: redis.Redis, snapshot: Backlog) -> None:
    """Empty the peers' database and put the backlog back exactly as the enqueue left it."""
    client.flushdb()
    with client.pipeline(transaction=False) as pipe:
        for key, ttl, payload in snapshot:
            pipe.restore(key, max(ttl, 0), payload, replace=True)
        pipe.execute()


def _drain(
    config: Config, client: redis.Redis, backlog: Backlog, url: str,
    n: int, work: Path,
) -> float:  # fmt: skip
    """Tasks per second from worker start until the counter says all ``n`` are done."""
    _restore(client, backlog)
    log = work / f"peer-{config.argv[0]}-{_slug(config.label)}.log"
    started = time.perf_counter()
    with _worker(config, url, log) as process:
        _wait_count(client, n, process, log)
        return n / (time.perf_counter() - started)


def _wait_count(client: redis.Redis, n: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll the completion counter until ``n``; fail if the worker exits or progress stalls."""
    last, moved = 0, time.monotonic()
    while (done := int(client.get(DONE_KEY) or 0)) < n:
        if process.poll() is not None:
            raise RuntimeError(f"worker exited ({process.returncode}) at {done}/{n}: {_tail(log)}")
        if done != last:
            last, moved = done, time.monotonic()
        elif time.monotonic() - moved > STALL_SECONDS:
            raise RuntimeError(f"no progress for {STALL_SECONDS:.0f} s at {done}/{n}: {_tail(log)}")
        time.sleep(0.01)


def _round_trip(
    peer: str, config: Config, client: redis.Redis, url: str, work: Path
) -> dict[str, float]:
    """p50/p95/p99 (ms) of enqueue then wait for the result, on an otherwise idle worker."""
    client.flushdb()
    log = work / f"peer-{peer}-round-trip.log"
    with _worker(config, url, log):
        figures = _runner(url, "round_trip", peer, ROUND_TRIPS)
    return {k: figures[k] for k in ("p50", "p95", "p99")}


def _runner(url: str, scenario: str, peer: str, n: int) -> dict[str, float]:
    """Run ``bench/peers/runner.py`` for ``peer_<peer>.py`` in the peers' venv; the last line
    it prints is JSON."""
    command = [str(PYTHON), str(PEERS_DIR / "runner.py"), scenario, peer, str(n)]
    out = subprocess.run(command, env=_env(url, ()), capture_output=True, text=True,
                         timeout=120 + n / 50)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"runner {scenario} {peer} failed: {out.stderr.strip()[-400:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _env(url: str, extra: tuple[tuple[str, str], ...]) -> dict[str, str]:
    env = dict(os.environ, PEERS_REDIS_URL=url, PYTHONPATH=str(PEERS_DIR), **dict(extra))
    env.pop("PYTHONHOME", None)
    env.pop("VIRTUAL_ENV", None)
    return env


@contextmanager
def _worker(config: Config, url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The peer's worker in its own process group, logging to ``log``; always stopped."""
    argv = [str(VENV / "bin" / config.argv[0]), *config.argv[1:]]
    with log.open("ab") as out:
        process = subprocess.Popen(argv, env=_env(url, config.env), cwd=log.parent,
                                   stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    try:
        yield process
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the group, SIGKILL it if it lingers, then SIGKILL any straggler in it."""
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()
    _signal_group(process.pid, signal.SIGKILL)


def _signal_group(pgid: int, signum: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def _tail(log: Path, chars: int = 300) -> str:
    try:
        return log.read_text(errors="replace")[-chars:].strip()
    except OSError:
        return ""


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label).strip("-")


# -- the report ---------------------------------------------------------------------------------


def report(peers: dict[str, Any], results: list[dict[str, Any]]) -> str:
    """The peers' table (ratios celeriac/peer), the DESIGN targets' verdicts and the notes."""
    if "error" in peers:
        return f"\npeers not measured: {peers['error']}"
    ours = next((r for r in results if r["engine"] == "redis"), None)
    versions = ", ".join(f"{k} {v}" for k, v in peers["versions"].items())
    lines = [
        f"\npeers on the same redis-server ({versions}), {peers['tasks']:,} tasks",
        _table(peers, ours),
    ]
    lines += _verdicts(peers, ours)
    lines += [
        "notes: every peer's no-op does one INCR on a counter (how the drain's end is seen), where",
        "  celeriac's stores a result instead; Celery, Huey and taskiq also store their result,",
        "  Dramatiq's drain actor stores none. Each drain starts from the peer's own enqueued",
        "  backlog and is timed from worker start. taskiq's wait_result polls every 1 ms.",
    ]
    errors = [f"  {name} {what}: {msg}" for name, fig in _peer_items(peers)
              for what, msg in fig.get("errors", {}).items()]  # fmt: skip
    if errors:
        lines += ["not measured:", *errors]
    return "\n".join(lines)


def _peer_items(peers: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, peers[p.name]) for p in PEERS if p.name in peers]


def _table(peers: dict[str, Any], ours: dict[str, Any] | None) -> str:
    rows: list[tuple[str, ...]] = [("peer", "scenario", "peer", "celeriac", "celeriac/peer")]
    our_drain = ours["drain"]["best"] if ours else None
    for name, fig in _peer_items(peers):
        if "enqueue_one" in fig:
            rows.append(_ratio_row(name, "enqueue one by one", fig["enqueue_one"],
                                   ours["enqueue_one"] if ours else None))  # fmt: skip
        drains = fig.get("drain", {}).get("all", {})
        for label in (CELERY_DEFAULT, CELERY_ACKS_LATE) if name == "celery" else ():
            if label in drains:
                rows.append(_ratio_row(f"{name} ({label})", "drain", drains[label], our_drain))
        if "drain" in fig:
            best = fig["drain"]
            rows.append(_ratio_row(f"{name} ({best['config']})", "drain, best of "
                                   f"{len(drains)}", best["best"], our_drain))  # fmt: skip
        if "round_trip_ms" in fig:
            rows.append(_latency_row(name, fig["round_trip_ms"], ours))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)  # fmt: skip


def _ratio_row(name: str, scenario: str, theirs: float, ours: float | None) -> tuple[str, ...]:
    ratio = f"{ours / theirs:.2f}" if ours else ""
    return (name, scenario, f"{theirs:,.0f}/s", f"{ours:,.0f}/s" if ours else "", ratio)


def _latency_row(name: str, rt: dict[str, Any], ours: dict[str, Any] | None) -> tuple[str, ...]:
    def fmt(d: dict[str, Any]) -> str:
        return f"{d['p50']:.2f}/{d['p95']:.2f}/{d['p99']:.2f} ms"

    mine = fmt(ours["round_trip_ms"]) if ours else ""
    return (f"{name} ({rt['config']})", "round trip p50/p95/p99", fmt(rt), mine, "")


def _verdicts(peers: dict[str, Any], ours: dict[str, Any] | None) -> list[str]:
    """DESIGN section 7: drain >= 10x Celery's default prefork, >= 2x the fastest peer's best."""
    if ours is None:
        return ["targets: no celeriac Redis figures in this run (add --engines redis)"]
    drain = ours["drain"]["best"]
    lines = []
    default = peers.get("celery", {}).get("drain", {}).get("all", {}).get(CELERY_DEFAULT)
    lines.append(_verdict(f"celeriac drain >= 10x Celery ({CELERY_DEFAULT})", drain, default, 10))
    bests = {f"{name} ({fig['drain']['config']})": fig["drain"]["best"]
             for name, fig in _peer_items(peers) if "drain" in fig}  # fmt: skip
    fastest = max(bests, key=bests.__getitem__) if bests else "no peer"
    lines.append(_verdict(f"celeriac drain >= 2x the fastest peer's best, {fastest}", drain,
                          bests.get(fastest), 2))  # fmt: skip
    return lines


def _verdict(what: str, ours: float, theirs: float | None, times: float) -> str:
    if not theirs:
        return f"target: {what}: not measured"
    ratio = ours / theirs
    word = "MET" if ratio >= times else "MISSED"
    return f"target: {what}: {ours:,.0f}/s vs {theirs:,.0f}/s = {ratio:.2f}x: {word}"
