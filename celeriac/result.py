"""AsyncResult and GroupResult: handles on tasks' states and return values, with Celery's API."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from celeriac import states
from celeriac.backend import decode_exception
from celeriac.errors import MessageError, TaskRevokedError, TimeoutError

if TYPE_CHECKING:
    from celeriac.app import Celeriac

R = TypeVar("R")


class AsyncResult(Generic[R]):
    """The state and result of one task, read from the app's result store."""

    def __init__(
        self,
        id: str,
        app: Celeriac | None = None,
        task_name: str | None = None,
        parent: AsyncResult[Any] | GroupResult | None = None,
    ) -> None:
        if not isinstance(id, str) or not id:
            raise ValueError(f"a task id must be a non-empty string, not {id!r}")
        if app is None:
            from celeriac.app import current_app

            app = current_app()
        self.id = id
        self.app = app
        self.task_name = task_name
        #: the result of the step before this one in a chain (``result.parent.get()``)
        self.parent = parent
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
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                return None
        if not isinstance(value, datetime):
            return None
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)

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
        on_message: Callable[[dict[str, Any]], None] | None = None,
    ) -> R:
        """Wait for the task to finish and return its result (or raise its error).

        ``on_message`` is called with the task's stored meta (``status``, ``result``, ...) each
        time it is seen to change, the final state included: a progress bar's hook.
        """
        if disable_sync_subtasks:
            _refuse_inside_task()
        if self._meta is not None and on_message is not None:
            on_message(self._meta)
        meta = self._meta or self.app.results.wait_ready(self.id, timeout, interval, on_message)
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

    def revoke(self, terminate: bool = False, signal: str | int = "SIGTERM") -> None:
        """Ask workers not to run this task; with ``terminate``, stop it if it runs."""
        self.app.control.revoke(self.id, terminate=terminate, signal=signal)

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
        on_message: Callable[[dict[str, Any]], None] | None = None,
    ) -> R:
        """The value the task returned; re-raises its exception when ``propagate``."""
        if on_message is not None:
            on_message(self._get_meta())
        value = self.result
        if propagate and self.state in states.PROPAGATE_STATES and isinstance(value, Exception):
            raise value
        return value  # type: ignore[no-any-return]

    wait = get

    def forget(self) -> None:
        """Nothing is stored for an eager result."""


class GroupResult:
    """The results of a group's tasks, in call order."""

    def __init__(
        self,
        id: str,
        results: list[AsyncResult[Any]],
        app: Celeriac | None = None,
        parent: AsyncResult[Any] | GroupResult | None = None,
    ) -> None:
        if app is None:
            from celeriac.app import current_app

            app = current_app()
        self.id = id
        self.results = list(results)
        self.app = app
        self.parent = parent

    @property
    def children(self) -> list[AsyncResult[Any]]:
        """The member results (Celery's name)."""
        return self.results

    def ready(self) -> bool:
        """True once every task has finished."""
        return all(result.ready() for result in self.results)

    def successful(self) -> bool:
        """True if every task succeeded."""
        return all(result.successful() for result in self.results)

    def failed(self) -> bool:
        """True if any task failed."""
        return any(result.failed() for result in self.results)

    def waiting(self) -> bool:
        """True while any task has not finished."""
        return not self.ready()

    def completed_count(self) -> int:
        """How many tasks succeeded."""
        return sum(1 for result in self.results if result.successful())

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        disable_sync_subtasks: bool = True,
    ) -> list[Any]:
        """Wait for every task and return their results in call order; ``timeout`` is for all."""
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for result in self.results:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            values.append(result.get(left, propagate, interval, disable_sync_subtasks))
        return values

    join = get

    def save(self) -> GroupResult:
        """Store the member ids, so that ``GroupResult.restore(id)`` finds the group later."""
        store = self.app.results
        data = {"group_id": self.id, "results": [result.id for result in self.results]}
        store.transport.put(group_key(self.id), store.encode(data), store.expires)
        return self

    @classmethod
    def restore(cls, id: str, app: Celeriac | None = None) -> GroupResult | None:
        """The group saved under ``id``, or None."""
        if app is None:
            from celeriac.app import current_app

            app = current_app()
        raw = app.results.transport.get(group_key(id))
        if raw is None:
            return None
        ids = app.results.decode(raw).get("results")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise MessageError("bad_shape", f"saved group {id}: results is not a list of ids")
        return cls(id, [AsyncResult(task_id, app) for task_id in ids], app)

    def delete(self) -> None:
        """Remove the saved group (not its tasks' results)."""
        self.app.results.transport.delete(group_key(self.id))

    def forget(self) -> None:
        """Delete the saved group and every task's stored result."""
        for result in self.results:
            result.forget()
        self.delete()

    def revoke(
        self,
        connection: Any = None,
        terminate: bool = False,
        signal: str | int | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Ask workers not to run the group's tasks; with ``terminate``, stop those running.

        One revoke request for every member (stored in the broker, as ``AsyncResult.revoke``
        does); ``wait`` waits up to ``timeout`` seconds for the workers' replies.
        ``connection`` is accepted for Celery compatibility and not used.
        """
        ids = [result.id for result in self.results]
        if not ids:
            return
        self.app.control.revoke(
            ids, terminate=terminate, signal=signal or "SIGTERM", reply=wait,
            timeout=timeout or 1.0,
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[AsyncResult[Any]]:
        return iter(self.results)

    def __getitem__(self, index: int) -> AsyncResult[Any]:
        return self.results[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, GroupResult):
            return self.id == other.id and self.results == other.results
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{', '.join(r.id for r in self.results)}]>"


def group_key(group_id: str) -> str:
    """The key a saved group is kept under."""
    return f"celeriac-group-meta-{group_id}"


def _refuse_inside_task() -> None:
    """Waiting on a result from inside a task can deadlock a worker; Celery refuses too."""
    from celeriac.task import current_request

    request = current_request()
    if request is not None and not request.is_eager:
        raise RuntimeError(
            "Never call result.get() within a task: it can deadlock the worker. "
            "Use a chain or a callback, or pass disable_sync_subtasks=False."
        )
