"""What Redis Cluster changes: the client, its nodes, and errors that say what went wrong.

A ``redis+cluster://host:port`` URL (``rediss+cluster://`` with TLS) names one node of a
cluster; redis-py's ``RedisCluster`` asks it for the others and for which node serves which of
the 16384 slots, and sends each command and script to the node of its keys' slot. The key
layout (``redis/__init__.py``) makes every script and transaction touch one slot; where an
operation must touch several (a fetch from queues in different slots, a result beside an
acknowledgement), the parts do it in steps, one slot at a time, and only on a cluster.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.exceptions import AskError, RedisClusterException
from redis.retry import Retry

from celeriac.errors import TransportError

#: Options of a single-server client that a cluster client does not take.
_NOT_FOR_CLUSTER = ("health_check_interval",)


def check_url(location: str, parsed: dict[str, Any]) -> None:
    """Refuse what a cluster URL cannot mean: a database other than 0, a Unix socket."""
    if int(parsed.get("db") or 0) != 0:
        raise TransportError(f"{location}: a Redis Cluster has only database 0")
    if "path" in parsed:
        raise TransportError(f"{location}: a Redis Cluster is reached over TCP, not a socket")


def connect(url: str, options: dict[str, Any], retries: int) -> RedisCluster:
    """A cluster client from a node's ``redis://`` URL and single-server client options.

    Its own retry (with the same backoff) covers a node that went away: it asks the cluster
    for its slots again and resends the command to the node that now serves them.
    """
    kwargs = {name: value for name, value in options.items() if name not in _NOT_FOR_CLUSTER}
    kwargs["retry"] = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries)
    return RedisCluster.from_url(url, **kwargs)


def node_of(client: RedisCluster, key: str) -> redis.Redis:
    """The client of the primary node that serves ``key``'s slot (for blocking exchanges)."""
    node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
    server = node.redis_connection or client.get_redis_connection(node)
    assert isinstance(server, redis.Redis)
    return server


def primaries(client: RedisCluster) -> list[tuple[str, redis.Redis]]:
    """``(host:port, client)`` of every primary node."""
    found = []
    for node in client.get_primaries():  # type: ignore[no-untyped-call]
        server = node.redis_connection or client.get_redis_connection(node)
        found.append((f"{node.host}:{node.port}", server))
    return found


def explain(exc: Exception) -> str:
    """redis-py's error, with what it means when a URL does not match the server's kind."""
    text = str(exc)
    if isinstance(exc, RedisClusterException) and "not enabled" in text:
        return (
            f"{text}: the server is not a Redis Cluster; use a redis:// URL, not redis+cluster://"
        )
    if isinstance(exc, AskError):  # MovedError too
        return (
            f"the server is a Redis Cluster node (it answered MOVED/ASK {text}); "
            "use a redis+cluster:// URL"
        )
    if "CROSSSLOT" in text or "same key slot" in text or "non local key" in text:
        return (
            f"{text} (keys of one step are in different cluster slots: a queue, key or "
            "limit name that starts with '}', or a prefix with braces, breaks the hash tags "
            "that keep them together)"
        )
    return text


def not_a_cluster_node(location: str, info: dict[str, Any]) -> None:
    """Refuse a single-server URL that points at a cluster node (``INFO``'s cluster part)."""
    if int(info.get("cluster_enabled", 0)):
        raise TransportError(
            f"Redis broker {location}: the server is a Redis Cluster node; "
            "use a redis+cluster:// URL"
        )
