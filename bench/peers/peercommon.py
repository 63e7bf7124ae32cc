"""What every peer's task module shares: the Redis URL and the completion counter.

Each no-op task increments ``DONE_KEY`` once; the driver polls it until the backlog is done.
That is the same for every peer, so it adds the same Redis round trip to each task.
"""

from __future__ import annotations

import os

import redis
import redis.asyncio

URL = os.environ["PEERS_REDIS_URL"]
DONE_KEY = "bench:peers:done"

_client: redis.Redis | None = None
_aclient: redis.asyncio.Redis | None = None


def count_done() -> None:
    """One INCR, from a client made lazily in the process (and thread pool) that runs tasks."""
    global _client
    if _client is None:
        _client = redis.Redis.from_url(URL)
    _client.incr(DONE_KEY)


async def acount_done() -> None:
    """The asyncio form of ``count_done``, for asyncio peers (one client per worker loop)."""
    global _aclient
    if _aclient is None:
        _aclient = redis.asyncio.Redis.from_url(URL)
    await _aclient.incr(DONE_KEY)
