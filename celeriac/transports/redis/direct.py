"""Script calls and hot commands straight on a connection, past redis-py's per-command
layers.

redis-py 8 wraps every command in a pool checkout and release, a retry closure, an event
dispatch and its observability hooks; on the small script calls that publish, claim and
complete a message, that costs about as much as the round trip itself (measured on a 2-core
machine: 190 µs for ``Script.__call__`` against 115 µs for the same EVALSHA sent and read on
a connection). ``DirectScript`` sends the EVALSHA itself, on a connection taken from a stack
of idle ones (a pop and an append, atomic under the GIL, so threads share them safely), with
the client's retry policy for connection errors and redis-py's loading of a script the
server does not know (a restarted Redis forgets them). ``Connections.call`` also serves the
engine's GET, DEL and PUBLISH (``RedisBase._command``). A script called with a pipeline, and
every call on a cluster, go through redis-py as before.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import Any

from redis.commands.core import Script

try:
    from hiredis import pack_command as _pack_command
except ImportError:  # pragma: no cover - redis-py without its hiredis extra
    _pack_command = None  # type: ignore[assignment]
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError


class Connections:
    """The idle connections of one client's direct calls; made as needed, never pooled out."""

    def __init__(self, client: Any) -> None:
        self._pool = client.connection_pool
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._all: weakref.WeakSet[Any] = weakref.WeakSet()  # for close()

    def call(self, command: Sequence[Any]) -> Any:
        """Send ``command`` and read its reply, retrying as the client would on a connection
        error (the connection is dropped first: it may hold half a reply).

        The first attempt goes without the retry's closures (it nearly always succeeds); a
        connection error there hands the command to the client's retries, all of them.
        """
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self._new()
        try:
            try:  # _exchange, written out: the frames of a call cost as much as the packing
                conn.send_packed_command(pack(conn, command))
                return conn.read_response()
            except RedisConnectionError:  # the only error the client's retry policy retries
                conn.disconnect()
            return conn.retry.call_with_retry(
                lambda: _exchange(conn, command), lambda _error: conn.disconnect()
            )
        except ResponseError:
            raise  # the error was the whole reply: the connection is in step
        except BaseException:
            conn.disconnect()  # reconnects on next use; whatever it held is gone
            raise
        finally:
            self._idle.append(conn)

    def _new(self) -> Any:
        pool = self._pool
        conn = pool.connection_class(**pool.connection_kwargs)  # connects on first send
        with self._lock:
            self._all.add(conn)
        return conn

    def close(self) -> None:
        """Disconnect every connection; each reconnects if used again."""
        with self._lock:
            conns = list(self._all)
        for conn in conns:
            conn.disconnect()


def _exchange(conn: Any, command: Sequence[Any]) -> Any:
    conn.send_packed_command(pack(conn, command))
    return conn.read_response()


def pack(conn: Any, command: Sequence[Any]) -> list[bytes]:
    """The command in the wire format. hiredis packs our arguments (str, bytes, int) as
    redis-py would; redis-py first walks them in Python, which on a batch of completions
    costs more than the packing itself."""
    if _pack_command is not None:
        return [_pack_command(tuple(command))]
    return list(conn.pack_command(*command))


class DirectScript:
    """A registered script whose calls without a pipeline go straight to a connection."""

    def __init__(self, script: Script, connections: Connections) -> None:
        self.script = script
        self._connections = connections

    @property
    def sha(self) -> str:
        """The script's SHA1, as EVALSHA names it."""
        return str(self.script.sha)

    def __call__(
        self, keys: Sequence[Any] = (), args: Sequence[Any] = (), client: Any = None
    ) -> Any:
        """Run the script; with ``client`` (a pipeline), queue it there as redis-py does."""
        if client is not None:
            return self.script(keys, args, client=client)
        script = self.script
        try:
            return self._connections.call(("EVALSHA", script.sha, len(keys), *keys, *args))
        except NoScriptError:  # a restarted or flushed server: load it, then once more
            script.sha = script.registered_client.script_load(script.script)
            return self._connections.call(("EVALSHA", script.sha, len(keys), *keys, *args))


#: A script as the engine calls it: straight (one server) or through redis-py (a cluster).
AnyScript = Script | DirectScript
