"""The Redis client of one process: made on first use and again after a fork, with its scripts.

It reconnects with backoff (``retries``), turns redis-py's errors into ``TransportError``
naming the server without its password, and checks the server's persistence settings. A
``redis+cluster://`` URL makes it a Redis Cluster client (``cluster.py``); the key names, the
same on both, are at the end.
"""

from __future__ import annotations

import functools
import math
import os
import secrets
import threading
import urllib.parse
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Concatenate, ParamSpec, TypeVar

from celeriac import pid
from celeriac.errors import MissingExtraError, TransportError
from celeriac.transports import redis_limits
from celeriac.transports import redis_scripts as scripts
from celeriac.transports.base import Transport

try:
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.cluster import RedisCluster
    from redis.connection import ConnectionPool, parse_url
    from redis.exceptions import RedisClusterException, RedisError
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise MissingExtraError(
        "the Redis transport needs redis-py: pip install 'celeriac[redis]'"
    ) from exc

# after the check above: these need redis-py
from celeriac.transports.redis import cluster
from celeriac.transports.redis.direct import AnyScript, Connections, DirectScript

DEFAULT_PREFIX = "celeriac:"
DEFAULT_SOCKET_TIMEOUT = 10.0
DEFAULT_HEALTH_CHECK_INTERVAL = 30.0
DEFAULT_RETRIES = 6

#: A client of one server or of a cluster; both take the same commands and scripts.
Client = redis.Redis | RedisCluster

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T", bound="RedisBase")


class Scripts:
    """The Lua scripts, registered with one client (redis-py loads them on first use).

    On a single server they are called straight on a connection (``direct.py``); on a
    cluster, where redis-py finds each key's node, through redis-py."""

    def __init__(self, client: Client) -> None:
        self.direct = None if isinstance(client, RedisCluster) else Connections(client)

        def load(source: str) -> AnyScript:
            script = client.register_script(scripts.LIB + source)
            return script if self.direct is None else DirectScript(script, self.direct)

        self.publish = load(scripts.PUBLISH)
        self.publish_once = load(scripts.PUBLISH_ONCE)
        self.claim = load(scripts.CLAIM)
        self.complete = load(scripts.COMPLETE)
        self.extend = load(scripts.EXTEND)
        self.hold = load(scripts.HOLD)
        self.release = load(scripts.RELEASE)
        self.retry = load(scripts.RETRY)
        self.dead_letter = load(scripts.DEAD_LETTER)
        self.redrive = load(scripts.REDRIVE)
        self.purge = load(scripts.PURGE)
        self.purge_dead = load(scripts.PURGE_DEAD)
        self.incr = load(scripts.INCR)
        self.put = load(scripts.PUT)
        self.size = load(scripts.SIZE)
        # limits (redis_limits.py)
        self.publish_unique = load(redis_limits.PUBLISH_UNIQUE)
        self.defer = load(redis_limits.DEFER)
        self.throttle = load(redis_limits.THROTTLE)
        self.acquire_slot = load(redis_limits.ACQUIRE_SLOT)
        self.renew_slots = load(redis_limits.RENEW_SLOTS)
        self.release_slots = load(redis_limits.RELEASE_SLOTS)
        self.wait_in_line = load(redis_limits.WAIT_IN_LINE)
        self.free_slot = load(redis_limits.FREE_SLOT)
        self.wake_waiting = load(redis_limits.WAKE_WAITING)


