"""Huey with its Redis storage (``RedisHuey``), results woken by BLPOP (``notify_result``)."""

from __future__ import annotations

import peercommon
from huey import RedisHuey

huey = RedisHuey("peers", url=peercommon.URL, notify_result=True)


@huey.task()
def noop(i: int) -> int:
    """Count the task as done, return the argument (Huey stores it as the result)."""
    peercommon.count_done()
    return i


def send(i: int) -> None:
    """Enqueue one task (calling a Huey task enqueues it)."""
    noop(i)


def call(i: int) -> None:
    """Enqueue one task and wait for its result (``result.get(blocking=True)``)."""
    noop(i).get(blocking=True, timeout=30)
