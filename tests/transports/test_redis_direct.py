"""Script calls sent straight on a connection (``celeriac/transports/redis/direct.py``):
shared by threads, in step after errors and timeouts, scripts loaded again when the server
forgot them, and every connection closed by ``close()``."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from celeriac import Celeriac
from celeriac.errors import TransportError
from celeriac.transports import open_transport
from celeriac.transports.redis import RedisTransport
from celeriac.transports.redis.direct import DirectScript

Q = "direct"


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()
        yield client


@pytest.fixture
def broker(redis_url: str, raw: redis.Redis) -> Iterator[RedisTransport]:
    transport = open_transport(redis_url)
    assert isinstance(transport, RedisTransport)
    yield transport
    transport.close()


def clients(raw: redis.Redis) -> int:
    return len(raw.client_list())


def settle(raw: redis.Redis, count: int) -> int:
    """The number of clients once it reaches ``count`` (the server notices a close late)."""
    deadline = time.monotonic() + 5
    while clients(raw) != count and time.monotonic() < deadline:
        time.sleep(0.01)
    return clients(raw)


def test_threads_share_a_few_connections_and_close_ends_them(
    broker: RedisTransport, raw: redis.Redis
) -> None:
    alone = clients(raw)  # the broker opens nothing before its first call
    broker.publish(Q, b"warm-up")  # (the scripts loaded, if the server had not seen them)
    before = clients(raw)
    barrier = threading.Barrier(8)

    def publish(n: int) -> None:
        barrier.wait()
        for i in range(50):
            broker.publish(Q, b"%d-%d" % (n, i))

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert broker.size(Q) == 401
    during = clients(raw)
    assert before < during <= before + 8  # at most one more per thread
    for i in range(20):  # the threads are gone: their connections serve this one
        broker.publish(Q, b"after-%d" % i)
    assert clients(raw) == during
    bodies = {d.body for d in broker.fetch([Q], limit=500, timeout=1.0)}
    assert len(bodies) == 421
    broker.close()
    assert settle(raw, alone) == alone  # every connection it opened


def test_a_script_the_server_forgot_is_loaded_again(
    broker: RedisTransport, raw: redis.Redis
) -> None:
    broker.publish(Q, b"before")
    raw.script_flush()  # as a server restarted without its scripts
    broker.publish(Q, b"after")
    assert sorted(d.body for d in broker.fetch([Q], limit=5, timeout=1.0)) == [
        b"after",
        b"before",
    ]


def test_a_script_error_leaves_the_connection_in_step(
    broker: RedisTransport, raw: redis.Redis
) -> None:
    broker.publish(Q, b"first")
    connections = broker._script().direct
    assert connections is not None
    refusing = DirectScript(raw.register_script("return redis.error_reply('refused')"), connections)
    before = clients(raw)
    for _ in range(3):
        with pytest.raises(redis.exceptions.ResponseError, match="refused"):
            refusing([Q], [])
    assert clients(raw) == before  # the same connection, not a new one
    second = broker.publish(Q, b"second")
    [delivery] = [d for d in broker.fetch([Q], limit=5, timeout=1.0) if d.body == b"second"]
    assert delivery.message_id == second


def test_a_reply_that_came_too_late_is_never_read_as_the_next_one(redis_url: str) -> None:
    transport = open_transport(redis_url, {"socket_timeout": 0.2})
    with redis.Redis.from_url(redis_url) as raw:
        raw.flushdb()
        transport.publish(Q, b"warm-up")
        raw.client_pause(600)  # every other client waits: the next call times out
        with pytest.raises(TransportError, match=r"[Tt]imeout"):
            transport.publish(Q, b"late")
        time.sleep(0.7)
        second = transport.publish(Q, b"second")
        # A timed-out call may have run or not; whatever its reply, it went with its dropped
        # connection, so the second call's id is the second's own.
        got = {d.body: d.message_id for d in transport.fetch([Q], limit=5, timeout=1.0)}
        assert {b"warm-up", b"second"} <= set(got) <= {b"warm-up", b"late", b"second"}
        assert got[b"second"] == second
    transport.close()


def test_a_dropped_connection_is_retried_and_the_message_sent_once(
    broker: RedisTransport, raw: redis.Redis
) -> None:
    publish = broker.publisher(Q)
    publish(b"before")
    broker.publish(Q, b"warm-up")
    killed = raw.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1  # the broker's connection, idle in its stack
    second = publish(b"after")  # the first attempt meets a closed socket; the retry sends it
    third = broker.publish(Q, b"again")
    got = {d.body: d.message_id for d in broker.fetch([Q], limit=10, timeout=1.0)}
    assert sorted(got) == [b"after", b"again", b"before", b"warm-up"]
    assert (got[b"after"], got[b"again"]) == (second, third)


def test_a_publisher_forgotten_scripts_and_errors(broker: RedisTransport, raw: redis.Redis) -> None:
    publish = broker.publisher(Q, 3)
    publish(b"before")
    raw.script_flush()  # as a server restarted without its scripts
    publish(b"after")
    assert sorted((d.body, d.priority) for d in broker.fetch([Q], limit=5, timeout=1.0)) == [
        (b"after", 3),
        (b"before", 3),
    ]
    stopped = open_transport("redis://127.0.0.1:1/0", {"retries": 0, "socket_timeout": 0.2})
    with pytest.raises(TransportError, match=r"Redis broker redis://127\.0\.0\.1:1/0"):
        stopped.publisher(Q)(b"nowhere")
    stopped.close()


def _publish_in_child(publish: Callable[[bytes], str], pipe: Any) -> None:
    pipe.send(publish(b"from the child"))


def test_a_publisher_made_before_a_fork_uses_the_childs_own_connection(
    broker: RedisTransport, raw: redis.Redis
) -> None:
    publish = broker.publisher(Q)
    here = publish(b"from the parent")
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_publish_in_child, args=(publish, send))
    child.start()
    there = receive.recv()
    child.join(10)
    assert child.exitcode == 0
    again = publish(b"from the parent again")  # the parent's connection was left in step
    got = {d.body: d.message_id for d in broker.fetch([Q], limit=5, timeout=1.0)}
    assert got == {b"from the parent": here, b"from the child": there,
                   b"from the parent again": again}  # fmt: skip


def test_plain_calls_after_the_app_closed_leave_no_connection_open(
    no_celeriac_env: None, redis_url: str, raw: redis.Redis
) -> None:
    app = Celeriac("direct", broker=redis_url)

    @app.task(name="direct.noop")
    def noop() -> None: ...

    alone = clients(raw)
    noop.delay()
    app.close()
    assert settle(raw, alone) == alone
    noop.delay()  # through the broker opened again, not the closed one's publisher
    app.close()
    assert settle(raw, alone) == alone
    assert app.broker.size("celeriac") == 2
    app.close()