def translated(method: Callable[Concatenate[T, P], R]) -> Callable[Concatenate[T, P], R]:
    """Turn redis-py's errors into ``TransportError`` naming the server (never the password)."""

    @functools.wraps(method)
    def wrapper(self: T, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except REDIS_ERRORS as exc:
            raise broker_error(self.location, exc) from exc

    return wrapper


#: What redis-py raises; ``translated`` turns these into ``TransportError``.
REDIS_ERRORS = (RedisError, RedisClusterException)


def broker_error(location: str, exc: Exception) -> TransportError:
    """The ``TransportError`` for a redis-py error at ``location`` (a URL without password)."""
    return TransportError(f"Redis broker {location}: {cluster.explain(exc)}")


class RedisBase(Transport):
    """The options, this process's client and its scripts: what every part stands on."""

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        super().__init__(url, options)
        scheme, sep, rest = url.partition("://")
        if scheme.lower() not in self.schemes or not sep:
            raise TransportError(f"not a Redis URL: {url!r}")
        #: Whether the server is a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``).
        self.is_cluster = scheme.lower().endswith("+cluster")
        self._client_url = scheme.lower().removesuffix("+cluster") + "://" + rest
        try:
            parsed = parse_url(self._client_url)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            raise TransportError(f"not a usable Redis URL: {_masked(url)} ({exc})") from exc
        self.location = _masked(url)
        if self.is_cluster:
            cluster.check_url(self.location, parsed)
        self.prefix = str(self.options.get("prefix", DEFAULT_PREFIX))
        self.socket_timeout = float(self.options.get("socket_timeout", DEFAULT_SOCKET_TIMEOUT))
        self.retries = int(self.options.get("retries", DEFAULT_RETRIES))
        self._pid = pid.current()
        self._lock = threading.Lock()
        self._redis: Client | None = None
        self._scripts: Scripts | None = None
        self._registered: dict[str, float] = {}  # queue -> when noted in P queues (monotonic)
        self._turn = 0  # the slot a fetch from queues in several slots starts with
        self._waiters = threading.local()  # each thread's kept connection for waits (keys.py)
        # All of them, for close(); weak: a thread's ends with the thread (closed by redis-py).
        self._waiter_conns: weakref.WeakSet[Any] = weakref.WeakSet()

    def _client(self) -> Client:
        """This process's client, made on first use and again after a fork."""
        client = self._redis
        if client is None or self._pid != pid.current():
            client = self._connect()
        return client

    def _connect(self) -> Client:
        """Make the client (a plain one opens no connection until the first command; a
        cluster client asks the cluster for its nodes and slots at once)."""
        self._forget_parent()
        with self._lock:
            if self._redis is None:
                options = self._client_options()
                client: Client
                if self.is_cluster:
                    client = cluster.connect(self._client_url, options, self.retries)
                else:
                    client = redis.Redis.from_url(self._client_url, **options)
                self._scripts, self._redis = Scripts(client), client
            return self._redis

    def _client_options(self) -> dict[str, Any]:
        """redis-py keyword arguments from our options."""
        kwargs: dict[str, Any] = {
            # RESP2 whatever redis-py's default: our blocking exchanges read pub/sub replies
            # as RESP2 arrays, and redis-py 5 to 8 then all answer the same way.
            "protocol": 2,
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.socket_timeout,
            "health_check_interval": float(
                self.options.get("health_check_interval", DEFAULT_HEALTH_CHECK_INTERVAL)
            ),
            # Reconnect, with backoff, when Redis restarted or a pooled connection went stale.
            # Only connection errors: a timed-out command may have run, and must not run twice.
            "retry": Retry(
                ExponentialBackoff(cap=1.0, base=0.05),
                self.retries,
                supported_errors=(redis.exceptions.ConnectionError,),
            ),
        }
        if self._client_url.startswith("rediss://"):
            kwargs["ssl_cert_reqs"] = self.options.get("ssl_cert_reqs", "required")
            if self.options.get("ssl_ca_certs"):
                kwargs["ssl_ca_certs"] = self.options["ssl_ca_certs"]
        return kwargs

    def _script(self) -> Scripts:
        """The scripts of this process's client."""
        scripts = self._scripts
        if scripts is None or self._pid != pid.current():
            self._connect()
            scripts = self._scripts
            assert scripts is not None
        return scripts

    def _command(self, *command: Any) -> Any:
        """Run one command: straight on a connection (``direct.py``), or through redis-py
        on a cluster, which finds the node of its key."""
        direct = self._script().direct
        if direct is None:
            return self._client().execute_command(*command)  # type: ignore[no-untyped-call]
        return direct.call(command)

    def _node(self, key: str) -> redis.Redis:
        """The client of the server that holds ``key``: on a cluster, the node of its slot."""
        client = self._client()
        if isinstance(client, RedisCluster):
            return cluster.node_of(client, key)
        return client

    @contextmanager
    def _borrowed(self, key: str) -> Iterator[Any]:
        """A pooled connection to the server of ``key``, for a blocking exchange; dropped if
        the exchange fails.

        Typed ``Any``: redis-py leaves the methods of its ``Connection`` unannotated.
        """
        pool = self._node(key).connection_pool
        conn = _get_connection(pool)
        try:
            yield conn
        except BaseException:
            conn.disconnect()  # it may hold half a reply: never hand it back like that
            raise
        finally:
            pool.release(conn)

    def _forget_parent(self) -> None:
        """After a fork, drop the parent's client and lock without touching them.

        Its sockets stay with the parent, and one of its threads may have held the lock.
        """
        now = os.getpid()
        if self._pid != now:
            self._lock, self._redis, self._scripts, self._pid = threading.Lock(), None, None, now
            self._waiters, self._waiter_conns = threading.local(), weakref.WeakSet()

    def _slot_groups(self, queues: list[str]) -> list[list[int]]:
        """The indexes of ``queues`` by cluster slot, in order; one group on a single server."""
        client = self._client()
        if not isinstance(client, RedisCluster) or len(queues) == 1:
            return [list(range(len(queues)))]
        groups: dict[int, list[int]] = {}
        for index, queue in enumerate(queues):
            slot = client.keyslot(self._base(queue))  # type: ignore[no-untyped-call]
            groups.setdefault(slot, []).append(index)
        return list(groups.values())

    @translated
    def instance_id(self) -> str | None:
        """A random name stored in Redis at first use: a Redis that lost its data loses it.

        On a cluster the name lives on the node of its slot, and speaks for that node."""
        key = self.prefix + "instance"
        client = self._client()
        client.set(key, secrets.token_hex(8), nx=True)
        value = client.get(key)
        return value.decode() if isinstance(value, bytes) else None

    @translated
    def server_warnings(self) -> list[str]:
        """Persistence off or an eviction policy: acknowledged work could be lost."""
        client = self._client()
        if isinstance(client, RedisCluster):
            servers = cluster.primaries(client)
        else:
            servers = [(self.location, client)]
        warnings = []
        for where, server in servers:
            info: dict[str, Any] = server.info()
            if not self.is_cluster:
                cluster.not_a_cluster_node(self.location, info)
            warnings += _persistence_warnings(where, info)
        return warnings

    def close(self) -> None:
        """Close this process's connections; they reopen on next use."""
        self._forget_parent()
        with self._lock:
            if self._redis is not None:
                self._redis.close()
            if self._scripts is not None and self._scripts.direct is not None:
                self._scripts.direct.close()
            self._redis, self._scripts = None, None
            waiters, self._waiter_conns = list(self._waiter_conns), weakref.WeakSet()
            self._waiters = threading.local()
        for conn in waiters:
            conn.disconnect()

    # -- key names ------------------------------------------------------------------------------

    def _base(self, queue: str) -> str:
        """The common start of a queue's keys; the hash tag keeps them in one cluster slot."""
        return f"{self.prefix}{{{queue}}}:"

    def _key(self, key: str) -> str:
        """Where ``put`` stores ``key``; its notification channel has the same name."""
        return f"{self.prefix}key:{key}"

    def _queues_key(self) -> str:
        """The set of queues fetched from: where the dead-letter queue looks for letters."""
        return self.prefix + "queues"


def message_id(queue: str, number: Any) -> str:
    """A message's id: its queue and its number there (a queue counts its messages itself,
    in its own cluster slot), so that ids are unique across queues."""
    return f"{queue}:{number.decode() if isinstance(number, bytes) else number}"


def number(message_id: str) -> str:
    """A message's number within its queue, from its id; ``""`` if it is not one of ours."""
    _, _, tail = message_id.rpartition(":")
    return tail if tail.isdigit() else ""


def _persistence_warnings(where: str, info: dict[str, Any]) -> list[str]:
    """Persistence off or an eviction policy on one server: acknowledged work could be lost."""
    warnings = []
    if not int(info.get("aof_enabled", 0)):
        warnings.append(
            f"Redis at {where} has appendonly off: a restart can lose queued "
            "work; use appendonly yes and appendfsync always"
        )
    policy = str(info.get("maxmemory_policy", "noeviction"))
    if policy != "noeviction":
        warnings.append(
            f"Redis at {where} evicts keys (maxmemory-policy {policy}): queued "
            "work can vanish under memory pressure; use noeviction"
        )
    return warnings


def ms(seconds: float) -> int:
    """Whole milliseconds, rounded up so that nothing expires early, and at least one."""
    return max(1, math.ceil(seconds * 1000))


def _masked(url: str) -> str:
    """``url`` without its password (in the user part or the query), for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is not None:
        host = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    query = [
        (name, "***" if name == "password" else value)
        for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, safe="*")))


def _get_connection(pool: ConnectionPool) -> Any:
    """A connection from ``pool``; redis-py before 5.3 wants a command name."""
    try:
        return pool.get_connection()
    except TypeError:  # pragma: no cover - old redis-py
        return pool.get_connection("BLPOP")
