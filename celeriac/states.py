"""Task states, as Celery names them; custom states (``PROGRESS``, ...) are plain strings."""

from __future__ import annotations

PENDING = "PENDING"  #: unknown to the result store: queued, or never sent
RECEIVED = "RECEIVED"  #: a worker took the message
STARTED = "STARTED"  #: running (stored only when track_started is on)
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
RETRY = "RETRY"  #: failed, will run again later
REVOKED = "REVOKED"  #: revoked or expired; will not run
REJECTED = "REJECTED"  #: refused by the worker and dead-lettered

READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED, REJECTED})
UNREADY_STATES = frozenset({PENDING, RECEIVED, STARTED, RETRY})
EXCEPTION_STATES = frozenset({RETRY, FAILURE, REVOKED, REJECTED})
PROPAGATE_STATES = frozenset({FAILURE, REVOKED, REJECTED})
ALL_STATES = READY_STATES | UNREADY_STATES
