"""The autoscaler on a real thread pool: grow with the backlog, shrink back when idle."""

from __future__ import annotations

import queue
import threading

from celeriac import Celeriac
from celeriac.worker.autoscale import Autoscaler
from celeriac.worker.pools import Event, Job, ThreadPool


def test_grows_with_the_backlog_and_shrinks_when_idle(app: Celeriac) -> None:
    gate = threading.Event()

    @app.task(name="wait_for_gate")
    def wait_for_gate() -> str:
        gate.wait(10)
        return "open"

    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    pool = ThreadPool(app, 1, "test@host", events)
    pool.start()
    scaler = Autoscaler(pool, maximum=3, minimum=1, keepalive=0.0)
    for job_id in range(4):
        message = app.build_message("wait_for_gate")
        pool.submit(Job(job_id, message, b"", {}))
    threading.Event().wait(0.1)  # let the single thread take the first job
    scaler.step(running=1)
    assert pool.concurrency == 3  # three waiting jobs, room for two more threads
    gate.set()
    done = [events.get(timeout=10) for _ in range(4)]
    assert {d[1].state for d in done} == {"SUCCESS"}
    scaler._last_step = 0.0
    scaler.step(running=0)
    assert pool.concurrency == 2  # one step shrinks by one
    scaler._last_step = 0.0
    scaler.step(running=0)
    scaler._last_step = 0.0
    scaler.step(running=0)
    assert pool.concurrency == 1  # never below the minimum
    pool.stop(5)
