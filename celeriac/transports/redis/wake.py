"""The wait of an idle fetcher: BLPOP on the queues' wake lists, timed on the client.

Redis checks blocking timeouts only ``hz`` times a second (every 100 ms by default), too coarse
for due times; so the wait is timed here, and ended early with ``CLIENT UNBLOCK``. On Redis
Cluster a BLPOP takes keys of one slot: queues in several slots are waited on at once, a
thread per slot on the node that serves it, and the first token ends the other waits.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import redis
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from celeriac.transports.redis.connection import RedisBase
from celeriac.transports.redis.direct import AnyScript

#: A script call: the script, its keys and its arguments.
Call = tuple[AnyScript, list[str], list[Any]]


class Wake(RedisBase):
    """``P{q}:wake`` holds at most one token, pushed when work may be ready on ``q``."""

    def _block(self, queues: list[str], seconds: float, then: Call | None = None) -> Any:
        """Wait up to ``seconds`` for a token on the wake list of one of ``queues``.

        ``then``, a script call sent with the wait on its connection, runs on the server the
        moment the wait ends, a round trip sooner than a call made after it: its reply is
        returned, or ``None`` if it did not run (queues in several slots, or an error).

        Queues in several cluster slots are waited on at once, a thread per slot: the first
        token ends the others' waits.
        """
        if seconds < 0.001:
            return None
        wake_keys = [self._base(queue) + "wake" for queue in queues]
        groups = [[wake_keys[i] for i in group] for group in self._slot_groups(queues)]
        if len(groups) == 1:
            return self._block_slot(groups[0], seconds, _Waits(1), then)
        waits = _Waits(len(groups))
        threads = [
            threading.Thread(target=self._block_quietly, args=(keys, seconds, waits), daemon=True)
            for keys in groups
        ]
        for thread in threads:
            thread.start()
        waits.woken.wait(seconds)
        # A wait that cannot be ended (no CLIENT ID for this user) is left to time out alone.
        while not waits.ended() and any(thread.is_alive() for thread in threads):
            waits.unblock_all()
            for thread in threads:
                thread.join(0.005)
        return None

    def _block_quietly(self, wake_keys: list[str], seconds: float, waits: _Waits) -> None:
        """``_block_slot`` in a thread of its own: the next claim reports any error."""
        try:
            self._block_slot(wake_keys, seconds, waits)
        except (RedisError, RedisClusterException):
            waits.woken.set()

    def _block_slot(
        self, wake_keys: list[str], seconds: float, waits: _Waits, then: Call | None = None
    ) -> Any:
        """BLPOP on the wake lists of one slot, on the node that serves it; ``then``'s reply."""
        node = self._node(wake_keys[0])
        try:
            with self._borrowed(wake_keys[0]) as conn:
                conn.send_command("CLIENT", "ID")
                conn.send_command("BLPOP", *wake_keys, f"{seconds:.3f}", check_health=False)
                if then is not None:
                    script, keys, args = then
                    conn.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
                client_id = _allowed(conn.read_response)
                waits.blocked(node, client_id)
                if not conn.can_read(timeout=seconds) and client_id is not None:
                    _allowed(functools.partial(node.client_unblock, client_id))
                conn.read_response()
                waits.done(node, client_id)
                # NOSCRIPT (a server that restarted) leaves the call to be made the usual way.
                return None if then is None else _allowed(conn.read_response)
        except redis.exceptions.ConnectionError:
            return None  # the next claim reconnects, with retries, or reports the error
        finally:
            waits.woken.set()


def _allowed(command: Callable[[], Any]) -> Any:
    """Run ``command``; ``None`` if the server refuses it (an ACL user without CLIENT).

    Without CLIENT ID or CLIENT UNBLOCK a fetch still works: Redis ends the BLPOP itself at
    its timeout, up to 100 ms late.
    """
    try:
        return command()
    except ResponseError:
        return None


class _Waits:
    """The BLPOPs of one idle fetch, one per slot: which still block, and whether one ended."""

    def __init__(self, count: int) -> None:
        self.woken = threading.Event()
        self._lock = threading.Lock()
        self._blocked: dict[tuple[int, int], tuple[redis.Redis, int]] = {}
        self._left = count  # waits neither over nor known to be unstoppable

    def blocked(self, node: redis.Redis, client_id: int | None) -> None:
        with self._lock:
            if client_id is None:
                self._left -= 1
            else:
                self._blocked[id(node), client_id] = (node, client_id)

    def done(self, node: redis.Redis, client_id: int | None) -> None:
        if client_id is not None:
            with self._lock:  # before its connection goes back to the pool
                self._blocked.pop((id(node), client_id), None)
                self._left -= 1

    def ended(self) -> bool:
        with self._lock:
            return self._left <= 0

    def unblock_all(self) -> None:
        with self._lock:
            blocked = list(self._blocked.values())
        for node, client_id in blocked:
            _allowed(functools.partial(node.client_unblock, client_id))
