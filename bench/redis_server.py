"""A private ``redis-server`` for the benchmark: a free port, a temporary directory."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class BenchRedis:
    """Starts on enter, stops on exit; ``url`` is where it listens."""

    def __init__(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise SystemExit("the redis engine needs redis-server (apt-get install redis-server)")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.directory = Path(tempfile.mkdtemp(prefix="celeriac-bench-redis-"))
        self.command = [
            executable, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
            str(self.directory), "--save", "", "--appendonly", "no",
        ]  # fmt: skip
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> BenchRedis:
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)
