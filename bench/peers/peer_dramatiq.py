"""Dramatiq with its Redis broker; the Results middleware (Redis) for the round trip only.

The drain uses ``noop``, which stores no result (Dramatiq's usual use); the round trip uses
``noop_result``, whose result ``get_result(block=True)`` waits for with BRPOPLPUSH.
"""

from __future__ import annotations

import dramatiq
import peercommon
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

broker = RedisBroker(url=peercommon.URL)
broker.add_middleware(Results(backend=RedisBackend(url=peercommon.URL)))
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="noop")
def noop(i: int) -> int:
    """Count the task as done, return the argument (not stored)."""
    peercommon.count_done()
    return i


@dramatiq.actor(actor_name="noop_result", store_results=True)
def noop_result(i: int) -> int:
    """Count the task as done, return the argument (stored by the Results middleware)."""
    peercommon.count_done()
    return i


def send(i: int) -> None:
    """Enqueue one message."""
    noop.send(i)


def call(i: int) -> None:
    """Enqueue one message and block on its result."""
    noop_result.send(i).get_result(block=True, timeout=30000)
