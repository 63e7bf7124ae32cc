"""celeriac: a distributed task queue with Celery's programming model."""

__version__ = "0.1.0"

from celeriac import states  # noqa: E402
from celeriac.app import Celeriac, current_app, shared_task  # noqa: E402
from celeriac.errors import (  # noqa: E402
    CeleriacError,
    Ignore,
    MaxRetriesExceededError,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
    TaskError,
    TimeLimitExceeded,
)
from celeriac.result import AsyncResult  # noqa: E402
from celeriac.task import Task  # noqa: E402

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
