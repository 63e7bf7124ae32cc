"""What only the Redis engine on Redis Cluster promises, beside the contract suite (which runs
on a cluster too, see conftest.py): every key of a queue in one slot, work spread over nodes
found and waited for across them, and clear errors when a URL does not match the server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis
from redis.cluster import RedisCluster
from redis_server import RedisClusterServers, RedisServer

from celeriac.errors import TransportError
from celeriac.transports import open_transport
from celeriac.transports.redis import RedisTransport

#: Queue names whose hash tags land on the three masters (asserted by ``test_queues_...``).
QUEUES = ("a", "b", "c")


@pytest.fixture
def cluster(redis_cluster: RedisClusterServers) -> RedisClusterServers:
    redis_cluster.flush()
    return redis_cluster


@pytest.fixture
def broker(cluster: RedisClusterServers) -> Iterator[RedisTransport]:
    transport = open_transport(cluster.url)
    assert isinstance(transport, RedisTransport)
    yield transport
    transport.close()


@pytest.fixture
def raw(cluster: RedisClusterServers) -> Iterator[RedisCluster]:
    """A plain redis-py cluster client, to look at what the transport left."""
    client = RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    yield client
    client.close()


def node_port(raw: RedisCluster, key: str) -> int:
    port: int = raw.get_node_from_key(key).port  # type: ignore[no-untyped-call]
    return port


def every_key(cluster: RedisClusterServers) -> list[str]:
    """The names of every key on every node (SCAN on each)."""
    names: list[str] = []
    for node in cluster.nodes:
        with redis.Redis(port=node.port) as client:
            names += [name.decode() for name in client.scan_iter()]
    return sorted(names)


def test_queues_of_these_tests_are_on_three_nodes(raw: RedisCluster) -> None:
    ports = {node_port(raw, f"celeriac:{{{queue}}}:ready") for queue in QUEUES}
    assert len(ports) == 3


def test_every_key_of_a_queue_is_in_the_slot_of_its_tag(
    cluster: RedisClusterServers, broker: RedisTransport, raw: RedisCluster
) -> None:
    for queue in QUEUES:
        broker.publish(queue, b"now")
        broker.publish(queue, b"later", due=time.time() + 60)
        broker.publish_unique(queue, b"unique", "u1")
    deliveries = broker.fetch(list(QUEUES), limit=10)
    for delivery in deliveries:
        if delivery.body == b"now":
            assert broker.dead_letter(delivery, "rejected")
    broker.publish_once("once", [("a", b"x", None, 0), ("b", b"y", None, 0)], ttl=60)
    names = every_key(cluster)
    for queue in QUEUES:
        mine = [name for name in names if f"{{{queue}}}" in name]
        assert {raw.keyslot(name) for name in mine} == {raw.keyslot(f"{{{queue}}}")}, mine
        assert any(name.endswith(":dead") for name in mine)
    assert "celeriac:queues" in names and "celeriac:key:once" in names


def test_a_fetch_over_three_nodes_takes_from_each(broker: RedisTransport) -> None:
    ids = broker.publish_many([(queue, queue.encode(), None, 0) for queue in QUEUES * 2])
    assert len(set(ids)) == 6
    first = broker.fetch(list(QUEUES), limit=4)
    rest = broker.fetch(list(QUEUES), limit=4)
    assert (len(first), len(rest)) == (4, 2)
    assert sorted(d.queue for d in first + rest) == sorted(QUEUES * 2)
    assert all(broker.ack_many(first + rest))
    assert broker.fetch(list(QUEUES)) == []


@pytest.mark.parametrize("queue", QUEUES)
def test_an_idle_fetch_over_three_nodes_wakes_on_a_publish_to_any(
    broker: RedisTransport, cluster: RedisClusterServers, queue: str
) -> None:
    producer = open_transport(cluster.url)
    timer = threading.Timer(0.2, lambda: producer.publish(queue, b"wake"))
    timer.start()
    started = time.monotonic()
    [delivery] = broker.fetch(list(QUEUES), timeout=10.0)
    waited = time.monotonic() - started
    timer.join()
    assert (delivery.queue, delivery.body) == (queue, b"wake")
    assert 0.15 < waited < 1.0
    # The other waits ended with it: their connections are back, and nothing is left blocked.
    assert broker.fetch(list(QUEUES), timeout=0.05) == []
    producer.close()


def test_an_idle_fetch_over_three_nodes_wakes_at_a_due_time(broker: RedisTransport) -> None:
    started = time.monotonic()  # before the publish, which may take a while (a new client)
    broker.publish("b", b"soon", due=time.time() + 0.3)
    [delivery] = broker.fetch(list(QUEUES), timeout=5.0)
    assert delivery.body == b"soon"
    assert 0.25 < time.monotonic() - started < 1.0


def test_dead_letters_of_queues_on_three_nodes(broker: RedisTransport) -> None:
    for queue in QUEUES:
        broker.publish(queue, queue.encode())
        [delivery] = broker.fetch([queue])
        assert broker.dead_letter(delivery, "rejected")
        time.sleep(0.002)  # distinct dead_at times, so that the order is known
    letters = broker.dead_letters()
    assert [letter.queue for letter in letters] == ["c", "b", "a"]
    assert broker.dead_letter_count() == 3
    assert [letter.queue for letter in broker.dead_letters(limit=2)] == ["c", "b"]
    assert broker.redrive(letters[1].message_id)
    [again] = broker.fetch(list(QUEUES))
    assert (again.queue, again.message_id, again.deliveries) == ("b", letters[1].message_id, 1)
    assert broker.purge_dead_letters() == 2
    assert broker.dead_letter_count() == 0


def test_a_result_is_written_with_the_acknowledgement(broker: RedisTransport) -> None:
    broker.publish("a", b"task")
    [delivery] = broker.fetch(["a"], lease=0.2)
    time.sleep(0.3)
    [taken] = broker.fetch(["a"], lease=30)  # the lease ran out: another worker has it
    assert broker.complete([(delivery, ("result-a", b"stale", 60))]) == [False]
    assert broker.get("result-a") is None
    assert broker.complete([(taken, ("result-a", b"fresh", 60))]) == [True]
    assert broker.get("result-a") == b"fresh"
    assert broker.size("a") == 0


def test_concurrency_slots_wake_a_waiting_message_in_another_slot(
    broker: RedisTransport,
) -> None:
    broker.publish("c", b"waits")
    [delivery] = broker.fetch(["c"])
    assert broker.acquire_slot("limit", "holder", 1, 30) is None
    assert broker.defer(delivery, time.time() + 60, waiting_on="limit")
    assert broker.fetch(["c"]) == []
    broker.release_slots([("limit", "holder")])
    [woken] = broker.fetch(["c"])
    assert woken.body == b"waits"


# -- bad input --------------------------------------------------------------------------------


def test_a_cluster_url_at_a_server_that_is_not_a_cluster(redis_url: str) -> None:
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    transport = open_transport(f"redis+cluster://127.0.0.1:{port}")
    with pytest.raises(TransportError) as error:
        transport.publish("a", b"x")
    assert "not a Redis Cluster" in str(error.value)
    assert "use a redis:// URL" in str(error.value)


def test_a_plain_url_at_a_cluster_node(cluster: RedisClusterServers, raw: RedisCluster) -> None:
    node = cluster.nodes[0]
    transport = open_transport(f"redis://127.0.0.1:{node.port}/0")
    with pytest.raises(TransportError, match="is a Redis Cluster node"):
        transport.server_warnings()  # what a worker asks first
    elsewhere = next(q for q in QUEUES if node_port(raw, f"{{{q}}}") != node.port)
    with pytest.raises(TransportError) as error:
        transport.publish(elsewhere, b"x")
    assert "Redis Cluster node" in str(error.value) and "redis+cluster://" in str(error.value)


def test_a_cluster_has_only_database_0(cluster: RedisClusterServers) -> None:
    with pytest.raises(TransportError, match="only database 0"):
        open_transport(f"redis+cluster://127.0.0.1:{cluster.nodes[0].port}/1")


def test_names_that_break_the_hash_tag_are_a_clear_error(broker: RedisTransport) -> None:
    with pytest.raises(TransportError, match="different cluster slots"):
        broker.publish("}odd", b"x")


def test_server_warnings_name_each_node(broker: RedisTransport) -> None:
    warnings = broker.server_warnings()
    assert len(warnings) == 3 and all("appendonly off" in w for w in warnings)


def test_a_server_that_is_not_there() -> None:
    server = RedisServer()  # never started: nothing listens on its port
    transport = open_transport(f"redis+cluster://127.0.0.1:{server.port}", {"retries": 1})
    with pytest.raises(TransportError, match=r"127\.0\.0\.1"):
        transport.size("a")
    server.cleanup()
