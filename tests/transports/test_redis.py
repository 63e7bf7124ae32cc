"""What only the Redis engine promises: its URLs, the server's clock, prompt wakeups, no
leftovers after a drain, reconnection after a restart, and no KEYS command."""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis
from redis_server import RedisServer, free_port

import celeriac.transports.redis as redis_module
from celeriac.errors import MissingExtraError, TransportError
from celeriac.transports import Transport, open_transport
from celeriac.transports.redis import RedisTransport

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cret-pw"
Q = "tasks"
T = TypeVar("T")


@pytest.fixture
def broker(redis_url: str) -> Iterator[RedisTransport]:
    """A transport on the session's server, with an empty database."""
    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()
    transport = open_transport(redis_url)
    assert isinstance(transport, RedisTransport)
    yield transport
    transport.close()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A plain redis-py client of the session's server, to look at what the transport left."""
    with redis.Redis.from_url(redis_url) as client:
        yield client


@pytest.fixture(scope="module")
def locked_server() -> Iterator[RedisServer]:
    """A server with a password, an ACL user and a unix socket."""
    with RedisServer(unixsocket=True, args=("--requirepass", PASSWORD)) as server:
        with redis.Redis(port=server.port, password=PASSWORD) as client:
            client.acl_setuser(
                "worker",
                enabled=True,
                passwords=["+w0rker"],
                keys=["*"],
                channels=["*"],
                commands=["+@all"],
            )
        yield server


def roundtrip(transport: Transport, body: bytes = b"hello") -> None:
    """Publish, fetch and acknowledge one message."""
    transport.publish(Q, body)
    [delivery] = transport.fetch([Q])
    assert delivery.body == body
    assert transport.ack(delivery)


# -- URLs -----------------------------------------------------------------------------------------


def test_password_and_database_number(locked_server: RedisServer) -> None:
    db2 = open_transport(f"redis://:{PASSWORD}@127.0.0.1:{locked_server.port}/2")
    db3 = open_transport(f"redis://:{PASSWORD}@127.0.0.1:{locked_server.port}/3")
    db2.publish(Q, b"in db 2")
    assert (db2.size(Q), db3.size(Q)) == (1, 0)
    assert [d.body for d in db2.fetch([Q])] == [b"in db 2"]
    roundtrip(db3)


def test_acl_user(locked_server: RedisServer) -> None:
    roundtrip(open_transport(f"redis://worker:w0rker@127.0.0.1:{locked_server.port}/0"))


def test_acl_user_without_client_commands(locked_server: RedisServer) -> None:
    with redis.Redis(port=locked_server.port, password=PASSWORD) as client:
        client.acl_setuser(
            "limited",
            enabled=True,
            passwords=["+l1mited"],
            keys=["*"],
            channels=["*"],
            commands=["+@all", "-client"],
        )
    transport = open_transport(f"redis://limited:l1mited@127.0.0.1:{locked_server.port}/5")
    roundtrip(transport)
    # Waiting cannot use CLIENT UNBLOCK: Redis's own timeout ends it, up to 100 ms late.
    due = time.time() + 0.2
    transport.publish(Q, b"later", due=due)
    [delivery] = transport.fetch([Q], timeout=5.0)
    assert delivery.body == b"later"
    assert 0 <= time.time() - due < 0.25


def test_wrong_password_is_a_transport_error_that_hides_the_password(
    locked_server: RedisServer,
) -> None:
    url = f"redis://:wrong-pw@127.0.0.1:{locked_server.port}/0"
    transport = open_transport(url, {"retries": 0})  # redis-py counts it as a connection error
    with pytest.raises(TransportError) as error:
        transport.publish(Q, b"x")
    assert "wrong-pw" not in str(error.value)
    assert "***" in str(error.value)


def test_unix_socket(locked_server: RedisServer) -> None:
    assert locked_server.socket_path is not None
    url = f"unix://{locked_server.socket_path}?db=4&password={PASSWORD}"
    transport = open_transport(url)
    roundtrip(transport)
    assert PASSWORD not in transport.location


def test_not_a_redis_url() -> None:
    with pytest.raises(TransportError, match="not a usable Redis URL"):
        open_transport("redis://127.0.0.1:notaport/0")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make certificates")
