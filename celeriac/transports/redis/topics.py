"""The topics of the Redis engine: plain pub/sub on channels ``P topic:<t>``."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from redis.client import PubSub
from redis.exceptions import RedisError

from celeriac.errors import TransportError
from celeriac.transports.base import Subscription, check_topic, check_topics
from celeriac.transports.redis.connection import RedisBase, translated


class Topics(RedisBase):
    """A broadcast reaches the listeners subscribed at that moment, and no one else."""

    @translated
    def broadcast(self, topic: str, body: bytes) -> None:
        """Append ``body`` to ``topic`` for every current listener."""
        check_topic(topic, body)
        self._command("PUBLISH", self.prefix + "topic:" + topic, body)

    @translated
    def listen(self, topics: Sequence[str]) -> Subscription:
        """Subscribe to ``topics`` from now on."""
        names = {self.prefix + "topic:" + topic: topic for topic in sorted(check_topics(topics))}
        pubsub = self._client().pubsub()  # type: ignore[no-untyped-call]
        return _RedisSubscription(self, pubsub, names)


class _RedisSubscription(Subscription):
    """A pub/sub connection of its own; redis-py subscribes it again after a reconnect."""

    #: Longest wait between checks for ``close`` from another thread.
    SLICE = 0.1

    def __init__(self, transport: RedisBase, pubsub: PubSub, channels: dict[str, str]) -> None:
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
