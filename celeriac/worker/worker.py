"""The worker process: start the pool and the consumer, stop cleanly on SIGTERM / Ctrl-C.

First SIGTERM or SIGINT: stop fetching, hand prefetched work back, let running tasks finish
within ``worker_shutdown_timeout``, exit 0. A second signal, or SIGQUIT: stop now; what was
running goes back to the broker as a failed delivery.
"""

from __future__ import annotations

import logging
import os
import platform
import queue
import signal
import socket
import sys
from datetime import datetime
from types import FrameType
from typing import TYPE_CHECKING

from celeriac import __version__, signals
from celeriac.errors import ConfigurationError
from celeriac.worker.autoscale import Autoscaler
from celeriac.worker.consumer import Consumer
from celeriac.worker.health import HealthFile
from celeriac.worker.pools import Event, Pool, create_pool, redirect_stdouts

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.scheduler import Scheduler

logger = logging.getLogger("celeriac.worker")

LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"


def default_hostname(name: str | None = None) -> str:
    """``celeriac@host``, or a ``-n`` template with %h (host), %n (name part), %d (domain)."""
    host = socket.gethostname()
    short, _, domain = host.partition(".")
    template = name or "celeriac@%h"
    return template.replace("%h", host).replace("%n", short).replace("%d", domain)


