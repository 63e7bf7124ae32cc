"""The finisher: results and acks written in batches by its thread, or at once when idle."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from celeriac import Celeriac
from celeriac.transports.base import Delivery
from celeriac.worker.finisher import Finisher


@pytest.fixture
def finisher(engine_url: str) -> Iterator[tuple[Celeriac, Finisher]]:
    app = Celeriac("finisher", broker=engine_url)
    app.broker.purge("fin")
    writer = Finisher(app)
    writer.start()
    yield app, writer
    writer.stop()
    app.broker.purge("fin")
    app.close()


def _fetched(app: Celeriac, n: int) -> list[Delivery]:
    for i in range(n):
        app.broker.publish("fin", f"body-{i}".encode())
    deliveries = app.broker.fetch(["fin"], limit=n, timeout=1.0)
    assert len(deliveries) == n
    return deliveries


def test_now_writes_in_the_calling_thread_before_returning(
    finisher: tuple[Celeriac, Finisher],
) -> None:
    app, writer = finisher
    (delivery,) = _fetched(app, 1)
    writer.submit([(delivery, ("fin-result", b"done", 60.0))], now=True)
    assert app.broker.get("fin-result") == b"done"  # written before submit returned
    assert app.broker.ack(delivery) is False  # acknowledged already: nothing left to ack
    assert writer.pending() == 0


def test_without_now_the_thread_writes_and_nothing_is_lost(
    finisher: tuple[Celeriac, Finisher],
) -> None:
    app, writer = finisher
    deliveries = _fetched(app, 50)
    for i, delivery in enumerate(deliveries):
        writer.submit([(delivery, (f"fin-{i}", b"%d" % i, 60.0))], now=i % 2 == 0)
    writer.stop()  # writes what is queued
    assert [app.broker.get(f"fin-{i}") for i in range(50)] == [b"%d" % i for i in range(50)]
    assert not any(app.broker.ack(delivery) for delivery in deliveries)


def test_now_queues_behind_a_write_in_progress(finisher: tuple[Celeriac, Finisher]) -> None:
    app, writer = finisher
    first, second = _fetched(app, 2)
    entered, release = threading.Event(), threading.Event()
    real_write = writer._write

    def slow_write(batch: list) -> None:  # type: ignore[type-arg]
        if batch[0][0] is first:
            entered.set()
            release.wait(5.0)
        real_write(batch)

    writer._write = slow_write  # type: ignore[method-assign]
    writer.submit([(first, ("fin-a", b"a", 60.0))])  # the thread writes this one, slowly
    assert entered.wait(5.0)
    writer.submit([(second, ("fin-b", b"b", 60.0))], now=True)  # must not write alongside
    assert app.broker.get("fin-b") is None and writer.pending() == 2
    release.set()
    writer.stop()
    assert (app.broker.get("fin-a"), app.broker.get("fin-b")) == (b"a", b"b")
