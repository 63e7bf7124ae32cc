"""The celeriac demo: a real worker process, 2,000 tasks, the embedded SQLite broker.

Run it with ``python3 dev.py demo``. It starts ``celeriac -A demo_tasks worker`` in a data
directory, sends the tasks with a progress bar, waits for every result, prints a summary and
stops the worker with SIGTERM (a graceful shutdown).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / ".demo"


def progress(label: str, done: int, total: int, started: float) -> None:
    """Draw a one-line progress bar on stderr."""
    width = 30
    filled = width * done // total
    rate = done / max(time.perf_counter() - started, 1e-9)
    bar = "#" * filled + "-" * (width - filled)
    end = "\n" if done == total else ""
    print(f"\r{label:<8} [{bar}] {done:>5}/{total} {rate:8.0f}/s", end=end, file=sys.stderr)


def start_worker(concurrency: int) -> subprocess.Popen[bytes]:
    """Start a real worker process in the data directory."""
    command = [
        sys.executable, "-m", "celeriac", "-A", "demo_tasks", "worker",
        "--loglevel=info", f"--concurrency={concurrency}", f"--logfile={DATA / 'worker.log'}",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(HERE))
    return subprocess.Popen(command, cwd=DATA, env=env)


def main() -> int:
    parser = argparse.ArgumentParser(description="celeriac demo")
    parser.add_argument("-n", "--tasks", type=int, default=2000)
    parser.add_argument("-c", "--concurrency", type=int, default=os.cpu_count() or 2)
    options = parser.parse_args()
    shutil.rmtree(DATA, ignore_errors=True)
    DATA.mkdir(parents=True)
    os.chdir(DATA)
    sys.path.insert(0, str(HERE))
    from demo_tasks import add, app, checked_sqrt

    worker = start_worker(options.concurrency)
    total = options.tasks
    started = time.perf_counter()
    results = []
    for i in range(total):
        # One task in a hundred asks for the root of a negative number: a failure on purpose.
        results.append(checked_sqrt.delay(-i) if i % 100 == 99 else add.delay(i, i))
        if i % 50 == 49 or i == total - 1:
            progress("sent", i + 1, total, started)
    failed = 0
    for i, result in enumerate(results):
        outcome = result.get(timeout=120, propagate=False)
        failed += isinstance(outcome, Exception)
        if i % 50 == 49 or i == total - 1:
            progress("done", i + 1, total, started)
    elapsed = time.perf_counter() - started
    worker.send_signal(signal.SIGTERM)
    code = worker.wait(timeout=60)
    print_summary(total, failed, elapsed, app.broker_url, code, options.concurrency)
    return 0 if code == 0 and failed == total // 100 else 1


def print_summary(
    total: int, failed: int, elapsed: float, url: str, code: int, concurrency: int
) -> None:
    """What happened, in a few lines."""
    print()
    print("celeriac demo")
    print(f"  processed   {total} tasks ({total - failed} succeeded, {failed} failed on purpose)")
    print(f"  time        {elapsed:.2f} s, send to last result")
    print(f"  throughput  {total / elapsed:.0f} tasks/s (1 worker, {concurrency} processes)")
    print(f"  broker      {url} -> {DATA / 'celeriac.sqlite3'}")
    print(f"  worker      stopped with SIGTERM, exit code {code}; its log: {DATA / 'worker.log'}")


if __name__ == "__main__":
    raise SystemExit(main())
