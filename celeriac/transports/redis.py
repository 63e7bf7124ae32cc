"""The production broker: queues, keys and topics in Redis (6.0 or newer).

URLs: ``redis://[user:password@]host:port/db``, ``rediss://...`` (TLS, certificates checked
unless ``ssl_cert_reqs`` says otherwise) and ``unix:///path/to/redis.sock?db=N``. The client is
redis-py (with hiredis when installed), the ``celeriac[redis]`` extra.

Key layout (``P`` is the ``prefix`` option, ``celeriac:`` by default). The keys of one queue
carry the hash tag ``{queue}``, so that under Redis Cluster they share one slot::

    P{q}:ready     zset   id -> (9 - priority) * 2**46 + id: most urgent first, then publish order
    P{q}:delayed   zset   id -> due time, ms since the epoch
    P{q}:leased    zset   id -> lease expiry, ms since the epoch (the Redis server's clock)
    P{q}:m:<id>    hash   body, priority, deliveries, lease (the holder's token, while leased),
                          history (JSON list of failed deliveries, once there is one),
                          unique (the P unique:<k> key it holds, if published unique)
    P{q}:wake      list   at most one token, pushed when work may be ready; idle fetchers BLPOP it
    P ids          string the message id counter (ids are global, so publish order is too)
    P dead         zset   id -> dead_at, seconds: the dead-letter queue, newest last
    P dead:<id>    hash   a dead letter: the message hash plus queue, reason and dead_at
    P key:<k>      string a key of ``put``/``incr``; a write also publishes on channel P key:<k>
    (channel)             P topic:<t>, for ``broadcast``/``listen`` (plain pub/sub)
    P limit:*, P slots:*, P unique:*   rate turns, concurrency slots, unique keys: see
                          ``redis_limits.py``, which holds their scripts too

Every state change of a message is one Lua script, conditional on the lease token where the
contract says so. ``fetch`` runs one script that moves due delayed messages to ready, takes back
expired leases (or dead-letters them at ``max_deliveries``), and leases the most urgent ready
messages, all judged by ``TIME`` on the server. With nothing to hand out it blocks in BLPOP on
the queues' wake lists, bounded by the next due time or lease expiry the script reported; the
wait is timed on the client and ended with ``CLIENT UNBLOCK``, because Redis only checks
blocking timeouts ten times a second. A fetcher that leaves work behind pushes a token again,
so idle fetchers wake one after another instead of all at once.

Options (``broker_transport_options``): ``max_deliveries`` (see the contract), ``prefix``,
``socket_timeout`` (seconds, default 10), ``health_check_interval`` (seconds between pings of
an idle connection, default 30), ``retries`` (reconnection attempts, with backoff, before an
operation fails with ``TransportError``; default 6, about 3.5 s), ``ssl_cert_reqs``
(``required``, ``optional`` or ``none``) and ``ssl_ca_certs`` for ``rediss://``.
``lease_timeout`` is read by the worker, not here.

Limits: Redis Cluster is not supported yet: the id counter, the dead-letter keys, result keys
and fetching from several queues at once cross slots. A publish retried after the connection
dropped mid-reply may enqueue twice (delivery is at-least-once anyway).
"""

from __future__ import annotations

import functools
import json
import math
import os
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

from celeriac.errors import MissingExtraError, TransportError
from celeriac.transports import redis_limits
from celeriac.transports import redis_scripts as scripts
from celeriac.transports.base import (
    DEFAULT_LEASE,
    TURN_GRACE,
    DeadLetter,
    Delivery,
    Detail,
    KeyWrite,
    Subscription,
    Transport,
    check_bytes,
    check_detail,
    check_due,
    check_fetch,
    check_key,
    check_lease,
    check_message,
    check_name,
    check_slot,
    check_throttle,
    check_topic,
    check_topics,
)

