"""The transport contract: every engine passes these same tests (see conftest.py for engines).

Only tests of time itself (due times, leases, timeouts, key expiry) wait on the clock, with
short leases; everything else runs as fast as the engine answers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from celeriac.errors import TransportError
from celeriac.transports import Delivery, Subscription, Transport, open_transport

MakeTransport = Callable[..., Transport]
Q = "tasks"


def fetch_one(transport: Transport, timeout: float = 0.0, lease: float = 30.0) -> Delivery:
    """Fetch exactly one delivery from ``Q``."""
    deliveries = transport.fetch([Q], timeout=timeout, lease=lease)
    assert len(deliveries) == 1, deliveries
    return deliveries[0]


def later(seconds: float, action: Callable[[], object]) -> threading.Timer:
    """Run ``action`` on another thread after ``seconds``."""
    timer = threading.Timer(seconds, action)
    timer.start()
    return timer


def collect(
    subscription: Subscription, count: int, timeout: float = 5.0
) -> list[tuple[str, bytes]]:
    """Read from ``subscription`` until ``count`` items arrived or ``timeout`` passed."""
    items: list[tuple[str, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(items) < count and (left := deadline - time.monotonic()) > 0:
        items += subscription.get(timeout=left)
    return items


# -- queues: publish, fetch, ack ------------------------------------------------------------------


def test_publish_fetch_ack_roundtrip(transport: Transport) -> None:
    message_id = transport.publish(Q, b"hello", priority=3)
    assert isinstance(message_id, str)

    delivery = fetch_one(transport)
    assert delivery.queue == Q
    assert delivery.body == b"hello"
    assert delivery.message_id == message_id
    assert delivery.deliveries == 1
    assert delivery.priority == 3
    assert delivery.lease

    assert transport.fetch([Q]) == []
    assert transport.ack(delivery) is True
    assert transport.ack(delivery) is False
    assert transport.size(Q) == 0


def test_message_ids_are_unique(transport: Transport) -> None:
    ids = [transport.publish(Q, b"x") for _ in range(5)]
    ids += transport.publish_many([(Q, b"y", None, 0)] * 5)
    assert len(set(ids)) == 10


def test_a_publisher_publishes_to_its_queue_at_its_priority(transport: Transport) -> None:
    urgent, other = transport.publisher(Q, 7), transport.publisher("other")
    ids = [urgent(b"u1"), other(b"o1"), urgent(b"u2")]
    transport.publish(Q, b"p9", priority=9)
    transport.publish(Q, b"p0")
    deliveries = transport.fetch([Q], limit=10)
    assert [(d.body, d.priority) for d in deliveries] == [
        (b"p9", 9), (b"u1", 7), (b"u2", 7), (b"p0", 0),
    ]  # fmt: skip
    assert [d.message_id for d in deliveries[1:3]] == [ids[0], ids[2]]
    [delivery] = transport.fetch(["other"])
    assert (delivery.body, delivery.message_id, delivery.queue) == (b"o1", ids[1], "other")
    assert len(set(ids)) == 3


def test_fifo_within_a_priority(transport: Transport) -> None:
    transport.publish_many([(Q, b"%d" % i, None, 4) for i in range(10)])
    bodies = [d.body for d in transport.fetch([Q], limit=4)]
    bodies += [fetch_one(transport).body for _ in range(6)]
    assert bodies == [b"%d" % i for i in range(10)]


def test_higher_priority_first(transport: Transport) -> None:
    for priority in (0, 9, 5, 0, 9):
        transport.publish(Q, b"p%d" % priority, priority=priority)
    deliveries = transport.fetch([Q], limit=10)
    assert [d.priority for d in deliveries] == [9, 9, 5, 0, 0]
    assert transport.fetch([Q]) == []


def test_message_due_later_is_not_fetched_before_due(transport: Transport) -> None:
    due = time.time() + 0.3
    transport.publish(Q, b"later", due=due)
    transport.publish(Q, b"now")
    assert [d.body for d in transport.fetch([Q], limit=10)] == [b"now"]

    delivery = fetch_one(transport, timeout=3.0)
    assert delivery.body == b"later"
    assert time.time() >= due
    assert time.time() < due + 1.0


def test_due_in_the_past_is_fetched_at_once(transport: Transport) -> None:
    transport.publish(Q, b"overdue", due=time.time() - 60)
    assert fetch_one(transport).body == b"overdue"


def test_fetch_limit(transport: Transport) -> None:
    transport.publish_many([(Q, b"m", None, 0)] * 5)
    assert len(transport.fetch([Q], limit=3)) == 3
    assert len(transport.fetch([Q], limit=10)) == 2
    assert transport.fetch([Q], limit=10) == []


def test_fetch_from_several_queues(transport: Transport) -> None:
    transport.publish("a", b"a0")
    transport.publish("b", b"b5", priority=5)
    transport.publish("c", b"c9", priority=9)
    transport.publish("a", b"a1")
    deliveries = transport.fetch(["a", "b"], limit=10)
    assert [(d.queue, d.body) for d in deliveries] == [("b", b"b5"), ("a", b"a0"), ("a", b"a1")]
    assert [d.body for d in transport.fetch(["c"], limit=10)] == [b"c9"]


def test_fetch_timeout_returns_nothing_after_the_timeout(transport: Transport) -> None:
    start = time.monotonic()
    assert transport.fetch([Q], timeout=0.2) == []
    assert 0.19 <= time.monotonic() - start < 1.0


def test_fetch_wakes_when_another_thread_publishes(make_transport: MakeTransport) -> None:
    consumer, producer = make_transport(), make_transport()
    start = time.monotonic()
    later(0.1, lambda: producer.publish(Q, b"wake"))
    deliveries = consumer.fetch([Q], timeout=10.0)
    assert [d.body for d in deliveries] == [b"wake"]
    assert time.monotonic() - start < 2.0


# -- leases ---------------------------------------------------------------------------------------


def test_expired_lease_makes_message_deliverable_again(transport: Transport) -> None:
    transport.publish(Q, b"slow")
    start = time.monotonic()  # before the first fetch: the lease starts on the broker then
    first = fetch_one(transport, lease=0.2)
    second = fetch_one(transport, timeout=5.0)
    assert time.monotonic() - start >= 0.15
    assert second.message_id == first.message_id
    assert second.deliveries == 2
    assert second.lease != first.lease

    # The first holder lost the lease: everything it tries is refused.
    assert transport.ack(first) is False
    assert transport.extend([first], 30.0) == []
    assert transport.release(first) is False
    assert transport.release(first, "failed") is False
    assert transport.retry(first, None) is False
    assert transport.dead_letter(first, "bad") is False
    assert transport.ack(second) is True


def test_extend_keeps_the_lease_past_its_first_expiry(transport: Transport) -> None:
    transport.publish(Q, b"long")
    delivery = fetch_one(transport, lease=0.2)
    assert transport.extend([delivery], 5.0) == [delivery]
    assert transport.fetch([Q], timeout=0.4) == []
    assert transport.ack(delivery) is True


def test_extend_renews_exactly_the_leases_still_held(transport: Transport) -> None:
    transport.publish_many([(Q, b"%d" % i, None, 0) for i in range(3)])
    held, acked, released = transport.fetch([Q], limit=3, lease=0.3)
    assert transport.ack(acked) and transport.release(released)
    unknown = Delivery(Q, b"", "999999", "no-such-lease", 1)
    assert transport.extend([acked, held, unknown, released], 5.0) == [held]
    again = fetch_one(transport)  # the released one; the held one stays leased past 0.3 s
    assert again.message_id == released.message_id
    assert transport.fetch([Q], timeout=0.5) == []
    assert transport.extend([], 5.0) == []
    assert transport.ack(held) and transport.ack(again)


def test_release_without_reason_does_not_count(make_transport: MakeTransport) -> None:
    transport = make_transport(max_deliveries=2)
    transport.publish(Q, b"again")
    for _ in range(4):
        delivery = fetch_one(transport)
        assert delivery.deliveries == 1
        assert transport.release(delivery) is True
        assert transport.release(delivery) is False
    assert transport.dead_letters() == []


def test_release_with_reason_counts_and_dead_letters(make_transport: MakeTransport) -> None:
    transport = make_transport(max_deliveries=2)
    message_id = transport.publish(Q, b"flaky", priority=2)
    first = fetch_one(transport)
    assert transport.release(first, "crashed") is True
    second = fetch_one(transport)
    assert second.deliveries == 2
    assert transport.release(second, "crashed") is True
    assert transport.fetch([Q]) == []
    assert transport.size(Q) == 0

    [letter] = transport.dead_letters()
    assert (letter.message_id, letter.queue, letter.body) == (message_id, Q, b"flaky")
    assert (letter.reason, letter.deliveries) == ("crashed", 2)
    assert [e["deliveries"] for e in letter.history] == [1, 2]
    assert all(e["reason"] == "crashed" and e["at"] > 0 for e in letter.history)


def test_expired_leases_dead_letter_at_max_deliveries(make_transport: MakeTransport) -> None:
    transport = make_transport(max_deliveries=2)
    transport.publish(Q, b"poison")
    assert fetch_one(transport, lease=0.2).deliveries == 1
    assert fetch_one(transport, timeout=5.0, lease=0.2).deliveries == 2
    assert transport.fetch([Q], timeout=0.5) == []

    [letter] = transport.dead_letters()
    assert (letter.reason, letter.deliveries, letter.body) == ("lease_expired", 2, b"poison")
    assert [e["event"] for e in letter.history] == ["lease_expired", "lease_expired"]
    assert letter.history[-1]["deliveries"] == 2


def test_dead_letters_and_redrive(transport: Transport) -> None:
    first_id = transport.publish(Q, b"one", priority=7)
    second_id = transport.publish("other", b"two")
    assert transport.dead_letter(fetch_one(transport), "bad_shape") is True
    [second] = transport.fetch(["other"])
    assert transport.dead_letter(second, "unknown_task") is True
    assert transport.dead_letter(second, "unknown_task") is False

    letters = transport.dead_letters()
    assert [(d.message_id, d.reason) for d in letters] == [
        (second_id, "unknown_task"),
        (first_id, "bad_shape"),
    ]
    assert letters[0].dead_at >= letters[1].dead_at
    assert [d.message_id for d in transport.dead_letters(limit=1)] == [second_id]
    assert transport.size(Q) == 0

    assert transport.redrive(first_id) is True
    assert transport.redrive(first_id) is False
    assert transport.redrive("no-such-message") is False
    assert transport.redrive("987654321") is False
    again = fetch_one(transport)
    assert (again.body, again.priority, again.deliveries) == (b"one", 7, 1)
    assert [d.message_id for d in transport.dead_letters()] == [second_id]


def test_retry_with_new_body_and_due(transport: Transport) -> None:
    transport.publish(Q, b"v1")
    delivery = fetch_one(transport)
    due = time.time() + 0.3
    assert transport.retry(delivery, due, b"v2") is True
    assert transport.retry(delivery, due, b"v3") is False
    assert transport.fetch([Q]) == []
    assert transport.size(Q) == 1

    again = fetch_one(transport, timeout=3.0)
    assert time.time() >= due
    assert (again.body, again.deliveries) == (b"v2", 1)


def test_retry_resets_the_delivery_count(make_transport: MakeTransport) -> None:
    transport = make_transport(max_deliveries=2)
    transport.publish(Q, b"retried")
    for _ in range(3):
        delivery = fetch_one(transport)
        assert delivery.deliveries == 1
        assert transport.retry(delivery, None) is True
    assert fetch_one(transport).body == b"retried"


def test_size_and_purge_spare_leased_messages(transport: Transport) -> None:
    transport.publish_many([(Q, b"ready", None, 0)] * 3)
    transport.publish(Q, b"delayed", due=time.time() + 60)
    transport.publish("other", b"untouched")
    leased = fetch_one(transport)
    assert transport.size(Q) == 4

    assert transport.purge(Q) == 3
    assert transport.size(Q) == 1
    assert transport.fetch([Q]) == []
    assert transport.ack(leased) is True
    assert transport.size(Q) == 0
    assert transport.size("other") == 1
    assert transport.size("never-used") == 0


# -- keys -----------------------------------------------------------------------------------------


def test_keys_put_get_delete(transport: Transport) -> None:
    assert transport.get("k") is None
    transport.put("k", b"v1")
    assert transport.get("k") == b"v1"
    transport.put("k", b"v2")
    assert transport.get("k") == b"v2"
    transport.delete("k")
    assert transport.get("k") is None
    transport.delete("k")


def test_key_expires_after_its_ttl(transport: Transport) -> None:
    transport.put("short", b"v", ttl=0.2)
    transport.put("long", b"v", ttl=60)
    assert transport.get("short") == b"v"
    time.sleep(0.3)
    assert transport.get("short") is None
    assert transport.get("long") == b"v"
    transport.put("short", b"back")
    assert transport.get("short") == b"back"


def test_incr(transport: Transport) -> None:
    assert transport.incr("n") == 1
    assert transport.incr("n", 5) == 6
    assert transport.incr("n", -2) == 4
    assert transport.get("n") == b"4"
    transport.put("text", b"abc")
    with pytest.raises(ValueError):
        transport.incr("text")


def test_incr_keeps_or_sets_the_ttl(transport: Transport) -> None:
    assert transport.incr("n", ttl=0.2) == 1
    assert transport.incr("n") == 2
    time.sleep(0.3)
    assert transport.get("n") is None
    assert transport.incr("n") == 1


def test_concurrent_incr_adds_up(make_transport: MakeTransport) -> None:
    clients = [make_transport() for _ in range(4)]
    shared = clients[0]

    def bump(client: Transport) -> None:
        for _ in range(50):
            client.incr("counter")

    threads = [threading.Thread(target=bump, args=(c,)) for c in [*clients, shared, shared]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert shared.get("counter") == b"300"


def test_publish_once_publishes_a_batch_once_per_key(transport: Transport) -> None:
    items = [(Q, b"one", None, 0), (Q, b"two", time.time() + 60, 5)]
    ids = transport.publish_once("sent", items, ttl=60)
    assert ids is not None and len(set(ids)) == 2
    assert transport.get("sent") == b"1"
    assert transport.publish_once("sent", [(Q, b"again", None, 0)], ttl=60) is None
    assert transport.size(Q) == 2  # ready and delayed, nothing more
    assert fetch_one(transport).body == b"one"


def test_publish_once_again_after_the_key_expires(transport: Transport) -> None:
    assert transport.publish_once("brief", [(Q, b"first", None, 0)], ttl=0.2)
    time.sleep(0.3)
    assert transport.publish_once("brief", [(Q, b"second", None, 0)], ttl=0.2)
    assert transport.size(Q) == 2
    assert transport.publish_once("forever", [], ttl=None) == []  # no items: sets the key
    assert transport.publish_once("forever", [(Q, b"x", None, 0)]) is None


def test_publish_once_races_to_one_winner(make_transport: MakeTransport) -> None:
    clients = [make_transport() for _ in range(4)]
    won: list[list[str] | None] = []

    def race(client: Transport, name: str) -> None:
        won.append(client.publish_once("race", [(Q, name.encode(), None, 0)], ttl=60))

    threads = [threading.Thread(target=race, args=(c, f"c{i}")) for i, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(result is not None for result in won) == 1
    assert clients[0].size(Q) == 1


def test_publish_once_checks_everything_before_publishing(transport: Transport) -> None:
    with pytest.raises((TypeError, ValueError)):
        transport.publish_once("", [(Q, b"x", None, 0)])
    with pytest.raises((TypeError, ValueError)):
        transport.publish_once("k", [(Q, b"fine", None, 0), (Q, "not bytes", None, 0)])  # type: ignore[list-item]
    with pytest.raises((TypeError, ValueError)):
        transport.publish_once("k", [(Q, b"x", None, 0)], ttl=-1)
    assert transport.size(Q) == 0 and transport.get("k") is None  # nothing half done


def test_wait_returns_when_another_thread_puts_the_key(make_transport: MakeTransport) -> None:
    waiter, writer = make_transport(), make_transport()
    start = time.monotonic()
    later(0.1, lambda: writer.put("result", b"done"))
    assert waiter.wait("result", timeout=10.0) == b"done"
    assert time.monotonic() - start < 2.0
    assert waiter.wait("result", timeout=0) == b"done"


def test_wait_returns_none_after_the_timeout(transport: Transport) -> None:
    start = time.monotonic()
    assert transport.wait("missing", timeout=0.2) is None
    assert 0.19 <= time.monotonic() - start < 1.0


# -- topics ---------------------------------------------------------------------------------------


def test_listener_sees_only_broadcasts_after_it_opened(transport: Transport) -> None:
    transport.broadcast("events", b"before")
    with transport.listen(["events"]) as subscription:
        assert subscription.get(timeout=0) == []
        transport.broadcast("events", b"after")
        assert collect(subscription, 1) == [("events", b"after")]
        assert subscription.get(timeout=0.05) == []


def test_listener_of_two_topics(transport: Transport) -> None:
    with transport.listen(["events", "control"]) as subscription:
        transport.broadcast("events", b"e1")
        transport.broadcast("elsewhere", b"x")
        transport.broadcast("control", b"c1")
        transport.broadcast("events", b"e2")
        assert collect(subscription, 3) == [
            ("events", b"e1"),
            ("control", b"c1"),
            ("events", b"e2"),
        ]


def test_every_subscriber_gets_every_message(make_transport: MakeTransport) -> None:
    publisher = make_transport()
    first = make_transport().listen(["events"])
    second = make_transport().listen(["events"])
    later(0.05, lambda: [publisher.broadcast("events", b"%d" % i) for i in range(3)])
    expected = [("events", b"0"), ("events", b"1"), ("events", b"2")]
    assert collect(first, 3) == expected
    assert collect(second, 3) == expected
    first.close()
    second.close()


# -- bad input ------------------------------------------------------------------------------------


def test_unsupported_scheme_lists_the_supported_ones() -> None:
    with pytest.raises(TransportError) as error:
        open_transport("nosuch://host/0")
    assert "memory://" in str(error.value)
    assert "sqlite://" in str(error.value)


def test_a_string_that_is_not_a_url() -> None:
    with pytest.raises(TransportError, match="not a broker URL"):
        open_transport("localhost")


@pytest.mark.parametrize("priority", [-1, 10])
def test_priority_out_of_range(transport: Transport, priority: int) -> None:
    with pytest.raises(ValueError, match="priority"):
        transport.publish(Q, b"x", priority=priority)


def test_body_must_be_bytes(transport: Transport) -> None:
    with pytest.raises(TypeError, match="bytes"):
        transport.publish(Q, "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bytes"):
        transport.publish_many([(Q, b"ok", None, 0), (Q, None, None, 0)])  # type: ignore[list-item]
    assert transport.size(Q) == 0


def test_a_publisher_checks_its_queue_and_priority_at_once_and_each_body(
    transport: Transport,
) -> None:
    with pytest.raises(ValueError, match="priority"):
        transport.publisher(Q, 10)
    with pytest.raises(TypeError, match="priority"):
        transport.publisher(Q, "high")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="queue"):
        transport.publisher("")
    with pytest.raises(TypeError, match="queue"):
        transport.publisher(None)  # type: ignore[arg-type]
    publish = transport.publisher(Q)
    for body in ("text", None, bytearray(b"x")):
        with pytest.raises(TypeError, match="bytes"):
            publish(body)  # type: ignore[arg-type]
    assert transport.size(Q) == 0


def test_queue_must_be_a_non_empty_string(transport: Transport) -> None:
    with pytest.raises(ValueError, match="queue"):
        transport.publish("", b"x")
    with pytest.raises(TypeError, match="queue"):
        transport.publish(None, b"x")  # type: ignore[arg-type]


def test_fetch_arguments(transport: Transport) -> None:
    with pytest.raises(ValueError, match="limit"):
        transport.fetch([Q], limit=0)
    with pytest.raises(TypeError, match="queues"):
        transport.fetch(Q)
    with pytest.raises(ValueError, match="queue"):
        transport.fetch([])
    with pytest.raises(ValueError, match="lease"):
        transport.fetch([Q], lease=0)
