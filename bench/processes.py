"""Starting and measuring worker processes for the benchmark."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def start_worker(
    url: str, pool: str, concurrency: int, log: Path, *extra: str
) -> subprocess.Popen[bytes]:
    """A real worker process on ``url`` in its own process group, logging to ``log``."""
    env = dict(os.environ, CELERIAC_BROKER_URL=url, PYTHONPATH=str(HERE))
    env.pop("CELERIAC_RESULT_BACKEND", None)
    command = [
        sys.executable, "-m", "celeriac", "-A", "benchtasks", "worker", "-P", pool,
        "-c", str(concurrency), "-l", "warning", "--logfile", str(log), *extra,
    ]  # fmt: skip
    return subprocess.Popen(
        command, env=env, cwd=log.parent, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def wait_ready(app: Any, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Wait until the worker has run one task (it logs nothing below WARNING)."""
    result = app.tasks["benchtasks.noop"].delay(0)
    try:
        result.get(timeout=timeout)
    except Exception as exc:
        code = process.poll()
        raise RuntimeError(f"worker not ready (exit code {code}): {exc}") from exc


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL the whole group if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def group_rss_kib(leader: int) -> list[int]:
    """RSS (KiB) of every process in ``leader``'s process group."""
    sizes = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) != leader:  # field 5 of stat: the process group id
                continue
            status = (entry / "status").read_text()
        except (OSError, IndexError, ValueError):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                sizes.append(int(line.split()[1]))
    return sizes
