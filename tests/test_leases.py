"""The lease keeper, in a thread and through its helper process, on a real SQLite broker."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import sqlite_url

from celeriac import Celeriac
from celeriac.transports.base import Delivery
from celeriac.worker.leases import LeaseKeeper

LEASE = 0.6


@dataclass
class Held:
    delivery: Delivery
    acked: bool = False
    slot: tuple[str, str] | None = None


@dataclass
class Owner:
    metrics: Any = None  # no Prometheus counters


@pytest.mark.parametrize("helper", [False, True], ids=["thread", "helper"])
def test_the_keeper_renews_what_is_held_and_drops_what_ended(
    tmp_path: Path, no_celeriac_env: None, helper: bool
) -> None:
    options = {"lease_timeout": LEASE}
    app = Celeriac("leases", broker=sqlite_url(tmp_path / "b.sqlite3"),
                   broker_transport_options=options)  # fmt: skip
    broker = app.broker
    broker.publish_many([("q", b"kept", None, 0), ("q", b"ended", None, 0)])
    keeper = LeaseKeeper(app, LEASE, Owner(), helper=helper)
    keeper.start()  # a helper takes a good part of a second: a worker fetches after it runs
    try:
        kept, ended = broker.fetch(["q"], limit=2, lease=LEASE)
        slot = ("slot:leases", kept.lease)
        assert broker.acquire_slot(*slot, 1, LEASE) is None
        assert keeper.where.startswith("helper process" if helper else "thread")
        keeper.hold([kept, ended])
        keeper.arrived([kept, ended])
        keeper.hold_slot(slot)
        keeper.update([Held(kept, slot=slot)])  # ``ended`` is no longer held
        time.sleep(4 * LEASE)  # a timed fault: leases not renewed in that time run out

        (again,) = broker.fetch(["q"], limit=2, lease=LEASE)
        assert (again.body, again.deliveries) == (b"ended", 2)
        assert broker.acquire_slot("slot:leases", "another", 1, LEASE) is not None
        assert broker.ack(kept)
    finally:
        keeper.close()
        app.close()