try:
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.client import PubSub
    from redis.commands.core import Script
    from redis.connection import ConnectionPool, parse_url
    from redis.exceptions import RedisError, ResponseError
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise MissingExtraError(
        "the Redis transport needs redis-py: pip install 'celeriac[redis]'"
    ) from exc

__all__ = ["RedisTransport"]

DEFAULT_PREFIX = "celeriac:"
DEFAULT_SOCKET_TIMEOUT = 10.0
DEFAULT_HEALTH_CHECK_INTERVAL = 30.0
DEFAULT_RETRIES = 6
#: Messages per publish script call; a bulk publish sends its chunks in one transaction.
PUBLISH_CHUNK = 1000
#: Delayed messages promoted, and expired leases taken back, per queue per fetch.
TIMER_BATCH = 1000
#: Messages deleted per purge script call, so that purging a huge queue never stalls Redis.
PURGE_BATCH = 5000
#: Waiting messages looked at per released slot, to find one that still waits.
WAKE_SCAN = 100

P = ParamSpec("P")
R = TypeVar("R")

class _Scripts:
    """The Lua scripts, registered with one client (redis-py loads them on first use)."""

    def __init__(self, client: redis.Redis) -> None:
        def load(source: str) -> Script:
            return client.register_script(scripts.LIB + source)

        self.publish = load(scripts.PUBLISH)
        self.claim = load(scripts.CLAIM)
        self.complete = load(scripts.COMPLETE)
        self.extend = load(scripts.EXTEND)
        self.release = load(scripts.RELEASE)
        self.retry = load(scripts.RETRY)
        self.dead_letter = load(scripts.DEAD_LETTER)
        self.redrive = load(scripts.REDRIVE)
        self.purge = load(scripts.PURGE)
        self.purge_dead = load(scripts.PURGE_DEAD)
        self.incr = load(scripts.INCR)
        # limits (redis_limits.py)
        self.publish_unique = load(redis_limits.PUBLISH_UNIQUE)
        self.defer = load(redis_limits.DEFER)
        self.throttle = load(redis_limits.THROTTLE)
        self.acquire_slot = load(redis_limits.ACQUIRE_SLOT)
        self.renew_slots = load(redis_limits.RENEW_SLOTS)
        self.release_slots = load(redis_limits.RELEASE_SLOTS)


# -- the transport --------------------------------------------------------------------------------


