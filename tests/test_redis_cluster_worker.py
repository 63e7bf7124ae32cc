"""A real worker process on a real three-master Redis Cluster.

The worker consumes queues ``a``, ``b`` and ``c``, whose hash tags put them on the three
masters: results, a countdown, a chord whose header and body cross nodes, and a message that is
dead-lettered, listed and redriven with ``celeriac dlq``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import StartWorker
from helpers import ok, run_cli, wait_until, write_module
from redis.cluster import RedisCluster
from redis_server import RedisClusterServers

from celeriac import Celeriac, chord, signature

pytestmark = pytest.mark.timeout(120)

MODULE = "cluster_tasks"
TASKS = """
    from pathlib import Path

    from celeriac import Celeriac, Reject

    app = Celeriac("cluster-worker", broker={url!r},
                   broker_transport_options={{"lease_timeout": 2.0}})
    GATE = Path({gate!r})


    @app.task
    def add(x, y):
        return x + y


    @app.task
    def tsum(values):
        return sum(values)


    @app.task
    def gated(x):
        if not GATE.exists():
            raise Reject("gate closed", requeue=False)
        return x
"""


def test_a_worker_on_a_cluster(
    redis_cluster: RedisClusterServers,
    tmp_path: Path,
    no_celeriac_env: None,
    start_worker_process: StartWorker,
) -> None:
    redis_cluster.flush()
    url, gate = redis_cluster.url, tmp_path / "gate"
    client = RedisCluster(host="127.0.0.1", port=redis_cluster.nodes[0].port)
    nodes = {client.get_node_from_key(f"{{{q}}}").port for q in "abc"}  # type: ignore[no-untyped-call]
    client.close()
    assert len(nodes) == 3  # the queues are on three masters
    write_module(tmp_path, MODULE, TASKS.format(url=url, gate=str(gate)))
    producer = Celeriac("producer", broker=url)
    start_worker_process(MODULE, "-P", "threads", "-c", "4", "-Q", "a,b,c")

    def sig(name: str, *args: object, queue: str) -> object:
        return signature(f"{MODULE}.{name}", args, app=producer).set(queue=queue)

    # results, from queues on every node
    sent = [producer.send_task(f"{MODULE}.add", (i, i), queue="abc"[i % 3]) for i in range(30)]
    assert [r.get(timeout=30) for r in sent] == [2 * i for i in range(30)]

    # a countdown
    started = time.time()
    later = producer.send_task(f"{MODULE}.add", (1, 2), queue="b", countdown=1.0)
    assert later.get(timeout=30) == 3
    assert time.time() - started >= 1.0

    # a chord: header tasks on the three nodes, its counter and body elsewhere
    header = [sig("add", i, 1, queue="abc"[i % 3]) for i in range(9)]
    result = chord(header)(sig("tsum", queue="c"))  # type: ignore[arg-type]
    assert result.get(timeout=30) == sum(i + 1 for i in range(9))

    # a dead letter, listed and redriven by the CLI
    refused = producer.send_task(f"{MODULE}.gated", (7,), queue="a")
    wait_until(lambda: producer.broker.dead_letter_count() == 1, 30, "the dead letter")
    [letter] = producer.broker.dead_letters()
    assert (letter.queue, letter.reason) == ("a", "gate closed")
    ok(run_cli(["-A", MODULE, "dlq", "list"], tmp_path), letter.message_id, f"{MODULE}.gated")
    gate.touch()
    ok(run_cli(["-A", MODULE, "dlq", "redrive", letter.message_id], tmp_path), "Redrove")
    assert refused.get(timeout=30) == 7
    assert producer.broker.dead_letter_count() == 0
    assert all(producer.broker.size(q) == 0 for q in "abc")
    producer.close()
