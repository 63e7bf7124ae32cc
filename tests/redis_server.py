"""A real ``redis-server`` for tests: a free port, a temporary directory, stopped on teardown;
and a real Redis Cluster of several of them (``RedisClusterServers``).

The tests never use a Redis that happens to run on the machine. Without ``redis-server`` (or
``redis-cli``, for a cluster) the Redis tests are skipped, except under CI (``CI=true``), where
they fail: CI must install it. A server or cluster that does not start fails the test.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

#: Seconds a server gets to answer PING after it was started.
START_TIMEOUT = 10.0


def require_redis_server() -> str:
    """The path of ``redis-server``; skip the test without it (fail it under CI)."""
    path = shutil.which("redis-server")
    if path is None:
        message = (
            "redis-server is not installed; the Redis tests need it "
            "(apt-get install redis-server, or brew install redis)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


#: A Redis Cluster node talks to the others on its port plus this.
CLUSTER_BUS_OFFSET = 10000


def free_port(*, with_cluster_bus: bool = False) -> int:
    """A TCP port that nothing listens on right now; ``with_cluster_bus``: one that a Redis
    Cluster node can take, its bus port 10,000 higher (at most 65,535) free as well."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if not with_cluster_bus:
            return port
        if port + CLUSTER_BUS_OFFSET <= 65535 and _bindable(port + CLUSTER_BUS_OFFSET):
            return port


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class RedisServer:
    """One ``redis-server`` process in a directory of its own.

    ``appendonly=True`` turns on the append-only file with ``appendfsync always``, for tests
    that restart the server and expect every acknowledged write back. ``unixsocket=True``
    also listens on a socket in the directory; ``args`` adds raw ``redis-server`` arguments;
    ``cluster=True`` takes a port whose cluster bus port (10,000 higher) is usable too.
    """

    def __init__(
        self,
        *,
        appendonly: bool = False,
        unixsocket: bool = False,
        args: tuple[str, ...] = (),
        cluster: bool = False,
    ) -> None:
        self.executable = require_redis_server()
        self.directory = Path(tempfile.mkdtemp(prefix="celeriac-redis-"))
        self.cluster = cluster  # a cluster node: its bus port must be free too
        self.port = free_port(with_cluster_bus=cluster)
        self.appendonly = appendonly
        self.socket_path = self.directory / "redis.sock" if unixsocket else None
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None
        self.started = False

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        """The ``redis-server`` command line."""
        command = [self.executable, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--dir", str(self.directory), "--save", "", "--daemonize", "no"]
        if self.appendonly:
            command += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            command += ["--appendonly", "no"]
        if self.socket_path is not None:
            command += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        return [*command, *self.args]

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING.

        The first start moves to another port if someone took the free one meanwhile; a
        restart keeps its port, since clients reconnect to it.
        """
        for _ in range(3 if not self.started else 1):
            if self._launch():
                self.started = True
                return self
            if self.started:
                break
            self.port = free_port(with_cluster_bus=self.cluster)
        tail = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"redis-server did not start on port {self.port}:\n{tail}")

    def _launch(self) -> bool:
        """Run the server; whether it answered PING in time."""
        with open(self.directory / "redis.log", "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.answers_ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                return False
            time.sleep(0.01)
        return self.process.poll() is None  # not some other server on a port taken meanwhile

    def answers_ping(self) -> bool:
        """Whether the server answers on its port (a password-protected one counts too)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as conn:
                conn.sendall(b"PING\r\n")
                reply = conn.recv(64)
        except OSError:
            return False
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    def stop(self) -> None:
        """Stop the server (SIGTERM: with appendonly, everything written so far is on disk)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port and directory."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()


class RedisClusterServers:
    """A Redis Cluster of ``masters`` ``redis-server`` processes, no replicas, on free ports.

    Each node runs in a directory of its own (its ``nodes.conf`` there); ``redis-cli --cluster
    create`` spreads the 16384 slots over them, and ``start`` returns once every node reports
    ``cluster_state:ok``. ``url`` is the ``redis+cluster://`` URL of the first node.
    """

    def __init__(self, masters: int = 3) -> None:
        self.cli = shutil.which("redis-cli")
        require_redis_server()
        if self.cli is None:
            message = "redis-cli is not installed; the Redis Cluster tests need it"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
        self.nodes = [RedisServer(args=CLUSTER_ARGS, cluster=True) for _ in range(masters)]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:PORT`` of the first node (it finds the others)."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> RedisClusterServers:
        """Start every node, join them into one cluster, and wait until it serves all slots."""
        for node in self.nodes:
            node.start()
        assert self.cli is not None
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        create = [self.cli, "--cluster", "create", *addresses]
        done = subprocess.run(
            [*create, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
            raise RuntimeError(f"redis-cli --cluster create failed:\n{output}")
        deadline = time.monotonic() + START_TIMEOUT * 3
        while not all(self._state_ok(node) for node in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.05)
        return self

    def flush(self) -> None:
        """Empty every node (``FLUSHALL`` on each: a cluster client cannot do it in one go)."""
        import redis  # the dev extra has it; only the Redis tests get here

        for node in self.nodes:
            with redis.Redis(port=node.port) as client:
                client.flushall()

    def _state_ok(self, node: RedisServer) -> bool:
        assert self.cli is not None
        done = subprocess.run(
            [self.cli, "-p", str(node.port), "cluster", "info"],
            capture_output=True,
            timeout=10,
            check=False,
        )
        return b"cluster_state:ok" in done.stdout

    def cleanup(self) -> None:
        """Stop every node and remove their directories."""
        for node in self.nodes:
            node.cleanup()

    def __enter__(self) -> RedisClusterServers:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()


#: ``redis-server`` arguments of a cluster node (its config file goes to its own directory).
CLUSTER_ARGS = (
    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
    "--cluster-node-timeout", "5000",
)  # fmt: skip
