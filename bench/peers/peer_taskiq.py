"""taskiq with taskiq-redis: ``ListQueueBroker`` and ``RedisAsyncResultBackend``.

``wait_result`` polls the backend; its default interval (0.2 s) would measure the interval,
so the round trip polls every millisecond instead.
"""

from __future__ import annotations

import peercommon
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend

POLL_INTERVAL = 0.001

broker = ListQueueBroker(peercommon.URL).with_result_backend(
    RedisAsyncResultBackend(peercommon.URL, result_ex_time=86400)
)


@broker.task(task_name="peer_taskiq.noop")
async def noop(i: int) -> int:
    """Count the task as done, return the argument (stored in the result backend)."""
    await peercommon.acount_done()
    return i


async def start() -> None:
    """Connect the client side (taskiq needs ``startup`` before ``kiq``)."""
    await broker.startup()


async def stop() -> None:
    """Close the client side."""
    await broker.shutdown()


async def send(i: int) -> None:
    """Enqueue one task."""
    await noop.kiq(i)


async def call(i: int) -> None:
    """Enqueue one task and wait for its result."""
    task = await noop.kiq(i)
    result = await task.wait_result(check_interval=POLL_INTERVAL, timeout=30)
    if result.is_err:
        raise RuntimeError(f"taskiq task failed: {result.error}")
