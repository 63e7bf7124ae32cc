"""The beat loop: send each periodic task when it falls due, from as many schedulers as you like.

Every scheduler does the same work and the broker decides who sends; there is no leader to
elect and nothing to hand over when a scheduler dies. What the schedulers share lives in the
broker's keys, never in a local file:

- ``celeriac-beat:claim:<entry>:<due, ms since the epoch>``: the right to send one run. A
  scheduler sends a run only if its ``incr`` of the claim returns 1, so each run is sent once
  however many schedulers see it due. A claim lives ``claim_ttl`` seconds (an hour by default),
  far longer than any scheduler keeps retrying that run.
- ``celeriac-beat:last:<entry>``: a watermark, ``{"at": seconds, "schedule": fingerprint}``:
  every run due at or before ``at`` has been claimed. The scheduler that wins a claim moves it
  forward (never back), and a restarted scheduler starts from it, so restarting every
  scheduler neither repeats a run nor skips one.

Each pass reads the entries (from the stores), and for an entry whose next run has come reads
its watermark and looks at the runs after it:

- when the oldest of them is at most ``grace`` seconds old, each is sent once (late, if every
  scheduler was down for a moment, but not lost);
- when it is older, they fell due while no scheduler was alive (or able to reach the broker),
  and the entry's ``missed`` policy decides for all of them at once: send one run
  (``"run_once"``) or none (``"skip"``);
- a new entry, or one whose schedule changed, owes nothing from before it was seen.

Then it sleeps until the next run of any entry (at most ``max_interval`` seconds, and at most
the stores' ``refresh_interval``, so that store changes are seen in time). Each sent run has
``periodic_task_name`` and ``periodic_task_due`` (ISO 8601, UTC) in its headers.

The one fault this cannot cover: a scheduler killed between winning a claim and publishing
(microseconds) loses that run.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celeriac import __version__, signals
from celeriac.entries import KEY_PREFIX, BrokerStore, ConfigStore, Entry, ScheduleStore, parse_entry
from celeriac.errors import ScheduleError

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.config import Settings

logger = logging.getLogger("celeriac.beat")

#: Seconds late a run may be sent and still count as on time.
DEFAULT_GRACE = 10.0
#: The shortest period a schedule may have, in seconds.
DEFAULT_RESOLUTION = 1.0
#: Seconds before a pass that failed (a broker error, say) is tried again.
RETRY_AFTER = 5.0
#: Most runs of one entry sent in one pass.
MAX_RUNS_PER_PASS = 1000
_WAKE_SLACK = 0.001


class Clock(Protocol):
    """Where a scheduler reads the time and waits; tests pass one that runs faster."""

    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    def sleep(self, seconds: float, stop: threading.Event) -> None:
        """Wait ``seconds`` of this clock, or until ``stop`` is set."""
        ...


class SystemClock:
    """The machine's clock."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float, stop: threading.Event) -> None:
        stop.wait(seconds)


@dataclass
class _Tracked:
    """An entry this scheduler follows, and when it next needs a look."""

    entry: Entry
    fingerprint: str
    next_check: float = -math.inf


@dataclass(frozen=True)
class _Mark:
    """An entry's watermark, as stored in the broker."""

    at: float
    fingerprint: str


