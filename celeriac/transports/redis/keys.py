"""The keys of the Redis engine (results, counters), and ``wait``, woken by pub/sub."""

from __future__ import annotations

import time
from typing import Any, cast

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from celeriac.transports.base import check_key, check_name
from celeriac.transports.redis.connection import RedisBase, ms, translated


class Keys(RedisBase):
    """``P key:<k>`` strings; every write also publishes on a channel of the same name."""

    @translated
    def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``, expiring after ``ttl`` seconds if given."""
        check_key(key, value, ttl)
        name = self._key(key)
        # The write also publishes on the key's channel: it wakes ``wait`` at once.
        self._script().put([name], [value, "0" if ttl is None else ms(ttl), name])

    @translated
    def get(self, key: str) -> bytes | None:
        """The value under ``key``, or ``None``."""
        check_name("key", key)
        return cast(bytes | None, self._command("GET", self._key(key)))

    @translated
    def delete(self, key: str) -> None:
        """Remove ``key`` if present."""
        check_name("key", key)
        self._command("DEL", self._key(key))

    @translated
    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Add ``amount`` to the integer under ``key`` (0 if absent); return the new value."""
        check_key(key, b"", ttl)
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise TypeError(f"amount must be an int, not {type(amount).__name__}")
        name = self._key(key)
        ttl_ms = "0" if ttl is None else ms(ttl)
        try:
            return int(self._script().incr([name], [amount, ttl_ms, name]))
        except ResponseError as exc:
            if "not an integer" in str(exc):
                raise ValueError(f"key {key!r} does not hold an integer") from None
            raise

    @translated
    def wait(self, key: str, timeout: float | None = None) -> bytes | None:
        """Block until ``key`` exists; return its value, or ``None`` after ``timeout``.

        Subscribes to the key's channel (which every write publishes on) before looking, so a
        write between the look and the wait still wakes us. A write of a small value sends the
        value itself (``=`` and the bytes), which saves reading it back; a larger one sends an
        empty notice.

        On a single server each thread keeps a connection for its waits: a wait leaves its
        channel without waiting for the server's reply, which the next wait reads first (one
        round trip less after the value came). On a cluster a wait borrows a pooled
        connection to the node of the key's slot (any node would do: a publish reaches every
        node) and leaves it clean.
        """
        value = self.get(key)
        if value is not None or (timeout is not None and timeout <= 0):
            return value
        deadline = None if timeout is None else time.monotonic() + timeout
        channel = self._key(key)
        if self.is_cluster:
            with self._borrowed(channel) as conn:
                value = self._wait_on(conn, key, channel, deadline)
                while _kind(conn.read_response()) != b"unsubscribe":
                    pass  # notices that came in meanwhile; the pool gets a clean connection
            return value
        while True:
            conn, kept = self._waiter(channel)
            try:
                return self._wait_on(conn, key, channel, deadline)
            except BaseException as exc:
                self._drop_waiter(conn)  # it may hold half a reply
                if not (kept and isinstance(exc, RedisConnectionError)):
                    raise
                # a kept connection the server had closed: once more, on a new one

    def _wait_on(self, conn: Any, key: str, channel: str, deadline: float | None) -> bytes | None:
        """Subscribe ``conn`` to ``channel``, wait for the value, and send the unsubscribe
        (its reply is left for the caller). No health checks: their PING would read pending
        pub/sub replies as its own."""
        conn.send_command("SUBSCRIBE", channel, check_health=False)
        subscribed = [b"subscribe", channel.encode()]
        while not isinstance(reply := conn.read_response(), list) or reply[:2] != subscribed:
            pass  # what the last wait on this connection left: its unsubscribe, late notices
        value = self.get(key)
        while value is None:
            left = self.socket_timeout if deadline is None else deadline - time.monotonic()
            if left <= 0:
                break
            if conn.can_read(timeout=min(left, self.socket_timeout)):
                value = _written(conn.read_response())
            if value is None:
                value = self.get(key)
        conn.send_command("UNSUBSCRIBE", channel, check_health=False)
        return value

    def _waiter(self, channel: str) -> tuple[Any, bool]:
        """This thread's connection for waits, and whether it was kept from an earlier one."""
        self._forget_parent()
        conn = getattr(self._waiters, "conn", None)
        if conn is not None:
            return conn, True
        pool = self._node(channel).connection_pool
        conn = pool.connection_class(**pool.connection_kwargs)  # not the pool's to hand out
        conn.connect()
        with self._lock:
            self._waiter_conns.add(conn)
        self._waiters.conn = conn
        return conn, False

    def _drop_waiter(self, conn: Any) -> None:
        """Close a wait connection that failed, so that the next wait opens another."""
        with self._lock:
            self._waiter_conns.discard(conn)
        if getattr(self._waiters, "conn", None) is conn:
            self._waiters.conn = None
        conn.disconnect()


def _written(reply: Any) -> bytes | None:
    """The value a notification carries, or None when it carries none (a large value)."""
    if _kind(reply) != b"message" or len(reply) < 3 or not isinstance(reply[2], bytes):
        return None
    notice: bytes = reply[2]
    return notice[1:] if notice[:1] == b"=" else None


def _kind(reply: Any) -> bytes | None:
    """The kind of a pub/sub reply (``message``, ``unsubscribe``, ...)."""
    return reply[0] if isinstance(reply, list) and reply else None
