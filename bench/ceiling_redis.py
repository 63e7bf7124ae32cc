"""The Redis ceiling: bare redis-py doing the Redis work celeriac does per task.

The same commands as celeriac's Redis engine — its Lua scripts, called with EVALSHA, with
the same batching (one script call per publish one by one, one per 1,000 in bulk; a claim
of a batch, then one call that acknowledges the batch and stores a result for each), sent
the way celeriac sends them: packed by hiredis and read on a redis-py connection, past the
client's per-command layers (``celeriac/transports/redis/direct.py``) — and no framework:
no message building, no encoding, no worker. The ratio celeriac/ceiling says what the
framework costs on top of the broker work.

The drain runs as a script of its own (``python -m bench.ceiling_redis``), timed from its
start as the worker is timed from its own: both pay for starting Python and importing
redis-py, and the script imports nothing else (the scripts' SHAs come on its command line).
"""

from __future__ import annotations

import json
import multiprocessing
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from hiredis import pack_command

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "ceiling:"
BASE = PREFIX + "{q}:"


def _load(client: redis.Redis) -> dict[str, str]:
    """Load the engine's publish, claim and complete scripts; their SHAs by name."""
    from celeriac.transports import redis_scripts as engine  # not in the drain's script

    sources = {"publish": engine.PUBLISH, "claim": engine.CLAIM, "complete": engine.COMPLETE}
    return {name: str(client.script_load(engine.LIB + source)) for name, source in sources.items()}


def _scripts(
    client: redis.Redis, shas: dict[str, str] | None = None
) -> dict[str, Callable[[list[str], list[Any]], Any]]:
    """The scripts (loaded now unless their ``shas`` are given), each called with one EVALSHA
    on a connection of its own."""
    conn = client.connection_pool.get_connection()

    def caller(sha: str) -> Callable[[list[str], list[Any]], Any]:
        def call(keys: list[str], args: list[Any]) -> Any:
            conn.send_packed_command([pack_command(("EVALSHA", sha, len(keys), *keys, *args))])
            return conn.read_response()

        return call

    return {name: caller(sha) for name, sha in (shas or _load(client)).items()}


def _publish_args(count: int, body: bytes) -> tuple[list[str], list[Any]]:
    keys: list[str] = []
    args: list[Any] = []
    for _ in range(count):
        keys += [BASE + "ids", BASE + "ready", BASE + "delayed", BASE + "wake"]
        args += [BASE, body, 0, ""]
    return keys, args


def enqueue_one(url: str, body: bytes, n: int) -> float:
    """One script call per message."""
    client = redis.Redis.from_url(url, protocol=2)
    client.flushdb()
    publish = _scripts(client)["publish"]
    keys, args = _publish_args(1, body)
    started = time.perf_counter()
    for _ in range(n):
        publish(keys, args)
    return n / (time.perf_counter() - started)


def enqueue_bulk(url: str, body: bytes, n: int, batch: int = 1000) -> float:
    """One script call per batch."""
    client = redis.Redis.from_url(url, protocol=2)
    client.flushdb()
    publish = _scripts(client)["publish"]
    started = time.perf_counter()
    for first in range(0, n, batch):
        publish(*_publish_args(min(batch, n - first), body))
    return n / (time.perf_counter() - started)


def _consume(url: str, limit: int, result: bytes, shas: dict[str, str]) -> None:
    client = redis.Redis.from_url(url, protocol=2)
    scripts = _scripts(client, shas)
    keys = [BASE + "ready", BASE + "delayed", BASE + "leased", BASE + "wake", BASE + "dead"]
    while True:
        args = [limit, 30000, 3, secrets.token_hex(8) + "-", 1000, "q", BASE]
        reply = scripts["claim"](keys, args)
        if len(reply) == 1:
            return
        done_keys: list[str] = []
        done_args: list[Any] = []
        for i in range(1, len(reply), 6):
            message_id, token = reply[i + 1].decode(), reply[i + 5].decode()
            result_key = f"{PREFIX}key:meta-{message_id}"
            done_keys += [BASE + "leased", BASE + "m:" + message_id, result_key]
            done_args += [message_id, token, "1", result, 86400000, result_key]
        scripts["complete"](done_keys, done_args)


def drain(url: str, body: bytes, n: int, processes: int, limit: int = 8) -> float:
    """Consumer processes claiming ``limit`` at a time until the backlog is gone: the time
    from the script's start to its end (see the module docstring)."""
    enqueue_bulk(url, body, n)
    shas = _load(redis.Redis.from_url(url, protocol=2))
    command = [sys.executable, "-m", "bench.ceiling_redis", url, str(processes), str(limit),
               json.dumps(shas)]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    return n / (time.perf_counter() - started)


def _drain_here(url: str, processes: int, limit: int, shas: dict[str, str]) -> None:
    ctx = multiprocessing.get_context("fork")
    result = b"x" * 200
    workers = [
        ctx.Process(target=_consume, args=(url, limit, result, shas)) for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
        if worker.exitcode != 0:
            raise SystemExit(f"a ceiling consumer failed (exit code {worker.exitcode})")


if __name__ == "__main__":
    _drain_here(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4]))
