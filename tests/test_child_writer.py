"""The result writer of a consuming prefork child: endings wait a little, never long."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from helpers import wait_until

from celeriac.worker import child_writer
from celeriac.worker.child_writer import Unwritten


class Written:
    """The write callback: what was written, when, and from which thread."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[object], float, str]] = []

    def __call__(self, events: list[object]) -> None:
        self.batches.append((events, time.monotonic(), threading.current_thread().name))

    def events(self) -> list[object]:
        return [event for batch, _, _ in self.batches for event in batch]


@pytest.fixture
def writer() -> Iterator[tuple[Written, Unwritten]]:
    """A started ``Unwritten`` and what it wrote; closed at teardown."""
    written = Written()
    unwritten = Unwritten(written)
    unwritten.start()
    yield written, unwritten
    unwritten.close()


def test_an_ending_is_written_by_the_thread_while_the_main_thread_is_busy(
    writer: tuple[Written, Unwritten],
) -> None:
    written, unwritten = writer
    added = time.monotonic()
    unwritten.add([("done", 1)])  # and the main thread goes on running a long job
    wait_until(lambda: written.batches, 2.0, "the writer thread to write")
    events, at, thread = written.batches[0]
    assert events == [("done", 1)] and thread == "result-writer"
    assert at - added >= child_writer.WRITE_WITHIN * 0.9  # it waited for more to come
    assert unwritten.age() is None


def test_the_main_thread_writes_the_batch_itself_and_the_thread_finds_nothing(
    writer: tuple[Written, Unwritten],
) -> None:
    written, unwritten = writer
    unwritten.add([("done", 1), ("done", 2)])
    assert unwritten.age() is not None
    unwritten.write()
    time.sleep(child_writer.WRITE_WITHIN * 3)
    assert [thread for _, _, thread in written.batches] == ["MainThread"]
    assert written.events() == [("done", 1), ("done", 2)]


def test_a_parked_thread_wakes_for_the_next_ending(
    writer: tuple[Written, Unwritten], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(child_writer, "PARK_AFTER", 0.05)  # read by the thread at each look
    written, unwritten = writer
    wait_until(lambda: unwritten._parked, 2.0, "the writer thread to park")
    unwritten.add([("done", 3)])
    assert not unwritten._parked
    wait_until(lambda: written.batches, 2.0, "the woken writer thread to write")
    assert written.batches[0][0] == [("done", 3)]


def test_close_writes_what_waits(writer: tuple[Written, Unwritten]) -> None:
    written, unwritten = writer
    unwritten.add([("done", 4)])
    unwritten.close()
    assert written.events() == [("done", 4)]
