"""The limits part of the transport contract, on every engine: rate turns (``throttle``),
concurrency slots (``acquire_slot``, ``renew_slots``, ``release_slots``), deferring a delivery
(``defer``, optionally waiting for a slot) and ``publish_unique``.

Times are the broker's: tests compare them with ``time.time()`` loosely, as the Redis server
and this process read the same host clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from celeriac.transports import Delivery, Transport

MakeTransport = Callable[..., Transport]
Q = "tasks"


def fetch_one(transport: Transport, timeout: float = 0.0) -> Delivery:
    deliveries = transport.fetch([Q], timeout=timeout)
    assert len(deliveries) == 1, deliveries
    return deliveries[0]


# -- throttle ---------------------------------------------------------------------------------


def test_throttle_spaces_turns_by_the_interval(transport: Transport) -> None:
    start = time.time()
    assert transport.throttle("k", 0.5, "a") is None  # the first goes at once
    turn_b = transport.throttle("k", 0.5, "b")
    turn_c = transport.throttle("k", 0.5, "c")
    assert turn_b is not None and turn_c is not None
    assert start + 0.4 < turn_b < time.time() + 0.6
    assert turn_c == pytest.approx(turn_b + 0.5, abs=0.002)
    # Asking again before the turn gives the same turn back, and reserves no other.
    assert transport.throttle("k", 0.5, "b") == pytest.approx(turn_b, abs=0.002)
    assert transport.throttle("k", 0.5, "d") == pytest.approx(turn_c + 0.5, abs=0.002)


def test_a_reserved_turn_is_used_once_its_time_came(transport: Transport) -> None:
    assert transport.throttle("k", 0.2, "a") is None
    turn = transport.throttle("k", 0.2, "b")
    assert turn is not None
    time.sleep(max(0.0, turn - time.time()) + 0.01)
    assert transport.throttle("k", 0.2, "b") is None
    # used up: the same claim asking again queues behind the next free turn
    assert transport.throttle("k", 0.2, "b") is not None


def test_throttle_keys_are_independent(transport: Transport) -> None:
    assert transport.throttle("one", 10.0, "a") is None
    assert transport.throttle("two", 10.0, "a") is None
    assert transport.throttle("one", 10.0, "b") is not None


def test_a_new_interval_starts_over_without_an_early_turn(make_transport: MakeTransport) -> None:
    first, second = make_transport(), make_transport()
    assert first.throttle("k", 10.0, "a") is None
    far = first.throttle("k", 10.0, "b")
    assert far is not None and far > time.time() + 9
    # Another client with a new limit: the turns at the old one are dropped; the next turn
    # is one new interval away, not at once.
    turn = second.throttle("k", 0.3, "c")
    assert turn is not None and time.time() < turn < time.time() + 0.35
    assert second.throttle("k", 0.3, "b") == pytest.approx(turn + 0.3, abs=0.002)


@pytest.mark.parametrize(
    ("interval", "error"), [(0, ValueError), (-1.0, ValueError), (float("inf"), ValueError),
                            ("1", TypeError), (True, TypeError)],
)  # fmt: skip
def test_throttle_refuses_bad_intervals(
    transport: Transport, interval: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match="interval"):
        transport.throttle("k", interval, "a")  # type: ignore[arg-type]


# -- concurrency slots ----------------------------------------------------------------------------


def test_slots_hold_up_to_the_limit(make_transport: MakeTransport) -> None:
    first, second = make_transport(), make_transport()
    assert first.acquire_slot("cust:1", "h1", 2, 30.0) is None
    assert second.acquire_slot("cust:1", "h2", 2, 30.0) is None
    soonest = first.acquire_slot("cust:1", "h3", 2, 30.0)
    assert soonest is not None and time.time() + 29 < soonest < time.time() + 31
    assert first.acquire_slot("cust:1", "h1", 2, 30.0) is None  # held already: renewed
    assert first.acquire_slot("cust:2", "h3", 2, 30.0) is None  # another key, other slots

    second.release_slots([("cust:1", "h2")])
    assert first.acquire_slot("cust:1", "h3", 2, 30.0) is None
    assert first.acquire_slot("cust:1", "h4", 2, 30.0) is not None


def test_a_slot_that_is_not_renewed_runs_out(transport: Transport) -> None:
    assert transport.acquire_slot("k", "dead", 1, 0.2) is None
    assert transport.acquire_slot("k", "alive", 1, 0.2) is not None
    time.sleep(0.25)
    assert transport.acquire_slot("k", "alive", 1, 30.0) is None
    assert transport.renew_slots([("k", "dead"), ("k", "alive")], 30.0) == [False, True]


def test_renewed_slots_outlive_their_first_ttl(transport: Transport) -> None:
    assert transport.acquire_slot("k", "h", 1, 0.3) is None
    for _ in range(3):
        time.sleep(0.15)
        assert transport.renew_slots([("k", "h")], 0.3) == [True]
    assert transport.acquire_slot("k", "other", 1, 0.3) is not None
    assert transport.renew_slots([], 1.0) == []
    transport.release_slots([])


@pytest.mark.parametrize(
    ("limit", "ttl", "error"),
    [(0, 1.0, ValueError), ("2", 1.0, TypeError), (True, 1.0, TypeError), (1, 0, ValueError)],
)
def test_acquire_slot_refuses_bad_arguments(
    transport: Transport, limit: object, ttl: float, error: type[Exception]
) -> None:
    with pytest.raises(error):
        transport.acquire_slot("k", "h", limit, ttl)  # type: ignore[arg-type]


# -- defer -------------------------------------------------------------------------------------


def test_defer_hands_back_until_due_without_counting(transport: Transport) -> None:
    message_id = transport.publish(Q, b"later")
    delivery = fetch_one(transport)
    assert transport.defer(delivery, time.time() + 0.3) is True
    assert transport.fetch([Q]) == []
    assert transport.size(Q) == 1
    again = fetch_one(transport, timeout=2.0)
    assert again.message_id == message_id
    assert again.deliveries == 1  # handed back unstarted: not a delivery
    assert transport.defer(delivery, time.time()) is False  # the old lease is gone
    assert transport.ack(again) is True


def test_defer_to_now_is_deliverable_at_once(transport: Transport) -> None:
    transport.publish(Q, b"x")
    assert transport.defer(fetch_one(transport), time.time() - 1) is True
    assert fetch_one(transport).deliveries == 1


def test_a_released_slot_wakes_the_longest_waiting_message(make_transport: MakeTransport) -> None:
    producer, worker = make_transport(), make_transport()
    assert worker.acquire_slot("k", "running", 1, 30.0) is None
    ids = [producer.publish(Q, b"%d" % i) for i in range(3)]
    for delivery in worker.fetch([Q], limit=3):
        assert worker.defer(delivery, time.time() + 60, waiting_on="k") is True
    assert worker.fetch([Q]) == []

    producer.release_slots([("k", "running")])
    woken = fetch_one(worker, timeout=2.0)
    assert woken.message_id == ids[0]
    assert worker.fetch([Q]) == []  # one slot freed: one message woken
    assert woken.deliveries == 1

    # Woken again and waiting again: it keeps its place at the front of the line.
    assert worker.defer(woken, time.time() + 60, waiting_on="k") is True
    producer.release_slots([("k", "nobody")])
    assert fetch_one(worker, timeout=2.0).message_id == ids[0]


def test_waiting_messages_that_are_gone_are_skipped(transport: Transport) -> None:
    first_id, second_id = transport.publish(Q, b"a"), transport.publish(Q, b"b")
    first, second = transport.fetch([Q], limit=2)
    transport.defer(first, time.time() + 0.1, waiting_on="k")
    transport.defer(second, time.time() + 60, waiting_on="k")
    taken = fetch_one(transport, timeout=2.0)  # its due time came: no longer waiting
    assert taken.message_id == first_id
    transport.ack(taken)
    transport.release_slots([("k", "h")])
    assert fetch_one(transport, timeout=2.0).message_id == second_id


# -- publish_unique -----------------------------------------------------------------------------


def test_publish_unique_publishes_once_while_the_message_lives(
    make_transport: MakeTransport,
) -> None:
    one, two = make_transport(), make_transport()
    message_id, published = one.publish_unique(Q, b"first", "task-1")
    assert published is True
    assert two.publish_unique(Q, b"second", "task-1") == (message_id, False)
    assert one.size(Q) == 1

    delivery = fetch_one(one)
    assert delivery.body == b"first"
    assert two.publish_unique(Q, b"third", "task-1") == (message_id, False)  # running
    one.ack(delivery)
    new_id, published = two.publish_unique(Q, b"fourth", "task-1")
    assert published is True and new_id != message_id
    assert fetch_one(one).body == b"fourth"


def test_a_unique_key_is_freed_by_dead_letter_purge_and_complete(transport: Transport) -> None:
    transport.publish_unique(Q, b"a", "u")
    transport.dead_letter(fetch_one(transport), "poison")
    assert transport.publish_unique(Q, b"b", "u")[1] is True
    transport.purge(Q)
    assert transport.publish_unique(Q, b"c", "u")[1] is True
    transport.complete([(fetch_one(transport), ("result-key", b"done", None))])
    assert transport.publish_unique(Q, b"d", "u")[1] is True


def test_a_redriven_dead_letter_does_not_take_its_key_back(transport: Transport) -> None:
    transport.publish_unique(Q, b"a", "u")
    dead = fetch_one(transport)
    transport.dead_letter(dead, "poison")
    later_id, _ = transport.publish_unique(Q, b"b", "u")
    assert transport.redrive(dead.message_id) is True
    assert transport.publish_unique(Q, b"c", "u") == (later_id, False)


def test_delayed_and_retried_messages_keep_their_key(transport: Transport) -> None:
    message_id, _ = transport.publish_unique(Q, b"a", "u", due=time.time() + 60, priority=5)
    assert transport.publish_unique(Q, b"b", "u") == (message_id, False)
    transport.publish_unique(Q, b"c", "v")
    delivery = fetch_one(transport)
    assert transport.retry(delivery, time.time() + 60) is True
    assert transport.publish_unique(Q, b"d", "v") == (delivery.message_id, False)


def test_publish_unique_checks_its_arguments(transport: Transport) -> None:
    with pytest.raises(ValueError, match="key"):
        transport.publish_unique(Q, b"x", "")
    with pytest.raises(TypeError, match="body"):
        transport.publish_unique(Q, "text", "u")  # type: ignore[arg-type]
    assert transport.size(Q) == 0
