"""The dead-letter part of the transport contract, on every engine: the detail a failed delivery
records (a dead pool process's exit code and pids), counting and purging dead letters."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from celeriac.transports import Transport

MakeTransport = Callable[..., Transport]
Q = "tasks"

CRASH = {"cause": "signal 9 (SIGKILL)", "signal": 9, "pid": 4242, "worker_pid": 4200,
         "hostname": "w1@host", "nested": {"list": [1, "two", None]}}  # fmt: skip


def fetch_one(transport: Transport) -> Any:
    [delivery] = transport.fetch([Q])
    return delivery


def test_release_detail_is_kept_in_every_failed_delivery(make_transport: MakeTransport) -> None:
    transport = make_transport(max_deliveries=2)
    transport.publish(Q, b"crashes")
    assert transport.release(fetch_one(transport), "worker_lost", {**CRASH, "pid": 1}) is True
    assert transport.release(fetch_one(transport), "worker_lost", {**CRASH, "pid": 2}) is True

    [letter] = transport.dead_letters()
    assert letter.reason == "worker_lost"
    assert [entry["event"] for entry in letter.history] == ["released", "released"]
    assert [entry["detail"] for entry in letter.history] == [
        {**CRASH, "pid": 1},
        {**CRASH, "pid": 2},
    ]


def test_dead_letter_detail_and_no_detail(transport: Transport) -> None:
    transport.publish(Q, b"one")
    transport.publish(Q, b"two")
    first, second = transport.fetch([Q], limit=2)
    assert transport.dead_letter(first, "bad_signature", {"signer": "unknown"}) is True
    assert transport.dead_letter(second, "unknown_task") is True

    by_body = {letter.body: letter for letter in transport.dead_letters()}
    assert by_body[b"one"].history[-1]["detail"] == {"signer": "unknown"}
    assert "detail" not in by_body[b"two"].history[-1]


def test_release_without_a_reason_records_nothing(transport: Transport) -> None:
    transport.publish(Q, b"again")
    assert transport.release(fetch_one(transport), None, None) is True
    assert fetch_one(transport).deliveries == 1


@pytest.mark.parametrize("detail", [["not", "a", "dict"], {"bad": object()}, {"x": math.nan}])
def test_a_detail_that_is_not_a_json_object_is_refused(transport: Transport, detail: Any) -> None:
    transport.publish(Q, b"body")
    delivery = fetch_one(transport)
    with pytest.raises(TypeError, match="detail"):
        transport.release(delivery, "worker_lost", detail)
    with pytest.raises(TypeError, match="detail"):
        transport.dead_letter(delivery, "rejected", detail)
    assert transport.ack(delivery) is True  # the refused calls changed nothing


def test_count_and_purge_dead_letters(transport: Transport) -> None:
    assert (transport.dead_letter_count(), transport.purge_dead_letters()) == (0, 0)
    for index in range(3):
        transport.publish(Q, f"poison {index}".encode())
    transport.publish(Q, b"healthy")
    for delivery in transport.fetch([Q], limit=3):
        assert transport.dead_letter(delivery, "rejected") is True
    assert transport.dead_letter_count() == 3

    assert transport.purge_dead_letters() == 3
    assert (transport.dead_letter_count(), transport.dead_letters()) == (0, [])
    assert transport.purge_dead_letters() == 0
    assert fetch_one(transport).body == b"healthy"  # live messages are untouched


def test_a_purged_dead_letter_cannot_be_redriven(transport: Transport) -> None:
    message_id = transport.publish(Q, b"gone")
    transport.dead_letter(fetch_one(transport), "rejected")
    transport.purge_dead_letters()
    assert transport.redrive(message_id) is False
    assert transport.fetch([Q]) == []
    assert transport.size(Q) == 0