class Worker:
    """One worker: a consumer feeding a pool, with a banner and signal handling."""

    def __init__(
        self,
        app: Celeriac,
        concurrency: int | None = None,
        pool: str | None = None,
        queues: list[str] | None = None,
        hostname: str | None = None,
        loglevel: str = "WARNING",
        logfile: str | None = None,
        pidfile: str | None = None,
        shutdown_timeout: float | None = None,
        health_file: str | None = None,
        autoscale: tuple[int, int] | None = None,
        beat: Scheduler | None = None,
        metrics_port: int | None = None,
        metrics_address: str = "0.0.0.0",
    ) -> None:
        conf = app.conf
        self.beat = beat  # worker -B: a scheduler in a thread of this process
        self.app = app
        self.concurrency = concurrency or conf.worker_concurrency or os.cpu_count() or 1
        self.pool_kind = pool or conf.worker_pool
        self.queues = queues or [conf.task_default_queue]
        self.hostname = default_hostname(hostname)
        self.loglevel = loglevel.upper()
        self.logfile = logfile
        self.pidfile = pidfile
        self.shutdown_timeout = (
            conf.worker_shutdown_timeout if shutdown_timeout is None else shutdown_timeout
        )
        self.health_file = health_file
        #: serve Prometheus metrics on this port (0: any free one), celeriac.metrics
        self.metrics_port, self.metrics_address = metrics_port, metrics_address
        self.autoscale = autoscale
        if autoscale is not None:
            if self.pool_kind not in ("prefork", "threads"):
                raise ConfigurationError("--autoscale works with the prefork and threads pools")
            self.concurrency = autoscale[1]
        self._signals = 0
        self.consumer: Consumer | None = None

    # -- start and stop -----------------------------------------------------------------

    def start(self) -> int:
        """Run until told to stop; returns the exit code."""
        setup_logging(self.loglevel, self.logfile, self.app.conf.worker_hijack_root_logger)
        self.app.finalize()
        signals.worker_init.send(sender=self)
        # One real round trip before anything else, so a bad broker fails here, cleanly.
        self.app.broker.size(self.queues[0])
        for warning in self.app.broker.server_warnings():
            logger.warning("%s", warning)
        self._write_pidfile()
        try:
            return self._run()
        finally:
            signals.worker_shutdown.send(sender=self)
            self._remove_pidfile()
            sys.stdout = sys.__stdout__

    def _run(self) -> int:
        events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        pool = self._create_pool(events)
        scaler = Autoscaler(pool, *self.autoscale) if self.autoscale else None
        in_process = self.pool_kind != "prefork"  # tasks run here: they could starve a thread
        consumer = self.consumer = Consumer(
            self.app, pool, events, self.queues, self.hostname, scaler, lease_helper=in_process
        )
        metrics_url = self._serve_metrics(consumer)  # before the pool: a taken port fails now
        print(self.banner(), file=sys.stderr if self.logfile is None else sys.stdout, flush=True)
        pool.start()
        self._install_signal_handlers()
        if self.app.conf.worker_redirect_stdouts and self.pool_kind != "prefork":
            redirect_stdouts(self.app.conf.worker_redirect_stdouts_level)
        consumer.start()
        health = HealthFile(self.health_file, consumer) if self.health_file else None
        if health is not None:
            health.start()
        logger.info("Connected to %s", _safe_url(self.app.broker_url))
        if metrics_url:
            logger.info("Prometheus metrics at %s", metrics_url)
        logger.info("%s ready.", self.hostname)
        signals.worker_ready.send(sender=self)
        if self.beat is not None:
            self.beat.start()
        consumer.run()
        if self.beat is not None:
            self.beat.stop()
        if health is not None:
            health.stop()
        consumer.wait_running(self.shutdown_timeout)
        if consumer.inflight or pool.busy():
            left = len(consumer.inflight) + len(pool.held(running_only=True) or ())
            logger.warning("Shutdown timeout: giving back %d running task(s)", left)
            consumer.abandon_running("shutdown_timeout")
        pool.stop(timeout=2.0)
        consumer.close()
        if consumer.metrics is not None:
            consumer.metrics.stop()
        logger.info("Worker %s stopped (processed %d).", self.hostname, consumer.total_processed())
        return 0

    def _create_pool(self, events: queue.SimpleQueue[Event]) -> Pool:
        """The pool; prefork children fetch for themselves unless a feature needs the worker
        process to hand out the jobs (see ``celeriac.worker.consuming``)."""
        dispatch = (
            self.autoscale is not None or self.metrics_port is not None
            or self.app.broker_url.startswith("memory:")
        )  # fmt: skip
        if self.pool_kind == "prefork" and not dispatch:
            from celeriac.worker.consuming import ConsumingPool

            return ConsumingPool(self.app, self.concurrency, self.hostname, events, self.queues)
        return create_pool(self.pool_kind, self.app, self.concurrency, self.hostname, events)

    def _serve_metrics(self, consumer: Consumer) -> str | None:
        """Start the metrics endpoint when asked to; its URL."""
        if self.metrics_port is None:
            return None
        from celeriac.metrics import WorkerMetrics  # the celeriac[metrics] extra

        consumer.metrics = WorkerMetrics(self.app, consumer)
        port = consumer.metrics.serve(self.metrics_port, self.metrics_address)
        return f"http://{self.metrics_address}:{port}/metrics"

    def stop(self) -> None:
        """Begin a graceful shutdown."""
        if self.consumer is not None:
            self.consumer.stop()

    def _install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGQUIT, self._on_quit)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            self._on_quit(signum, frame)
            return
        logger.warning(
            "Shutting down gracefully (%s): finishing running tasks; signal again to stop now",
            signal.Signals(signum).name,
        )
        signals.worker_shutting_down.send(sender=self, sig=signum, how="warm")
        self.stop()

    def _on_quit(self, signum: int, frame: FrameType | None) -> None:
        logger.warning("Stopping now (%s)", signal.Signals(signum).name)
        if self.consumer is not None:
            self.consumer.stop()
            self.consumer.pool.terminate()
            self.consumer.abandon_running("shutdown")
        self._remove_pidfile()
        os._exit(1)

    def _write_pidfile(self) -> None:
        if not self.pidfile:
            return
        try:
            with open(self.pidfile, "x") as handle:
                handle.write(f"{os.getpid()}\n")
        except FileExistsError:
            self._replace_stale_pidfile()

    def _replace_stale_pidfile(self) -> None:
        assert self.pidfile is not None
        with open(self.pidfile) as handle:
            text = handle.read().strip()
        if text.isdigit() and _alive(int(text)):
            raise SystemExit(f"pidfile {self.pidfile} names a running process: {text}")
        with open(self.pidfile, "w") as handle:
            handle.write(f"{os.getpid()}\n")

    def _remove_pidfile(self) -> None:
        if self.pidfile and os.path.exists(self.pidfile):
            os.unlink(self.pidfile)

    # -- the banner ---------------------------------------------------------------------

    def _concurrency_text(self) -> str:
        if self.autoscale:
            return f"{self.autoscale[1]}..{self.autoscale[0]} ({self.pool_kind}, autoscale)"
        return f"{self.concurrency} ({self.pool_kind})"

    def banner(self) -> str:
        """What the worker prints at start: who, where, how, which queues and tasks."""
        app = self.app
        events = "ON" if app.conf.worker_send_task_events else "OFF"
        tasks = sorted(name for name in app.tasks if not name.startswith("celeriac."))
        lines = [
            f" -------------- {self.hostname} v{__version__}",
            f"--- ***** ----- {platform.platform()} {datetime.now():%Y-%m-%d %H:%M:%S}",
            "-- ******* ---- [config]",
            f"- *** --- * --- .> app:         {app.main}:{id(app):#x}",
            f"- ** ---------- .> transport:   {_safe_url(app.broker_url)}",
            f"- ** ---------- .> results:     {_safe_url(app.result_backend_url)}",
            f"- *** --- * --- .> concurrency: {self._concurrency_text()}",
            f"-- ******* ---- .> task events: {events}",
            "--- ***** -----",
            " -------------- [queues]",
            *(f"                .> {q}" for q in self.queues),
            "",
            "[tasks]",
            *(f"  . {name}" for name in tasks),
            "",
        ]
        return "\n".join(lines)


def setup_logging(level: str, logfile: str | None, hijack: bool) -> None:
    """Log in Celery's format to stderr or a file."""
    handler: logging.Handler = (
        logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    if hijack:
        for old in list(root.handlers):
            root.removeHandler(old)
    root.addHandler(handler)
    try:
        root.setLevel(level.upper())
    except ValueError:
        raise SystemExit(f"unknown log level {level!r}") from None


def _safe_url(url: str) -> str:
    """A URL with its password hidden."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        creds, _, host = rest.rpartition("@")
        user = creds.split(":", 1)[0]
        rest = f"{user}:**@{host}" if ":" in creds else f"{user}@{host}"
    return f"{scheme}{sep}{rest}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

