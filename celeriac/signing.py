"""HMAC-SHA256 signatures for remote control, on when ``control_signing_key`` is set.

A signed message is a JSON object with one more field, ``"signature"``: the hex HMAC-SHA256,
under the shared key, of the object's canonical JSON without that field (keys sorted, no
spaces, ASCII). Requests carry their send time (``sent``); a worker refuses a request sent
more than ``MAX_AGE`` seconds away from its own clock, and a request id it has already seen
within that window, so a recorded command cannot be played again. Replies are signed the
same way, and a client with the key refuses a reply without a valid signature.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
from typing import Any

#: Seconds a signed request stays valid, either side of the receiver's clock.
MAX_AGE = 60.0
FIELD = "signature"


def _canonical(message: dict[str, Any]) -> bytes:
    unsigned = {k: v for k, v in message.items() if k != FIELD}
    text = json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return text.encode("ascii")


def signature(message: dict[str, Any], key: str) -> str:
    """The hex HMAC-SHA256 of ``message`` (its signature field left out) under ``key``."""
    return hmac.new(key.encode(), _canonical(message), hashlib.sha256).hexdigest()


def sign(message: dict[str, Any], key: str) -> dict[str, Any]:
    """``message`` with its signature added."""
    return {**message, FIELD: signature(message, key)}


def signature_problem(message: dict[str, Any], key: str) -> str | None:
    """Why ``message`` is not signed with ``key``, or None when it is."""
    given = message.get(FIELD)
    if not isinstance(given, str) or not given:
        return "it is not signed"
    try:
        expected = signature(message, key)
    except (TypeError, ValueError):
        return "it cannot be signed (not plain JSON)"
    if not hmac.compare_digest(given, expected):
        return "its signature is wrong (another key?)"
    return None


class RequestCheck:
    """Checks signed requests on a worker: signature, age, and never the same request twice."""

    def __init__(self, key: str, max_age: float = MAX_AGE) -> None:
        self.key = key
        self.max_age = max_age
        self._seen: dict[str, float] = {}  # request id -> when it was sent

    def problem(self, request: dict[str, Any], now: float | None = None) -> str | None:
        """Why ``request`` must be refused, or None; an accepted request's id is remembered."""
        found = signature_problem(request, self.key)
        if found is not None:
            return found
        now = time.time() if now is None else now
        sent, request_id = request.get("sent"), request.get("id")
        if isinstance(sent, bool) or not isinstance(sent, int | float) or not math.isfinite(sent):
            return "it carries no send time"
        if abs(now - sent) > self.max_age:
            return (f"it was sent {now - sent:.0f} s from this worker's clock "
                    f"(the limit is {self.max_age:g} s: a replay, or clocks apart)")  # fmt: skip
        if not isinstance(request_id, str) or request_id in self._seen:
            return "it was received before (a replay)"
        self._forget_older_than(now - self.max_age)
        self._seen[request_id] = float(sent)
        return None

    def _forget_older_than(self, oldest: float) -> None:
        for request_id, sent in list(self._seen.items()):
            if sent < oldest:
                del self._seen[request_id]
