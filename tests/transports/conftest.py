"""The engines the transport contract runs over; engine-specific setup lives only here."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_server import RedisClusterServers, RedisServer

from celeriac.transports import Transport, open_transport

MakeTransport = Callable[..., Transport]


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A ``redis-server`` of the test session's own, on a free port (never the system one)."""
    with RedisServer() as server:
        yield server.url


@pytest.fixture(params=["memory", "sqlite", "redis", "redis-cluster"])
def make_transport(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeTransport]:
    """Open clients of one fresh broker of the engine under test; options per client."""
    defaults: dict[str, Any] = {}
    if request.param == "memory":
        url = f"memory://test-{uuid.uuid4().hex}"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'broker.sqlite3'}"
        # Take back expired leases on every fetch, so lease tests need not wait 0.5 s more.
        defaults["reclaim_interval"] = 0
    elif request.param == "redis":
        url = request.getfixturevalue("redis_url")
        import redis  # the dev extra has it; imported here so other engines run without it

        with redis.Redis.from_url(url) as client:
            client.flushdb()  # one server for the session: each test starts on an empty db
    elif request.param == "redis-cluster":
        cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
        cluster.flush()  # one cluster per module: each test starts on empty nodes
        url = cluster.url
    else:  # pragma: no cover - a new engine must say how to reach it
        raise AssertionError(f"no setup for engine {request.param!r}")
    opened: list[Transport] = []

    def make(**options: Any) -> Transport:
        transport = open_transport(url, {**defaults, **options})
        opened.append(transport)
        return transport

    yield make
    for transport in opened:
        transport.close()


@pytest.fixture
def transport(make_transport: MakeTransport) -> Transport:
    """One client of a fresh broker of the engine under test."""
    return make_transport()
