"""AsyncResult: a handle on a task's state and return value, with Celery's API."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from celeriac import states
from celeriac.backend import decode_exception
from celeriac.errors import TaskRevokedError, TimeoutError

if TYPE_CHECKING:
    from celeriac.app import Celeriac

R = TypeVar("R")


class AsyncResult(Generic[R]):
    """The state and result of one task, read from the app's result store."""

    def __init__(self, id: str, app: Celeriac | None = None, task_name: str | None = None) -> None:
        if not isinstance(id, str) or not id:
            raise ValueError(f"a task id must be a non-empty string, not {id!r}")
        if app is None:
            from celeriac.app import current_app

            app = current_app()
        self.id = id
        self.app = app
        self.task_name = task_name
        self._meta: dict[str, Any] | None = None

    # -- reading ------------------------------------------------------------------------

    def _get_meta(self) -> dict[str, Any]:
        if self._meta is not None:
            return self._meta
        meta = self.app.results.get_meta(self.id)
        if meta.get("status") in states.READY_STATES:
            self._meta = meta  # a ready state never changes: stop asking the store
        return meta

    @property
    def state(self) -> str:
        """The task's state: PENDING, STARTED, SUCCESS, FAILURE, RETRY, REVOKED or custom."""
        return str(self._get_meta().get("status", states.PENDING))

    status = state

    @property
    def result(self) -> Any:
        """The return value, the exception of a failure, or the meta of a custom state."""
        meta = self._get_meta()
        if meta.get("status") in states.EXCEPTION_STATES:
            return decode_exception(meta.get("result"), meta.get("traceback"))
        return meta.get("result")

    info = result

    @property
    def traceback(self) -> str | None:
        """The remote traceback text of a failure."""
        value = self._get_meta().get("traceback")
        return str(value) if value is not None else None

    @property
    def date_done(self) -> datetime | None:
        """When the task reached a ready state."""
        value = self._get_meta().get("date_done")
        return value if isinstance(value, datetime) else None

    @property
    def name(self) -> str | None:
        """The task's name, when the store knows it."""
        return self._get_meta().get("name") or self.task_name

    @property
    def args(self) -> list[Any] | None:
        """Positional arguments (stored when result_extended is on)."""
        return self._get_meta().get("args")

    @property
    def kwargs(self) -> dict[str, Any] | None:
        """Keyword arguments (stored when result_extended is on)."""
        return self._get_meta().get("kwargs")

    @property
    def retries(self) -> int | None:
        """How many times the task was retried."""
        return self._get_meta().get("retries")

    @property
    def worker(self) -> str | None:
        """The hostname of the worker that ran the task."""
        return self._get_meta().get("worker")

    @property
    def queue(self) -> str | None:
        """The queue the task was delivered from."""
        return self._get_meta().get("queue")

    def ready(self) -> bool:
        """True once the task succeeded, failed or was revoked."""
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        """True if the task succeeded."""
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        """True if the task failed."""
        return self.state == states.FAILURE

    # -- waiting ------------------------------------------------------------------------

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        disable_sync_subtasks: bool = True,
    ) -> R:
        """Wait for the task to finish and return its result (or raise its error)."""
        if disable_sync_subtasks:
            _refuse_inside_task()
        meta = self._meta or self.app.results.wait_ready(self.id, timeout, interval)
        if meta is None:
            raise TimeoutError(f"task {self.id} did not finish within {timeout}s")
        self._meta = meta
        status = meta.get("status")
        if status == states.SUCCESS:
            value: R = meta["result"]
            return value
        error = self.result
        if propagate:
            if status == states.REVOKED:
                raise TaskRevokedError(f"task {self.id} was revoked: {error}")
            raise error
        return error  # type: ignore[no-any-return]

    wait = get

    def forget(self) -> None:
        """Delete the stored result."""
        self._meta = None
        self.app.results.forget(self.id)

    # -- identity -----------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.id}>"

    def __str__(self) -> str:
        return self.id

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return self.id == other.id
        if isinstance(other, str):
            return self.id == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)


class EagerResult(AsyncResult[R]):
    """The result of a task run in-process (``apply()`` or eager mode); nothing is stored."""

    def __init__(
        self,
        id: str,
        meta: dict[str, Any],
        app: Celeriac | None = None,
        task_name: str | None = None,
    ) -> None:
        super().__init__(id, app, task_name)
        self._meta = meta

    def _get_meta(self) -> dict[str, Any]:
        assert self._meta is not None
        return self._meta

    @property
    def result(self) -> Any:
        """The return value, or the exception the task raised (the original object)."""
        return self._get_meta().get("result")

    info = result

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        disable_sync_subtasks: bool = True,
    ) -> R:
        """The value the task returned; re-raises its exception when ``propagate``."""
        value = self.result
        if propagate and self.state in states.PROPAGATE_STATES and isinstance(value, Exception):
            raise value
        return value  # type: ignore[no-any-return]

    wait = get

    def forget(self) -> None:
        """Nothing is stored for an eager result."""


def _refuse_inside_task() -> None:
    """Waiting on a result from inside a task can deadlock a worker; Celery refuses too."""
    from celeriac.task import current_request

    request = current_request()
    if request is not None and not request.is_eager:
        raise RuntimeError(
            "Never call result.get() within a task: it can deadlock the worker. "
            "Use a chain or a callback, or pass disable_sync_subtasks=False."
        )