class Scheduler:
    """Sends periodic tasks when due; safe to run in any number of copies at once."""

    def __init__(
        self,
        app: Celeriac,
        *,
        stores: Sequence[ScheduleStore] | None = None,
        max_interval: float | None = None,
        resolution: float = DEFAULT_RESOLUTION,
        grace: float = DEFAULT_GRACE,
        claim_ttl: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.app = app
        #: Read in order; an entry in a later store replaces one of the same name.
        self.stores: list[ScheduleStore] = (
            list(stores) if stores is not None else [ConfigStore(app), BrokerStore(app)]
        )
        self.max_interval = (
            app.conf.beat_max_loop_interval if max_interval is None else max_interval
        )
        self.resolution = resolution
        self.grace = grace
        self.claim_ttl = claim_ttl if claim_ttl is not None else max(3600.0, 10 * grace)
        self.clock: Clock = clock or SystemClock()
        self.timezone = scheduler_timezone(app.conf)
        self._tracked: dict[str, _Tracked] = {}
        self._problems: set[str] = set()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._validated = False

    # -- entries ----------------------------------------------------------------------------

    def validate(self) -> dict[str, Entry]:
        """Finalize the app and check every entry; ScheduleError naming each bad one."""
        self.app.finalize()
        entries, problems = self.load()
        if problems:
            raise ScheduleError("; ".join(problems))
        self._validated = True
        return entries

    def load(self) -> tuple[dict[str, Entry], list[str]]:
        """The entries of every store that can run, and a line for each that cannot."""
        specs: dict[str, Mapping[str, Any]] = {}
        for store in self.stores:
            specs.update(store.entries())
        entries: dict[str, Entry] = {}
        problems: list[str] = []
        for name, spec in specs.items():
            try:
                entries[name] = self._check(parse_entry(name, spec))
            except ScheduleError as exc:
                problems.append(str(exc))
        return entries, problems

    def _check(self, entry: Entry) -> Entry:
        if entry.task not in self.app.tasks:
            close = difflib.get_close_matches(entry.task, self.app.tasks, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ScheduleError(
                f"beat entry {entry.name!r}: task {entry.task!r} is not registered{hint}"
            )
        period = entry.schedule.shortest_period()
        if period is not None and period.total_seconds() < self.resolution:
            raise ScheduleError(
                f"beat entry {entry.name!r}: runs every {period.total_seconds():g} s, more "
                f"often than the scheduler's resolution of {self.resolution:g} s"
            )
        return entry

    def _refresh(self) -> None:
        """Re-read the stores: follow new and changed entries, drop removed ones."""
        entries, problems = self.load()
        for problem in sorted(set(problems) - self._problems):
            logger.error("%s; the entry is skipped", problem)
        self._problems = set(problems)
        for name in set(self._tracked) - set(entries):
            del self._tracked[name]
            logger.info("beat: entry %s removed", name)
        for name, entry in entries.items():
            old = self._tracked.get(name)
            if old is None or old.entry != entry:
                self._tracked[name] = _Tracked(entry, self._fingerprint(entry))
                logger.info(
                    "beat: entry %s %s: %r", name, "changed" if old else "added", entry.schedule
                )

    def _fingerprint(self, entry: Entry) -> str:
        """Stands for when an entry runs: a new fingerprint means a new schedule."""
        try:
            spec = entry.schedule.to_spec()
        except TypeError:
            spec = {"repr": repr(entry.schedule)}
        return json.dumps({**spec, "zone": _zone_name(self.timezone)}, sort_keys=True)

    # -- one pass -----------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> float:
        """Send what is due at ``now`` (default: the clock); seconds until the next pass."""
        now = self.clock.now() if now is None else now
        self._refresh()
        for tracked in list(self._tracked.values()):
            if tracked.next_check <= now:
                try:
                    self._process(tracked, now)
                except Exception:
                    logger.exception("beat: entry %s failed; trying again", tracked.entry.name)
                    tracked.next_check = now + min(RETRY_AFTER, self.max_interval)
        return self._idle_time(now)

    def _process(self, tracked: _Tracked, now: float) -> None:
        entry, fingerprint = tracked.entry, tracked.fingerprint
        mark = self._read_mark(entry.name)
        if mark is None:  # a new entry owes nothing from before now
            self._advance(entry.name, now, fingerprint)
            tracked.next_check = self._next_run(entry, now)
            return
        same = mark.fingerprint == fingerprint
        # A changed schedule owes no missed runs: only those within grace of now.
        last = mark.at if same else max(mark.at, now - self.grace)
        first = entry.schedule.next_after(self._at(last))
        won = False
        if first.timestamp() < now - self.grace:  # runs fell due while no scheduler was alive
            won = self._handle_missed(entry, first)
        else:  # each run due by now is late by grace at most: send each
            runs = entry.schedule.runs_between(self._at(last), self._at(now), MAX_RUNS_PER_PASS)
            for due in runs:
                won = self._claim_and_send(entry, due) or won
        if won or not same:
            self._advance(entry.name, now, fingerprint)
        tracked.next_check = self._next_run(entry, max(last, now))

    def _handle_missed(self, entry: Entry, first: datetime) -> bool:
        """Apply the entry's missed policy to every run since ``first``, once for all."""
        if entry.missed == "skip":
            if not self._claim(entry, first):
                return False
            logger.warning(
                "beat: skipping the runs of %s missed since %s (missed='skip')",
                entry.name,
                first.isoformat(),
            )
            return True
        if not self._claim_and_send(entry, first):
            return False
        logger.warning(
            "beat: sent one run of %s for the runs missed since %s (missed='run_once')",
            entry.name,
            first.isoformat(),
        )
        return True

    def _claim(self, entry: Entry, due: datetime) -> bool:
        """Win the right to handle run ``due`` of ``entry``; True for exactly one scheduler."""
        key = _claim_key(entry.name, due)
        return self.app.broker.incr(key, ttl=self.claim_ttl) == 1

    def _claim_and_send(self, entry: Entry, due: datetime) -> bool:
        if not self._claim(entry, due):
            return False
        try:
            self._send(entry, due)
        except BaseException:
            self.app.broker.delete(_claim_key(entry.name, due))  # let a scheduler try again
            raise
        return True

    def _send(self, entry: Entry, due: datetime) -> None:
        options = dict(entry.options)
        headers = {
            **(options.pop("headers", None) or {}),
            "periodic_task_name": entry.name,
            "periodic_task_due": due.astimezone(UTC).isoformat(),
        }
        logger.info("Scheduler: Sending due task %s (%s)", entry.name, entry.task)
        self.app.send_task(
            entry.task, entry.args, entry.kwargs, task=self.app.tasks.get(entry.task),
            headers=headers, **options,
        )  # fmt: skip

    # -- the watermark --------------------------------------------------------------------

    def _read_mark(self, name: str) -> _Mark | None:
        raw = self.app.broker.get(_mark_key(name))
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return _Mark(float(data["at"]), str(data["schedule"]))
        except (ValueError, KeyError, TypeError):
            logger.warning("beat: unreadable state for entry %s; starting it afresh", name)
            return None

    def _advance(self, name: str, at: float, fingerprint: str) -> None:
        """Move the watermark forward to ``at`` (never back, unless the schedule changed)."""
        mark = self._read_mark(name)
        if mark is not None and mark.fingerprint == fingerprint and mark.at >= at:
            return
        value = json.dumps({"at": at, "schedule": fingerprint}).encode()
        self.app.broker.put(_mark_key(name), value)

    # -- time -----------------------------------------------------------------------------

    def _at(self, seconds: float) -> datetime:
        return datetime.fromtimestamp(seconds, self.timezone)

    def _next_run(self, entry: Entry, after: float) -> float:
        return entry.schedule.next_after(self._at(after)).timestamp()

    def _idle_time(self, now: float) -> float:
        wake = min((t.next_check for t in self._tracked.values()), default=math.inf)
        refresh = min((store.refresh_interval for store in self.stores), default=math.inf)
        return max(0.0, min(wake - now + _WAKE_SLACK, self.max_interval, refresh))

    # -- running ----------------------------------------------------------------------------

    def run(self) -> None:
        """Pass over the schedule until ``stop()``; checks the entries first if not yet done."""
        if not self._validated:
            self.validate()
        logger.info("beat: Starting...")
        while not self._stopping.is_set():
            try:
                idle = self.tick()
            except Exception:
                logger.exception("beat: a pass over the schedule failed; trying again")
                idle = min(RETRY_AFTER, self.max_interval)
            self.clock.sleep(idle, self._stopping)
        logger.info("beat: stopped")

    def serve(self) -> int:
        """Run in the foreground until SIGTERM or Ctrl-C (``celeriac beat``); the exit code."""
        print(self.banner(), file=sys.stderr, flush=True)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stop())
        signals.beat_init.send(sender=self)
        self.run()
        return 0

    def start(self) -> Scheduler:
        """Run in a background thread of this process (``worker -B``)."""
        signals.beat_embedded_init.send(sender=self)
        self._thread = threading.Thread(target=self.run, name="celeriac-beat", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current pass; waits for the background thread if there is one."""
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def banner(self) -> str:
        """What ``celeriac beat`` prints at start."""
        return "\n".join([
            f"celeriac beat v{__version__} is starting.",
            f"  . broker -> {_without_password(self.app.broker_url)}",
            f"  . timezone -> {_zone_name(self.timezone)}",
            f"  . entries -> {len(self._tracked) or len(self.load()[0])}",
            f"  . max interval -> {self.max_interval:g} s",
        ])  # fmt: skip


def scheduler_timezone(conf: Settings) -> tzinfo:
    """The zone crontabs are read in: ``timezone``; the machine's own zone when ``enable_utc``
    is off and no timezone is set (as in Celery)."""
    if conf.enable_utc or "timezone" in conf.changes:
        return ZoneInfo(conf.timezone)
    name = os.environ.get("TZ", "").lstrip(":")
    try:
        if name:
            return ZoneInfo(name)
        with open("/etc/localtime", "rb") as handle:
            return ZoneInfo.from_file(handle, key="localtime")
    except (OSError, ValueError, ZoneInfoNotFoundError):
        local = datetime.now().astimezone().tzinfo
        assert local is not None
        return local


def _claim_key(name: str, due: datetime) -> str:
    return f"{KEY_PREFIX}:claim:{name}:{round(due.timestamp() * 1000)}"


def _mark_key(name: str) -> str:
    return f"{KEY_PREFIX}:last:{name}"


def _zone_name(zone: tzinfo) -> str:
    key = getattr(zone, "key", None)
    return key if isinstance(key, str) else str(zone)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":**@", 1)
