"""A bounded, recent history kept in broker keys: the last N entries of a named log.

Events and revocations are broadcast on topics, which only reach the listeners of the moment.
A ``History`` keeps the most recent entries as well, so that a monitor or a worker started
later still sees what just happened. It needs nothing but the transport's keys:

    <name>-seq          a counter; ``incr`` hands each entry its sequence number n
    <name>-<n % length> the entry: b"<n>\\n" + body, expiring after ``age`` seconds

Slots are reused round the ring; a reader checks the number stored in a slot, so an entry
that was overwritten (or that belongs to an older turn of the counter) is never read twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from celeriac.transports.base import Transport


class History:
    """The last ``length`` entries of the log ``name``, each kept at most ``age`` seconds."""

    def __init__(self, transport: Transport, name: str, length: int, age: float) -> None:
        self.transport = transport
        self.name = name
        self.length = length
        self.age = age

    def append(self, body: bytes) -> int:
        """Add an entry; returns its sequence number (0 when the history keeps nothing)."""
        if self.length <= 0:
            return 0
        seq = self.transport.incr(f"{self.name}-seq")
        self.transport.put(self._slot(seq), f"{seq}\n".encode() + body, self.age)
        return seq

    def read(self) -> list[tuple[int, bytes]]:
        """The entries still kept, oldest first, as ``(sequence number, body)``."""
        if self.length <= 0:
            return []
        raw = self.transport.get(f"{self.name}-seq")
        last = int(raw) if raw is not None and raw.isdigit() else 0
        entries = []
        for seq in range(max(1, last - self.length + 1), last + 1):
            value = self.transport.get(self._slot(seq))
            if value is None:
                continue
            head, _, body = value.partition(b"\n")
            if head == str(seq).encode():
                entries.append((seq, body))
        return entries

    def _slot(self, seq: int) -> str:
        return f"{self.name}-{seq % self.length}"
