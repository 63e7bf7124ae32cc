"""The Redis ceiling: bare redis-py doing the Redis work celeriac does per task.

The same commands as celeriac's Redis engine — its Lua scripts, called with EVALSHA, with
the same batching (one script call per publish one by one, one per 1,000 in bulk; a claim
of a batch, then one call that acknowledges the batch and stores a result for each), sent
the way celeriac sends them: packed and read on a redis-py connection, past the client's
per-command layers (``celeriac/transports/redis/direct.py``) — and no framework: no message
building, no encoding, no worker. The ratio celeriac/ceiling says what the framework costs
on top of the broker work.
"""

from __future__ import annotations

import multiprocessing
import secrets
import time
from collections.abc import Callable
from typing import Any

import redis

from celeriac.transports import redis_scripts as engine
from celeriac.transports.redis.direct import pack

PREFIX = "ceiling:"
BASE = PREFIX + "{q}:"


def _scripts(client: redis.Redis) -> dict[str, Callable[[list[str], list[Any]], Any]]:
    """The scripts, loaded, each called with one EVALSHA on a connection of its own."""
    conn = client.connection_pool.get_connection()

    def caller(source: str) -> Callable[[list[str], list[Any]], Any]:
        sha = client.script_load(engine.LIB + source)

        def call(keys: list[str], args: list[Any]) -> Any:
            conn.send_packed_command(pack(conn, ("EVALSHA", sha, len(keys), *keys, *args)))
            return conn.read_response()

        return call

    return {
        name: caller(source)
        for name, source in (
            ("publish", engine.PUBLISH),
            ("claim", engine.CLAIM),
            ("complete", engine.COMPLETE),
        )
    }


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


def _consume(url: str, limit: int, result: bytes) -> None:
    client = redis.Redis.from_url(url, protocol=2)
    scripts = _scripts(client)
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
    """Consumer processes claiming ``limit`` at a time until the backlog is gone."""
    enqueue_bulk(url, body, n)
    started = time.perf_counter()
    ctx = multiprocessing.get_context("fork")
    result = b"x" * 200
    workers = [ctx.Process(target=_consume, args=(url, limit, result)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return n / (time.perf_counter() - started)