def _translated(
    method: Callable[Concatenate[RedisTransport, P], R],
) -> Callable[Concatenate[RedisTransport, P], R]:
    """Turn redis-py's errors into ``TransportError`` naming the server (never the password)."""

    @functools.wraps(method)
    def wrapper(self: RedisTransport, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except RedisError as exc:
            raise TransportError(f"Redis broker {self.location}: {exc}") from exc

    return wrapper


class RedisTransport(Transport):
    """Queues, keys and topics in one Redis server, shared by every host that reaches it."""

    schemes = ("redis", "rediss", "unix")

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        super().__init__(url, options)
        scheme, sep, rest = url.partition("://")
        if scheme.lower() not in self.schemes or not sep:
            raise TransportError(f"not a Redis URL: {url!r}")
        self._client_url = scheme.lower() + "://" + rest
        try:
            parse_url(self._client_url)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            raise TransportError(f"not a usable Redis URL: {_masked(url)} ({exc})") from exc
        self.location = _masked(url)
        self.prefix = str(self.options.get("prefix", DEFAULT_PREFIX))
        self.socket_timeout = float(self.options.get("socket_timeout", DEFAULT_SOCKET_TIMEOUT))
        self.retries = int(self.options.get("retries", DEFAULT_RETRIES))
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._redis: redis.Redis | None = None
        self._scripts: _Scripts | None = None

    # -- connection -----------------------------------------------------------------------------

    def _client(self) -> redis.Redis:
        """This process's client, made on first use and again after a fork."""
        client = self._redis
        if client is None or self._pid != os.getpid():
            client = self._connect()
        return client

    def _connect(self) -> redis.Redis:
        """Make the client (no connection opens until the first command)."""
        self._forget_parent()
        with self._lock:
            if self._redis is None:
                client = redis.Redis.from_url(self._client_url, **self._client_options())
                self._scripts, self._redis = _Scripts(client), client
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

    def _script(self) -> _Scripts:
        """The scripts of this process's client."""
        scripts = self._scripts
        if scripts is None or self._pid != os.getpid():
            self._connect()
            scripts = self._scripts
            assert scripts is not None
        return scripts

    @contextmanager
    def _borrowed(self) -> Iterator[Any]:
        """A pooled connection for a blocking exchange; dropped if the exchange fails.

        Typed ``Any``: redis-py leaves the methods of its ``Connection`` unannotated.
        """
        pool = self._client().connection_pool
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
        pid = os.getpid()
        if self._pid != pid:
            self._lock, self._redis, self._scripts, self._pid = threading.Lock(), None, None, pid

    @_translated
    def instance_id(self) -> str | None:
        """A random name stored in Redis at first use: a Redis that lost its data loses it."""
        key = self.prefix + "instance"
        client = self._client()
        client.set(key, secrets.token_hex(8), nx=True)
        value = client.get(key)
        return value.decode() if isinstance(value, bytes) else None

    @_translated
    def server_warnings(self) -> list[str]:
        """Persistence off or an eviction policy: acknowledged work could be lost."""
        client = self._client()
        persistence: dict[str, Any] = client.info("persistence")
        memory: dict[str, Any] = client.info("memory")
        warnings = []
        if not int(persistence.get("aof_enabled", 0)):
            warnings.append(
                f"Redis at {self.location} has appendonly off: a restart can lose queued "
                "work; use appendonly yes and appendfsync always"
            )
        policy = str(memory.get("maxmemory_policy", "noeviction"))
        if policy != "noeviction":
            warnings.append(
                f"Redis at {self.location} evicts keys (maxmemory-policy {policy}): queued "
                "work can vanish under memory pressure; use noeviction"
            )
        return warnings

    def close(self) -> None:
        """Close this process's connections; they reopen on next use."""
        self._forget_parent()
        with self._lock:
            if self._redis is not None:
                self._redis.close()
            self._redis, self._scripts = None, None

    # -- key names ------------------------------------------------------------------------------

    def _base(self, queue: str) -> str:
        """The common start of a queue's keys; the hash tag keeps them in one cluster slot."""
        return f"{self.prefix}{{{queue}}}:"

    def _key(self, key: str) -> str:
        """Where ``put`` stores ``key``; its notification channel has the same name."""
        return f"{self.prefix}key:{key}"

    # -- queues ---------------------------------------------------------------------------------

    @_translated
    def publish(
        self, queue: str, body: bytes, *, due: float | None = None, priority: int = 0
    ) -> str:
        """Put ``body`` on ``queue``; return the message id."""
        check_message(queue, body, due, priority)
        keys, args = self._publish_args([(queue, body, due, priority)])
        [message_id] = self._script().publish(keys, args)
        return str(message_id)

    @_translated
    def publish_many(self, items: Iterable[tuple[str, bytes, float | None, int]]) -> list[str]:
        """Publish ``(queue, body, due, priority)`` items, all or none.

        One script call per ``PUBLISH_CHUNK`` items; several calls go as one transaction.
        """
        batch = list(items)
        for queue, body, due, priority in batch:
            check_message(queue, body, due, priority)
        if not batch:
            return []
        chunks = [batch[i : i + PUBLISH_CHUNK] for i in range(len(batch))[::PUBLISH_CHUNK]]
        scripts = self._script()
        if len(chunks) == 1:
            return [str(i) for i in scripts.publish(*self._publish_args(chunks[0]))]
        with self._client().pipeline(transaction=True) as pipe:
            for chunk in chunks:
                keys, args = self._publish_args(chunk)
                scripts.publish(keys, args, client=pipe)
            return [str(i) for ids in pipe.execute() for i in ids]

    def _publish_args(
        self, chunk: list[tuple[str, bytes, float | None, int]]
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of the publish script for ``chunk``."""
        keys: list[str] = [self.prefix + "ids"]
        args: list[Any] = []
        for queue, body, due, priority in chunk:
            base = self._base(queue)
            keys += [base + "ready", base + "delayed", base + "wake"]
            args += [base, body, priority, "" if due is None else repr(due * 1000)]
        return keys, args

    @_translated
    def fetch(
        self,
        queues: Sequence[str],
        limit: int = 1,
        timeout: float = 0.0,
        lease: float = DEFAULT_LEASE,
    ) -> list[Delivery]:
        """Lease up to ``limit`` deliverable messages; wait up to ``timeout`` for the first."""
        names = check_fetch(queues, limit, timeout, lease)
        deadline = time.monotonic() + timeout
        while True:
            deliveries, wait = self._claim(names, limit, lease)
            left = deadline - time.monotonic()
            if deliveries or left <= 0:
                return deliveries
            if wait is not None:
                left = min(left, wait)
            self._block(names, min(left, self.socket_timeout))

    def _claim(
        self, queues: list[str], limit: int, lease: float
    ) -> tuple[list[Delivery], float | None]:
        """One claim: the deliveries, and else the seconds until a timer may change that."""
        keys: list[str] = []
        args: list[Any] = [limit, _ms(lease), self.max_deliveries, secrets.token_hex(8) + "-"]
        args += [self.prefix + "dead:", TIMER_BATCH]
        for queue in queues:
            base = self._base(queue)
            keys += [base + "ready", base + "delayed", base + "leased", base + "wake"]
            args += [queue, base]
        reply = self._script().claim([*keys, self.prefix + "dead"], args)
        wait_ms = int(reply[0])
        deliveries = [
            Delivery(
                queue=queues[int(reply[i]) - 1],
                body=reply[i + 2],
                message_id=reply[i + 1].decode(),
                lease=reply[i + 5].decode(),
                deliveries=int(reply[i + 4]),
                priority=int(reply[i + 3]),
            )
            for i in range(1, len(reply), 6)
        ]
        return deliveries, (None if wait_ms < 0 else wait_ms / 1000)

    def _block(self, queues: list[str], seconds: float) -> None:
        """Wait up to ``seconds`` for a token on the wake list of one of ``queues``.

        Redis checks blocking timeouts only ``hz`` times a second (every 100 ms by default), too
        coarse for due times; so the wait is timed here, and ended early with CLIENT UNBLOCK.
        """
        if seconds < 0.001:
            return
        wake_keys = [self._base(queue) + "wake" for queue in queues]
        try:
            with self._borrowed() as conn:
                conn.send_command("CLIENT", "ID")
                conn.send_command("BLPOP", *wake_keys, f"{seconds:.3f}", check_health=False)
                client_id = _allowed(conn.read_response)
                if not conn.can_read(timeout=seconds) and client_id is not None:
                    _allowed(functools.partial(self._client().client_unblock, client_id))
                conn.read_response()
        except redis.exceptions.ConnectionError:
            pass  # the next claim reconnects, with retries, or reports the error

    @_translated
    def ack_many(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Acknowledge several deliveries with one script call."""
        return self.complete([(delivery, None) for delivery in deliveries])

    def ack(self, delivery: Delivery) -> bool:
        """Delete a delivered message; ``False`` if the lease was lost."""
        return self.ack_many([delivery])[0]

    @_translated
    def complete(self, items: Sequence[tuple[Delivery, KeyWrite | None]]) -> list[bool]:
        """Acknowledge and store results in one script call; a lost lease stores nothing."""
        if not items:
            return []
        keys: list[str] = []
        args: list[Any] = []
        for delivery, write in items:
            base = self._base(delivery.queue)
            keys += [base + "leased", base + "m:" + delivery.message_id]
            if write is None:
                keys.append(base + "leased")  # a key of the same slot, never written
                args += [delivery.message_id, delivery.lease, "0", "", "0", ""]
                continue
            key, value, ttl = write
            check_key(key, value, ttl)
            keys.append(self._key(key))
            ttl_ms = "0" if ttl is None else _ms(ttl)
            args += [delivery.message_id, delivery.lease, "1", value, ttl_ms, self._key(key)]
        return [bool(done) for done in self._script().complete(keys, args)]

    @_translated
    def release(
        self, delivery: Delivery, reason: str | None = None, detail: Detail | None = None
    ) -> bool:
        """Give a delivery back; with ``reason`` it counts as a failed delivery."""
        detail_json = check_detail(detail)
        base = self._base(delivery.queue)
        keys = [base + "leased", base + "ready", base + "wake", base + "m:" + delivery.message_id]
        args: list[Any] = [delivery.message_id, delivery.lease]
        args += ["0" if reason is None else "1", reason or ""]
        args += [self.max_deliveries, delivery.queue, self.prefix + "dead:", detail_json or ""]
        return bool(self._script().release([*keys, self.prefix + "dead"], args))

    @_translated
    def retry(self, delivery: Delivery, due: float | None, body: bytes | None = None) -> bool:
        """Put a delivered message back at ``due``, with a new body if given."""
        if body is not None:
            check_bytes("body", body)
        check_due(due)
        base = self._base(delivery.queue)
        keys = [base + "leased", base + "ready", base + "delayed", base + "wake"]
        keys.append(base + "m:" + delivery.message_id)
        args: list[Any] = [delivery.message_id, delivery.lease]
        args += ["" if due is None else repr(due * 1000), "0" if body is None else "1", body or b""]
        return bool(self._script().retry(keys, args))

    @_translated
    def extend(self, deliveries: Sequence[Delivery], lease: float) -> list[Delivery]:
        """Renew leases for ``lease`` seconds from now; return those still held."""
        check_lease(lease)
        if not deliveries:
            return []
        keys: list[str] = []
        args: list[Any] = [_ms(lease)]
        for delivery in deliveries:
            base = self._base(delivery.queue)
            keys += [base + "leased", base + "m:" + delivery.message_id]
            args += [delivery.message_id, delivery.lease]
        held = self._script().extend(keys, args)
        return [delivery for delivery, ok in zip(deliveries, held, strict=True) if ok]

    @_translated
    def dead_letter(self, delivery: Delivery, reason: str, detail: Detail | None = None) -> bool:
        """Move a delivered message to the dead-letter queue."""
        detail_json = check_detail(detail)
        base = self._base(delivery.queue)
        keys = [base + "leased", base + "m:" + delivery.message_id, self.prefix + "dead"]
        args = [delivery.message_id, delivery.lease, reason, delivery.queue, self.prefix + "dead:"]
        return bool(self._script().dead_letter(keys, [*args, detail_json or ""]))

    @_translated
    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The most recent dead letters, newest first."""
        client = self._client()
        newest = cast(list[bytes], client.zrevrange(self.prefix + "dead", 0, limit - 1))
        ids = [message_id.decode() for message_id in newest]
        fields = ("queue", "body", "reason", "deliveries", "dead_at", "history")
        with client.pipeline(transaction=False) as pipe:
            for message_id in ids:
                pipe.hmget(self.prefix + "dead:" + message_id, fields)
            rows = pipe.execute()
        letters = [
            DeadLetter(
                message_id=message_id,
                queue=queue.decode(),
                body=body,
                reason=reason.decode(),
                deliveries=int(deliveries),
                dead_at=float(dead_at),
                history=json.loads(history or b"[]"),
            )
            for message_id, (queue, body, reason, deliveries, dead_at, history) in zip(
                ids, rows, strict=True
            )
            if queue is not None  # redriven between the two reads
        ]
        # Letters buried by one script share a time: the newer id comes first, as elsewhere.
        return sorted(letters, key=lambda d: (d.dead_at, int(d.message_id)), reverse=True)

    @_translated
    def redrive(self, message_id: str) -> bool:
        """Put a dead letter back on its queue with a fresh delivery count."""
        letter = self.prefix + "dead:" + message_id
        queue = cast(bytes | None, self._client().hget(letter, "queue"))
        if queue is None:
            return False
        base = self._base(queue.decode())
        keys = [self.prefix + "dead", letter, base + "ready", base + "wake"]
        keys.append(base + "m:" + message_id)
        return bool(self._script().redrive(keys, [message_id]))

    @_translated
    def dead_letter_count(self) -> int:
        """How many messages the dead-letter queue holds."""
        return int(self._client().zcard(self.prefix + "dead"))

    @_translated
    def purge_dead_letters(self) -> int:
        """Delete every dead letter, ``PURGE_BATCH`` per script call; return how many."""
        keys: list[Any] = [self.prefix + "dead"]
        args: list[Any] = [self.prefix + "dead:", PURGE_BATCH]
        total = 0
        while removed := int(self._script().purge_dead(keys, args)):
            total += removed
        return total

    @_translated
    def size(self, queue: str) -> int:
        """Messages on ``queue`` that are not acknowledged (ready, delayed or leased)."""
        check_name("queue", queue)
        base = self._base(queue)
        with self._client().pipeline(transaction=True) as pipe:
            for state in ("ready", "delayed", "leased"):
                pipe.zcard(base + state)
            return sum(pipe.execute())

    @_translated
    def purge(self, queue: str) -> int:
        """Delete the messages of ``queue`` that are not leased; return how many."""
        check_name("queue", queue)
        base = self._base(queue)
        keys = [base + "ready", base + "delayed"]
        total = 0
        while removed := int(self._script().purge(keys, [base, PURGE_BATCH])):
            total += removed
        return total

    # -- keys -----------------------------------------------------------------------------------

    @_translated
    def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``, expiring after ``ttl`` seconds if given."""
        check_key(key, value, ttl)
        name = self._key(key)
        with self._client().pipeline(transaction=False) as pipe:
            pipe.set(name, value, px=None if ttl is None else _ms(ttl))
            pipe.publish(name, b"")  # wakes ``wait`` at once
            pipe.execute()

    @_translated
    def get(self, key: str) -> bytes | None:
        """The value under ``key``, or ``None``."""
        check_name("key", key)
        return cast(bytes | None, self._client().get(self._key(key)))

    @_translated
    def delete(self, key: str) -> None:
        """Remove ``key`` if present."""
        check_name("key", key)
        self._client().delete(self._key(key))

    @_translated
    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Add ``amount`` to the integer under ``key`` (0 if absent); return the new value."""
        check_key(key, b"", ttl)
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise TypeError(f"amount must be an int, not {type(amount).__name__}")
        name = self._key(key)
        ttl_ms = "0" if ttl is None else _ms(ttl)
        try:
            return int(self._script().incr([name], [amount, ttl_ms, name]))
        except ResponseError as exc:
            if "not an integer" in str(exc):
                raise ValueError(f"key {key!r} does not hold an integer") from None
            raise

    @_translated
    def wait(self, key: str, timeout: float | None = None) -> bytes | None:
        """Block until ``key`` exists; return its value, or ``None`` after ``timeout``.

        Subscribes to the key's channel (which every write publishes on) before looking, so a
        write between the look and the wait still wakes us.
        """
        value = self.get(key)
        if value is not None or (timeout is not None and timeout <= 0):
            return value
        deadline = None if timeout is None else time.monotonic() + timeout
        channel = self._key(key)
        with self._borrowed() as conn:
            conn.send_command("SUBSCRIBE", channel)
            conn.read_response()
            while (value := self.get(key)) is None:
                left = self.socket_timeout if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    break
                if conn.can_read(timeout=min(left, self.socket_timeout)):
                    conn.read_response()
            # No health check now: its PING would read our pending notifications as its reply.
            conn.send_command("UNSUBSCRIBE", channel, check_health=False)
            while _kind(conn.read_response()) != b"unsubscribe":
                pass  # notifications that came in meanwhile; the pool gets a clean connection
        return value

    # -- topics ---------------------------------------------------------------------------------

    @_translated
    def broadcast(self, topic: str, body: bytes) -> None:
        """Append ``body`` to ``topic`` for every current listener."""
        check_topic(topic, body)
        self._client().publish(self.prefix + "topic:" + topic, body)

    @_translated
    def listen(self, topics: Sequence[str]) -> Subscription:
        """Subscribe to ``topics`` from now on."""
        names = {self.prefix + "topic:" + topic: topic for topic in sorted(check_topics(topics))}
        pubsub = self._client().pubsub()  # type: ignore[no-untyped-call]
        return _RedisSubscription(self, pubsub, names)


    # -- limits (the scripts and their keys: redis_limits.py) -----------------------------------

    @_translated
    def publish_unique(
        self, queue: str, body: bytes, key: str, *, due: float | None = None, priority: int = 0
    ) -> tuple[str, bool]:
        """Publish unless a live message holds ``key``: ``(message id, published)``."""
        check_message(queue, body, due, priority)
        check_name("key", key)
        base = self._base(queue)
        keys = [self.prefix + "ids", base + "ready", base + "delayed", base + "wake"]
        args: list[Any] = [base, body, priority, "" if due is None else repr(due * 1000)]
        message_id, published = self._script().publish_unique(
            [*keys, self.prefix + "unique:" + key], args
        )
        return _text(message_id), bool(published)

    @_translated
    def defer(self, delivery: Delivery, due: float, waiting_on: str | None = None) -> bool:
        """Give a delivery back unstarted until ``due`` (or a slot of ``waiting_on`` frees)."""
        check_due(due)
        base = self._base(delivery.queue)
        keys = [base + "leased", base + "ready", base + "delayed", base + "wake"]
        keys.append(base + "m:" + delivery.message_id)
        args: list[Any] = [delivery.message_id, delivery.lease, repr(due * 1000)]
        if waiting_on is None:
            keys.append(base + "leased")  # not written
            args += ["0", ""]
        else:
            check_name("waiting_on", waiting_on)
            keys.append(self.prefix + "slots:" + waiting_on + ":waiting")
            args += ["1", f"{delivery.message_id}:{delivery.queue}"]
        return bool(self._script().defer(keys, args))

    @_translated
    def throttle(self, key: str, interval: float, claim: str) -> float | None:
        """None: go now; else the broker time of the turn reserved for ``claim``."""
        check_throttle(key, interval, claim)
        name = self.prefix + "limit:" + key
        args = [repr(float(interval) * 1000), claim, repr(TURN_GRACE * 1000)]
        turn = self._script().throttle([name, name + ":turns"], args)
        return None if turn is None else float(turn) / 1000

    @_translated
    def acquire_slot(self, key: str, holder: str, limit: int, ttl: float) -> float | None:
        """None: ``holder`` holds a slot of ``key``; else when the soonest slot runs out."""
        check_slot(key, holder, limit, ttl)
        soonest = self._script().acquire_slot(
            [self.prefix + "slots:" + key], [holder, limit, _ms(ttl)]
        )
        return None if soonest is None else float(soonest) / 1000

    @_translated
    def renew_slots(self, slots: Sequence[tuple[str, str]], ttl: float) -> list[bool]:
        """Renew ``(key, holder)`` slots for ``ttl`` seconds; whether each was still held."""
        check_lease(ttl)
        if not slots:
            return []
        keys = [self.prefix + "slots:" + key for key, _ in slots]
        held = self._script().renew_slots(keys, [_ms(ttl), *(holder for _, holder in slots)])
        return [bool(ok) for ok in held]

    @_translated
    def release_slots(self, slots: Sequence[tuple[str, str]]) -> None:
        """Free ``(key, holder)`` slots; wake one message waiting on each key."""
        if not slots:
            return
        keys: list[str] = []
        for key, _ in slots:
            keys += [self.prefix + "slots:" + key, self.prefix + "slots:" + key + ":waiting"]
        args: list[Any] = [self.prefix, WAKE_SCAN, *(holder for _, holder in slots)]
        self._script().release_slots(keys, args)


class _RedisSubscription(Subscription):
    """A pub/sub connection of its own; redis-py subscribes it again after a reconnect."""

    #: Longest wait between checks for ``close`` from another thread.
    SLICE = 0.1

    def __init__(self, transport: RedisTransport, pubsub: PubSub, channels: dict[str, str]) -> None:
        self._transport = transport
        self._pubsub = pubsub
        self._topics = {channel.encode(): topic for channel, topic in channels.items()}
        self._lock = threading.Lock()
        self._closed = self._reading = False
        pubsub.subscribe(*channels)
        # Wait for every confirmation: from then on a broadcast reaches us.
        waiting = set(self._topics)
        deadline = time.monotonic() + transport.socket_timeout
        while waiting and (left := deadline - time.monotonic()) > 0:
            message = pubsub.get_message(timeout=left)
            if message is not None and message["type"] == "subscribe":
                waiting.discard(message["channel"])
        if waiting:
            pubsub.close()
            raise TransportError(f"Redis broker {transport.location}: subscribing timed out")

    def get(self, timeout: float | None = None) -> list[tuple[str, bytes]]:
        """Return ``(topic, body)`` pairs broadcast since the last call; wait up to ``timeout``."""
        with self._lock:
            if self._closed:
                return []
            self._reading = True
        try:
            return self._read(timeout)
        except RedisError as exc:
            raise TransportError(f"Redis broker {self._transport.location}: {exc}") from exc
        finally:
            with self._lock:
                self._reading = False
                if self._closed:
                    self._pubsub.close()

    def _read(self, timeout: float | None) -> list[tuple[str, bytes]]:
        """Wait for the first message, then take whatever else has already arrived."""
        deadline = None if timeout is None else time.monotonic() + timeout
        items: list[tuple[str, bytes]] = []
        while not self._closed:
            wait = self.SLICE
            if items:
                wait = 0.0
            elif deadline is not None:
                wait = min(max(deadline - time.monotonic(), 0.0), self.SLICE)
            message = self._pubsub.get_message(timeout=wait)
            if message is None:
                if items or (deadline is not None and time.monotonic() >= deadline):
                    break
            elif message["type"] == "message":
                items.append((self._topics[message["channel"]], message["data"]))
        return items

    def close(self) -> None:
        """Stop listening; a ``get`` running in another thread returns within ``SLICE``."""
        with self._lock:
            self._closed = True
            if not self._reading:
                self._pubsub.close()


# -- helpers --------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    """A script's reply as text (redis-py hands bulk strings back as bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _ms(seconds: float) -> int:
    """Whole milliseconds, rounded up so that nothing expires early, and at least one."""
    return max(1, math.ceil(seconds * 1000))


def _allowed(command: Callable[[], Any]) -> Any:
    """Run ``command``; ``None`` if the server refuses it (an ACL user without CLIENT).

    Without CLIENT ID or CLIENT UNBLOCK a fetch still works: Redis ends the BLPOP itself at
    its timeout, up to 100 ms late.
    """
    try:
        return command()
    except ResponseError:
        return None


def _kind(reply: Any) -> bytes | None:
    """The kind of a pub/sub reply (``message``, ``unsubscribe``, ...)."""
    return reply[0] if isinstance(reply, list) and reply else None


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