def test_rediss_checks_certificates_unless_told_otherwise(tmp_path: Path) -> None:
    ca, cert, key = make_certificates(tmp_path)
    tls_port = free_port()
    args = ("--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key))
    args += ("--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no")
    with RedisServer(args=args):
        url = f"rediss://localhost:{tls_port}/0"
        with pytest.raises(TransportError, match=r"(?i)certificate"):
            open_transport(url, {"retries": 0}).publish(Q, b"x")
        roundtrip(open_transport(url, {"ssl_ca_certs": str(ca)}))
        roundtrip(open_transport(url, {"ssl_cert_reqs": "none"}))


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A certificate authority and a server certificate for localhost, signed by it."""
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key, csr = directory / "server.pem", directory / "server.key", directory / "server.csr"
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName = DNS:localhost, IP:127.0.0.1\n")
    commands = [
        f"req -x509 -newkey rsa:2048 -nodes -keyout {ca_key} -out {ca} -days 2 -subj /CN=test-ca",
        f"req -newkey rsa:2048 -nodes -keyout {key} -out {csr} -subj /CN=localhost",
        f"x509 -req -in {csr} -CA {ca} -CAkey {ca_key} -CAcreateserial -out {cert} -days 2"
        f" -extfile {ext}",
    ]
    for command in commands:
        subprocess.run(["openssl", *command.split()], check=True, capture_output=True)
    return ca, cert, key


MISSING_REDIS = textwrap.dedent(
    """
    import sys

    class NoRedis:
        def find_spec(self, name, path=None, target=None):
            if name == "redis" or name.startswith("redis."):
                raise ImportError("No module named 'redis' (blocked by the test)")
            return None

    sys.meta_path.insert(0, NoRedis())
    from celeriac.errors import MissingExtraError
    from celeriac.transports import open_transport
    try:
        open_transport("redis://127.0.0.1:1/0")
    except MissingExtraError as error:
        print(error)
    """
)


def test_missing_client_library_names_the_extra() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", MISSING_REDIS], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'celeriac[redis]'" in result.stdout
    assert issubclass(MissingExtraError, ImportError)


# -- time -----------------------------------------------------------------------------------------


def test_leases_are_judged_by_the_server_clock(
    broker: RedisTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_time = time.time
    broker.publish(Q, b"x")
    # A client clock an hour ahead would expire the lease at once if the client judged it...
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)
    first = broker.fetch([Q], lease=0.5)[0]
    assert broker.fetch([Q]) == []
    # ... and one an hour behind would keep it for an hour.
    monkeypatch.setattr(time, "time", lambda: real_time() - 3600)
    start = time.monotonic()
    [again] = broker.fetch([Q], timeout=5.0)
    assert 0.45 <= time.monotonic() - start < 1.0
    assert (again.message_id, again.deliveries) == (first.message_id, 2)


def wake_delay(wait: Callable[[], T], act: Callable[[], object]) -> tuple[float, T]:
    """Seconds from ``act``, run on another thread once ``wait`` blocks, to ``wait`` returning;
    and what ``wait`` returned."""
    acted_at: list[float] = []

    def act_later() -> None:
        time.sleep(0.02)  # ``wait`` is blocked by then
        acted_at.append(time.perf_counter())
        act()

    thread = threading.Thread(target=act_later)
    thread.start()
    result = wait()
    returned_at = time.perf_counter()
    thread.join()
    return returned_at - acted_at[0], result


def test_fetch_wakes_within_milliseconds_of_a_publish(redis_url: str) -> None:
    consumer, producer = open_transport(redis_url), open_transport(redis_url)
    delays = []
    for i in range(10):
        fetch = functools.partial(consumer.fetch, ["wake"], timeout=5.0)
        delay, fetched = wake_delay(fetch, functools.partial(producer.publish, "wake", b"%d" % i))
        assert [d.body for d in fetched] == [b"%d" % i]
        assert consumer.ack(fetched[0])
        delays.append(delay)
    print(f"fetch wake-up after publish: median {statistics.median(delays) * 1000:.2f} ms")
    assert statistics.median(delays) < 0.010
    assert max(delays) < 0.050


def _count_claims(broker: RedisTransport, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record each claim the fetch makes in a call of its own."""
    calls: list[object] = []
    claim_slot = broker._claim_slot

    def counted(*args: object) -> object:
        calls.append(args)
        return claim_slot(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(broker, "_claim_slot", counted)
    return calls


def test_a_woken_fetch_has_its_claim_run_by_the_server_with_the_wake(
    broker: RedisTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The claim is sent with the wait: the server runs it when the token arrives, and the
    # fetch makes no call of its own after waking.
    broker.fetch([Q])  # loads the scripts
    calls = _count_claims(broker, monkeypatch)
    timer = threading.Timer(0.2, lambda: open_transport(broker.url).publish(Q, b"woken"))
    timer.start()
    [delivery] = broker.fetch([Q], timeout=5.0)
    timer.join()
    assert delivery.body == b"woken" and broker.ack(delivery)
    assert len(calls) == 1  # the claim before the wait only


def test_a_woken_fetch_claims_again_after_the_scripts_were_flushed(
    broker: RedisTransport, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker.fetch([Q])
    calls = _count_claims(broker, monkeypatch)

    def flush_and_publish() -> None:
        raw.script_flush()  # as a restarted server: the claim sent with the wait gets NOSCRIPT
        open_transport(broker.url).publish(Q, b"woken")

    timer = threading.Timer(0.2, flush_and_publish)
    timer.start()
    [delivery] = broker.fetch([Q], timeout=5.0)
    timer.join()
    assert delivery.body == b"woken" and broker.ack(delivery)
    assert len(calls) == 2  # before the wait, and after it, the scripts loaded again
    broker.publish(Q, b"after")
    assert [d.body for d in broker.fetch([Q], timeout=1.0)] == [b"after"]


def test_wait_wakes_within_milliseconds_of_a_put(redis_url: str) -> None:
    waiter, writer = open_transport(redis_url), open_transport(redis_url)
    delays = []
    for i in range(10):
        key = f"result-{i}"
        wait = functools.partial(waiter.wait, key, timeout=5.0)
        delay, value = wake_delay(wait, functools.partial(writer.put, key, b"done"))
        assert value == b"done"
        delays.append(delay)
    print(f"wait wake-up after put: median {statistics.median(delays) * 1000:.2f} ms")
    assert statistics.median(delays) < 0.010


@pytest.mark.parametrize(("size", "carried"), [(10, True), (4096, True), (4097, False)])
def test_a_write_of_a_small_value_sends_it_to_the_waiter(
    broker: RedisTransport, raw: redis.Redis, size: int, carried: bool
) -> None:
    """A waiter takes a small value from the notice, without reading the key back: it gets
    the value even when the key is deleted in the same transaction as the write. A larger
    value is read back, and here is found gone, so the wait runs to its timeout."""
    value, channel = b"v" * size, broker.prefix + "key:done"
    got: list[bytes | None] = []
    waiter = threading.Thread(target=lambda: got.append(broker.wait("done", timeout=1.0)))
    waiter.start()
    deadline = time.monotonic() + 5
    while raw.pubsub_numsub(channel)[0][1] == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    with raw.pipeline(transaction=True) as pipe:  # the write, as put makes it, then a delete
        pipe.set(channel, value)
        pipe.publish(channel, b"=" + value if size <= 4096 else b"")
        pipe.delete(channel)
        pipe.execute()
    waiter.join(5)
    assert got == [value if carried else None]
    with raw.pubsub() as sub:  # and put sends the notice the waiter reads
        sub.subscribe(broker.prefix + "key:again")
        assert sub.get_message(timeout=1)["type"] == "subscribe"
        broker.put("again", value)
        notice = sub.get_message(timeout=1)["data"]
    assert notice == (b"=" + value if carried else b"")


def test_a_thread_keeps_one_connection_for_its_waits_and_old_notices_never_leak(
    broker: RedisTransport, raw: redis.Redis
) -> None:
    writer = open_transport(broker.url)
    clients: list[int] = []
    for i in range(20):
        key = f"kept-{i}"
        _, value = wake_delay(
            functools.partial(broker.wait, key, timeout=5.0),
            functools.partial(writer.put, key, b"v%d" % i),
        )
        assert value == b"v%d" % i
        # Notices on the channel just left: the next wait must read past them.
        writer.put(key, b"late")
        writer.put(key, b"later")
        clients.append(len(raw.client_list()))
    assert broker.wait("never-written", timeout=0.2) is None
    assert set(clients) == {clients[0]}  # no connection more per wait
    broker.close()  # the pool's connection and the kept one
    deadline = time.monotonic() + 5
    while len(raw.client_list()) > clients[0] - 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # the server notices a closed connection a moment later
    assert len(raw.client_list()) == clients[0] - 2


def test_the_wait_connection_of_a_thread_that_ended_is_closed(
    broker: RedisTransport, raw: redis.Redis
) -> None:
    broker.get("warm-up")  # the pool's connection
    before = len(raw.client_list())
    thread = threading.Thread(target=lambda: broker.wait("nothing", timeout=0.1))
    thread.start()
    thread.join()
    deadline = time.monotonic() + 5
    while len(raw.client_list()) > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(raw.client_list()) == before


def test_a_wait_after_the_server_restarted_opens_a_new_connection() -> None:
    with RedisServer() as server:
        waiter, writer = open_transport(server.url), open_transport(server.url)
        assert wake_delay(lambda: waiter.wait("a", 5.0), lambda: writer.put("a", b"1"))[1] == b"1"
        server.restart()
        with contextlib.suppress(TransportError):
            writer.get("warm-up")  # the writer's pooled connection found dead, and replaced
        assert wake_delay(lambda: waiter.wait("b", 5.0), lambda: writer.put("b", b"2"))[1] == b"2"


@pytest.mark.parametrize("delay", [0.05, 0.17, 0.33, 0.61])
def test_delayed_message_is_deliverable_within_50ms_of_its_due_time(
    broker: RedisTransport, delay: float
) -> None:
    # Redis itself only times out blocked commands every 100 ms: the transport must not rely
    # on that, whatever the phase of the server's clock.
    due = time.time() + delay
    broker.publish(Q, b"later", due=due)
    [delivery] = broker.fetch([Q], timeout=5.0)
    late = time.time() - due
    assert delivery.body == b"later"
    assert 0 <= late < 0.050, late


# -- memory ---------------------------------------------------------------------------------------


def used_memory(client: redis.Redis) -> int:
    """Bytes Redis has allocated, less its script cache."""
    info = client.info("memory")
    return int(info["used_memory"]) - int(info.get("used_memory_scripts", 0))


def test_memory_returns_to_its_baseline_after_a_drain(
    broker: RedisTransport, raw: redis.Redis
) -> None:
    def cycle(count: int) -> None:
        broker.publish_many([(Q, b"x" * 200, None, i % 10) for i in range(count)])
        broker.publish_many([("other", b"y" * 200, time.time() + 0.1, 0) for _ in range(count)])
        while deliveries := broker.fetch([Q, "other"], limit=100, timeout=0.5):
            assert all(broker.ack_many(deliveries))

    # The first cycles load the scripts, make the id counters and grow the buffers Redis keeps
    # per connection to the size of the largest command (INFO reports those a cron tick late).
    cycle(5000)
    cycle(5000)
    keys, memory = raw.dbsize(), used_memory(raw)
    cycle(5000)
    assert raw.dbsize() == keys == 3  # the id counter of each queue, the set of queues
    grown = used_memory(raw) - memory
    print(f"used_memory after another 10,000 messages drained: {grown:+d} bytes")
    # Client buffers still move by 10-30 KB with timing; anything left per message (a hash, a
    # zset entry: 50 bytes and up) would add 500 KB and more.
    assert grown < 64 * 1024


def test_keys_carry_the_prefix_and_the_queue_hash_tag(redis_url: str, raw: redis.Redis) -> None:
    raw.flushdb()
    transport = open_transport(redis_url, {"prefix": "app1:"})
    other = open_transport(redis_url, {"prefix": "app2:"})
    transport.publish("emails", b"now")
    transport.publish("emails", b"later", due=time.time() + 60)
    transport.fetch(["emails"])
    transport.put("result", b"r")
    assert other.size("emails") == 0 and other.get("result") is None
    names = sorted(k.decode() for k in raw.scan_iter())
    assert all(name.startswith("app1:") for name in names), names
    queue_keys = [name for name in names if "emails" in name]
    assert queue_keys and all("{emails}" in name for name in queue_keys)


def test_the_transport_never_uses_the_keys_command() -> None:
    package = Path(redis_module.__file__).parent  # the engine's modules, and its Lua scripts
    files = [*package.glob("*.py"), *package.parent.glob("redis_*.py")]
    assert len(files) > 5
    source = "\n".join(path.read_text() for path in files)
    assert not re.search(r"""call\(\s*['"]keys['"]""", source, re.IGNORECASE)
    assert not re.search(r"""send_command\(\s*['"]keys['"]""", source, re.IGNORECASE)
    assert not re.search(r"\.keys\(", source)


# -- processes and restarts -----------------------------------------------------------------------


def test_close_then_use_again(broker: RedisTransport) -> None:
    roundtrip(broker)
    broker.close()
    roundtrip(broker)
    broker.close()
    broker.close()


def _publish_from_child(transport: Transport) -> None:
    transport.publish(Q, b"from the child")


def test_a_forked_child_opens_its_own_connection(broker: RedisTransport) -> None:
    roundtrip(broker)  # the parent's connection is open before the fork
    child = multiprocessing.get_context("fork").Process(target=_publish_from_child, args=(broker,))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    [delivery] = broker.fetch([Q])
    assert delivery.body == b"from the child"
    roundtrip(broker)  # and the parent's connection still works


def test_reconnects_after_the_server_restarts() -> None:
    with RedisServer(appendonly=True) as server:
        transport = open_transport(server.url)
        transport.publish(Q, b"survives")
        transport.put("k", b"v")
        server.restart()
        # The pooled connection is dead; the next operation reconnects by itself.
        assert transport.size(Q) == 1
        [delivery] = transport.fetch([Q], timeout=1.0)
        assert delivery.body == b"survives"
        assert transport.ack(delivery)
        assert transport.get("k") == b"v"


def test_a_server_that_stays_away_is_a_transport_error_after_bounded_retries() -> None:
    with RedisServer() as server:
        transport = open_transport(server.url, {"retries": 3})
        roundtrip(transport)
        server.stop()
        start = time.monotonic()
        with pytest.raises(TransportError, match=str(server.port)):
            transport.publish(Q, b"nowhere")
        assert time.monotonic() - start < 5.0
        server.start()
        roundtrip(transport)  # and it comes back by itself


def test_a_waiting_fetch_survives_a_restart() -> None:
    with RedisServer() as server:
        consumer, producer = open_transport(server.url), open_transport(server.url)
        roundtrip(consumer)
        got: list[bytes] = []

        def consume() -> None:
            deadline = time.monotonic() + 20
            while not got and time.monotonic() < deadline:
                with contextlib.suppress(TransportError):  # while the server is away
                    got.extend(d.body for d in consumer.fetch([Q], timeout=1.0))

        thread = threading.Thread(target=consume)
        thread.start()
        time.sleep(0.1)  # the consumer blocks in BLPOP
        server.restart()
        producer.publish(Q, b"after")
        thread.join()
        assert got == [b"after"]


def test_a_queue_counter_behind_its_messages_never_overwrites_one(
    broker: RedisTransport, raw: redis.Redis
) -> None:
    first = broker.publish("lagging", b"first")
    letter = broker.publish("lagging", b"letter")
    fetched = broker.fetch(["lagging"], limit=2, timeout=1.0)
    (to_bury,) = [d for d in fetched if d.body == b"letter"]
    broker.dead_letter(to_bury, "test")
    broker.release(*[d for d in fetched if d.body == b"first"])
    # As after an upgrade from the global counter, or a counter key lost: it starts again.
    counters = [key for key in raw.scan_iter(match="*{lagging}:ids")]
    assert len(counters) == 1
    raw.delete(*counters)
    third = broker.publish("lagging", b"third")
    assert third not in (first, letter)
    bodies = sorted(d.body for d in broker.fetch(["lagging"], limit=10, timeout=1.0))
    assert bodies == [b"first", b"third"]  # the first message is intact, the third is new
    assert [d.body for d in broker.dead_letters()] == [b"letter"]
