"""celeriac: a distributed task queue with Celery's programming model."""

__version__ = "0.1.0"

from celeriac import states
from celeriac.app import Celeriac, current_app, shared_task
from celeriac.canvas import Signature, chain, chord, chunks, group, signature
from celeriac.errors import (
    CeleriacError,
    ChordError,
    Ignore,
    MaxRetriesExceededError,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
    TaskError,
    TimeLimitExceeded,
)
from celeriac.result import AsyncResult, GroupResult
from celeriac.task import Task

__all__ = [
    "AsyncResult",
    "Celeriac",
    "CeleriacError",
    "ChordError",
    "GroupResult",
    "Ignore",
    "MaxRetriesExceededError",
    "Reject",
    "Retry",
    "Signature",
    "SoftTimeLimitExceeded",
    "Task",
    "TaskError",
    "TimeLimitExceeded",
    "__version__",
    "chain",
    "chord",
    "chunks",
    "current_app",
    "group",
    "shared_task",
    "signature",
    "states",
]
