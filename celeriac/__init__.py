"""celeriac: a distributed task queue with Celery's programming model."""

__version__ = "0.1.0"

from celeriac import states
from celeriac.app import Celeriac, current_app, shared_task
from celeriac.errors import (
    CeleriacError,
    Ignore,
    MaxRetriesExceededError,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
    TaskError,
    TimeLimitExceeded,
)
from celeriac.result import AsyncResult
from celeriac.task import Task

__all__ = [
    "AsyncResult",
    "Celeriac",
    "CeleriacError",
    "Ignore",
    "MaxRetriesExceededError",
    "Reject",
    "Retry",
    "SoftTimeLimitExceeded",
    "Task",
    "TaskError",
    "TimeLimitExceeded",
    "__version__",
    "current_app",
    "shared_task",
    "states",
]
