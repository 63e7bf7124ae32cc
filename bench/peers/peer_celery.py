"""Celery 5 with a Redis broker and a Redis result backend.

``PEERS_CELERY_ACKS_LATE=1`` selects Celery's recommended production settings
(``task_acks_late=True``, ``worker_prefetch_multiplier=1``); otherwise its defaults.
"""

from __future__ import annotations

import os

import peercommon
from celery import Celery

app = Celery("peer_celery", broker=peercommon.URL, backend=peercommon.URL)
app.conf.broker_connection_retry_on_startup = True  # the default; set to silence its warning
if os.environ.get("PEERS_CELERY_ACKS_LATE") == "1":
    app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1)


@app.task(name="peer_celery.noop")
def noop(i: int) -> int:
    """Count the task as done, return the argument (Celery stores it in the backend)."""
    peercommon.count_done()
    return i


def send(i: int) -> None:
    """Enqueue one task the usual way."""
    noop.delay(i)


def call(i: int) -> None:
    """Enqueue one task and wait for its result (``AsyncResult.get``, pub/sub woken)."""
    noop.delay(i).get(timeout=30)
