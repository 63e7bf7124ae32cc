"""The example Django project (examples/django_tutorial), copied and driven by real processes.

Every command runs in a subprocess whose working directory is the copy, so Django's global
settings never leak between tests and the SQLite files (the Django database and the embedded
broker) land in the copy, never in the repository.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "django_tutorial"
PYTHON = sys.executable
POLL = 0.02


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without CELERIAC_* or DJANGO_SETTINGS_MODULE, plus ``extra``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("CELERIAC_") and name != "DJANGO_SETTINGS_MODULE"
    }
    env.update(PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    env.update(extra)
    return env


class ExampleProject:
    """A private copy of the example project."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def copy_to(cls, directory: Path) -> ExampleProject:
        """Copy the example (without caches or databases) into ``directory/project``."""
        root = directory / "project"
        ignore = shutil.ignore_patterns("__pycache__", "*.sqlite3", "*.sqlite3-*")
        shutil.copytree(EXAMPLE, root, ignore=ignore)
        return cls(root)

    def run(
        self, *args: str, env: dict[str, str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``python ARGS`` in the copy; fails the test on a non-zero exit when ``check``."""
        done = subprocess.run(
            [PYTHON, *args],
            cwd=self.root,
            env=env or clean_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"python {' '.join(args)} exited {done.returncode}\n"
                f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
            )
        return done

    def manage(self, *args: str) -> str:
        """``python manage.py ARGS``; its stdout."""
        return self.run("manage.py", *args).stdout

    def shell(self, code: str) -> str:
        """``python manage.py shell -c CODE``, as a reader types it; its stdout."""
        return self.manage("shell", "-c", code)

    def python(
        self, code: str, settings: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``python -c CODE`` in the copy, with ``DJANGO_SETTINGS_MODULE=settings`` if given."""
        env = clean_env(DJANGO_SETTINGS_MODULE=settings) if settings else clean_env()
        return self.run("-c", code, env=env, check=check)

    def add_settings(self, name: str, lines: str) -> str:
        """Write ``proj/<name>.py`` (the example settings plus ``lines``); its module path."""
        text = f"from proj.settings import *  # noqa: F403\n\n{lines}\n"
        (self.root / "proj" / f"{name}.py").write_text(text)
        return f"proj.{name}"

    def start_worker(self, app: str = "proj") -> WorkerProcess:
        """Start ``python -m celeriac -A APP worker --loglevel=info -c 1`` in the copy."""
        command = ["-m", "celeriac", "-A", app, "worker", "--loglevel=info", "-c", "1"]
        number = len(list(self.root.glob("worker-*.log"))) + 1
        return WorkerProcess(command, self.root, self.root / f"worker-{number}.log")


class WorkerProcess:
    """A worker process whose stdout and stderr go to one log file."""

    def __init__(self, args: list[str], cwd: Path, log: Path) -> None:
        self.log = log
        with log.open("wb") as handle:
            self.process = subprocess.Popen(
                [PYTHON, *args],
                cwd=cwd,
                env=clean_env(),
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: teardown reaches the pool children
            )

    def output(self) -> str:
        """Everything the worker has written so far."""
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """The first match of ``pattern`` in the log, polled until ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.output())
            if found:
                return found
            if self.process.poll() is not None:
                raise AssertionError(
                    f"worker exited {self.process.returncode} before logging {pattern!r}:\n"
                    f"{self.output()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} in {timeout}s; log:\n{self.output()}")
            time.sleep(POLL)

    def terminate(self, timeout: float = 10.0) -> int:
        """Send SIGTERM and wait for the exit code (TimeoutExpired past ``timeout``)."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """Kill the worker and any pool child it left behind (its whole process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


#: The ``start_worker`` fixture: ``start_worker(project, app="proj")``; killed at teardown.
StartWorker = Callable[..., WorkerProcess]
