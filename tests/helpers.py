"""Helpers for tests that run real worker processes: start, watch the log, always stop.

No fixed sleeps: everything waits on a condition with a deadline (``wait_until``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

#: Environment variables that would redirect an app away from the broker a test chose (or
#: give it a control key the test did not).
CELERIAC_ENV = ("CELERIAC_BROKER_URL", "CELERIAC_RESULT_BACKEND", "CELERIAC_CONTROL_KEY")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, message: str = "condition") -> T:
    """Call ``predicate`` until it returns something true; its value, or AssertionError."""
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def sqlite_url(path: Path) -> str:
    """The broker URL for a SQLite file at an absolute path."""
    return f"sqlite:///{path.resolve()}"


def write_module(directory: Path, name: str, source: str) -> Path:
    """Write ``name.py`` into ``directory`` (dedented); returns its path."""
    path = directory / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without celeriac overrides, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in CELERIAC_ENV}
    env.update(extra)
    return env


def run_cli(
    args: Sequence[str], cwd: Path, timeout: float = 30.0, stdin: int | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m celeriac ARGS`` in ``cwd`` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "celeriac", *args],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL if stdin is None else stdin,
    )


class WorkerProcess:
    """A real ``python -m celeriac -A module worker ...`` process, its log in a file."""

    def __init__(self, app_module: str, args: Sequence[str], cwd: Path, log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        command = [
            sys.executable, "-m", "celeriac", "-A", app_module, "worker", "-l", "info", *args,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=clean_env(PYTHONUNBUFFERED="1"),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: teardown reaches its children
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        """Everything the worker (and its pool processes) wrote so far."""
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 15.0) -> str:
        """Wait until ``text`` appears in the log; fail early if the worker exits."""

        def seen() -> bool:
            if text in self.log():
                return True
            if self.process.poll() is not None:
                raise AssertionError(
                    f"worker exited with {self.process.returncode} before logging {text!r}:\n"
                    + self.log()
                )
            return False

        wait_until(seen, timeout, f"{text!r} in the worker log:\n{self.log()[-3000:]}")
        return self.log()

    def wait_ready(self, timeout: float = 20.0) -> WorkerProcess:
        """Wait for the worker's "ready." line."""
        self.wait_for_log(" ready.", timeout)
        return self

    def terminate(self) -> None:
        """Send SIGTERM (a graceful shutdown)."""
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 20.0) -> int:
        """Wait for the worker to exit; its exit code."""
        return self.process.wait(timeout)

    def stop(self) -> None:
        """Kill the worker and its pool processes (its process group) and close the log.

        Teardown does not need a graceful stop (tests that do send SIGTERM themselves), and
        a graceful stop costs about a second.
        """
        if self.process.poll() is None:  # not yet reaped: its group id is still ours
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        self._log.close()


def lines(ledger: Path, kind: str) -> list[list[str]]:
    """A ledger's lines of one kind, split into words (without the kind)."""
    if not ledger.exists():
        return []
    return [line.split()[1:] for line in ledger.read_text().splitlines() if line.split()[0] == kind]


def ok(done: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit code 0, every fragment in stdout; returns stdout."""
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    for fragment in fragments:
        assert fragment in done.stdout, (fragment, done.stdout)
    return done.stdout


def failed(done: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    """Exit code ``code``, every fragment in stderr or stdout, no traceback."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr
    for fragment in fragments:
        assert fragment in done.stdout + done.stderr, (fragment, done.stdout, done.stderr)
