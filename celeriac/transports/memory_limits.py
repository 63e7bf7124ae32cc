"""The limits of the memory engine: rate turns, concurrency slots, waiting messages, unique
keys (the contract is in ``base.py``). The state lives on one broker and is guarded by its
condition; the methods here only compute, ``memory.py`` moves the messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from celeriac.transports.base import TURN_GRACE

if TYPE_CHECKING:
    from celeriac.transports.memory import _Message


@dataclass(slots=True)
class Limits:
    """Everything the limits section of the contract keeps, for one memory broker."""

    #: rate key -> (the time the next turn is free, the interval the key was last used with)
    rates: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: rate key -> claim -> the time of the turn reserved for it
    turns: dict[str, dict[str, float]] = field(default_factory=dict)
    #: slot key -> holder -> when its slot runs out
    slots: dict[str, dict[str, float]] = field(default_factory=dict)
    #: slot key -> message ids waiting for a slot, longest-waiting first (a dict as a set)
    waiting: dict[str, dict[int, None]] = field(default_factory=dict)
    #: unique key -> the message that holds it (free once that message is gone; a redriven
    #: dead letter is a new message object, so it does not hold the key again)
    uniques: dict[str, _Message] = field(default_factory=dict)

    def throttle(self, key: str, interval: float, claim: str, now: float) -> float | None:
        """None to go now; else the time of the turn now reserved for ``claim``."""
        turns = self.turns.setdefault(key, {})
        reserved = turns.get(claim)
        if reserved is not None:
            if reserved <= now:
                del turns[claim]
                return None
            return reserved
        free_at, used_with = self.rates.get(key, (now, interval))
        if used_with != interval:  # the limit changed: start over, without an early turn
            turns.clear()
            free_at = min(free_at, now + interval)
        for stale in [c for c, at in turns.items() if at < now - TURN_GRACE]:
            del turns[stale]
        if free_at <= now:
            self.rates[key] = (now + interval, interval)
            return None
        turns[claim] = free_at
        self.rates[key] = (free_at + interval, interval)
        return free_at

    def acquire(self, key: str, holder: str, limit: int, ttl: float, now: float) -> float | None:
        """None when ``holder`` holds a slot of ``key``; else when the soonest slot runs out."""
        held = self._live(key, now)
        if holder in held or len(held) < limit:
            held[holder] = now + ttl
            return None
        return min(held.values())

    def renew(self, key: str, holder: str, ttl: float, now: float) -> bool:
        """Renew one slot; False if it ran out (or was freed) meanwhile."""
        held = self._live(key, now)
        if holder not in held:
            return False
        held[holder] = now + ttl
        return True

    def release(self, key: str, holder: str) -> list[int]:
        """Free one slot; the ids waiting on ``key``, longest-waiting first, to wake one of."""
        self.slots.get(key, {}).pop(holder, None)
        return list(self.waiting.get(key, {}))

    def wait(self, key: str, message_id: int) -> None:
        """Note that a message waits for a slot of ``key`` (keeping its place if it was)."""
        self.waiting.setdefault(key, {}).setdefault(message_id, None)

    def stop_waiting(self, key: str, message_id: int) -> None:
        """Forget a waiting message (woken, or gone)."""
        waiting = self.waiting.get(key)
        if waiting is not None:
            waiting.pop(message_id, None)
            if not waiting:
                del self.waiting[key]

    def _live(self, key: str, now: float) -> dict[str, float]:
        """The slots of ``key`` that have not run out."""
        held = self.slots.setdefault(key, {})
        for gone in [h for h, until in held.items() if until <= now]:
            del held[gone]
        return held

    def unique_holder(self, key: str, messages: Mapping[int, _Message]) -> _Message | None:
        """The live message that holds ``key``, if any."""
        holder = self.uniques.get(key)
        if holder is not None and messages.get(holder.id) is holder:
            return holder
        return None

    def sweep_uniques(self, messages: Mapping[int, _Message]) -> None:
        """Drop unique keys whose message is gone (acknowledged, dead-lettered or purged)."""
        for key in [k for k, m in self.uniques.items() if messages.get(m.id) is not m]:
            del self.uniques[key]
