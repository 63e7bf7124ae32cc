"""``celeriac result ID --follow``: watch one task until it finishes, with a progress bar.

A task reports progress with ``self.update_state(state="PROGRESS", meta={"current": i,
"total": n})`` (any state name will do, as long as the meta has ``current`` and ``total``). On
a terminal the bar is redrawn in place; on a pipe or into a file each change is one plain line.

Exit codes: 0 the task succeeded; 1 it failed or was revoked; 3 nothing was ever stored for the
id (a wrong id, a task still queued, or an expired result), or the task was still running
when ``--wait`` ran out.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from typing import IO, TYPE_CHECKING, Any

from celeriac import states
from celeriac.errors import TimeoutError

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.result import AsyncResult

#: Seconds without any stored state before an id is reported unknown (when --wait is not given).
UNKNOWN_AFTER = 10.0
#: Seconds between looks at the stored state.
INTERVAL = 0.1
EXIT_UNKNOWN = 3
BAR_WIDTH = 30


class ProgressView:
    """Shows each new state of a task: a bar for progress, a line for any other state."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.tty = out.isatty()
        self.seen = False  # any state stored at all
        self._last = ""
        self._open_line = False  # a bar drawn in place, not ended by a newline yet

    def update(self, meta: dict[str, Any]) -> None:
        """Called with each new stored meta; ready states are left to the caller to print."""
        self.seen = True
        state = str(meta.get("status", states.PENDING))
        if state in states.READY_STATES:
            return
        text = progress_text(state, meta.get("result"))
        if text == self._last:
            return
        self._last = text
        if self.tty and "[" in text:
            width = max(20, shutil.get_terminal_size().columns - 1)
            self.out.write("\r" + text[:width].ljust(width))
            self._open_line = True
        else:
            self.close()
            self.out.write(text + "\n")
        self.out.flush()

    def close(self) -> None:
        """End a bar drawn in place, so that what follows starts on its own line."""
        if self._open_line:
            self.out.write("\n")
            self._open_line = False


def progress_text(state: str, info: Any) -> str:
    """``PROGRESS [#####-----]  50% 5/10`` for a meta with current and total; else the state."""
    if isinstance(info, dict):
        current, total = info.get("current"), info.get("total")
        if isinstance(current, int | float) and isinstance(total, int | float) and total > 0:
            share = min(max(current / total, 0.0), 1.0)
            filled = round(share * BAR_WIDTH)
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            return f"{state} [{bar}] {share * 100:3.0f}% {current:g}/{total:g}"
    return state if info is None else f"{state}: {info!r}"


def cmd_follow(app: Celeriac, args: argparse.Namespace) -> int:
    """Follow a task to its end; print its final state and result; exit code by outcome."""
    result: AsyncResult[Any] = app.AsyncResult(args.task_id)
    view = ProgressView(sys.stdout)
    started = time.monotonic()
    first = UNKNOWN_AFTER if args.wait is None else args.wait
    done = _wait(result, first, view)
    if not done and view.seen and args.wait is None:
        done = _wait(result, None, view)
    view.close()
    if not done:
        return _not_done(args, result, view, time.monotonic() - started)
    print(f"{result.state}: {result.result!r}")
    if args.traceback and result.traceback:
        print(result.traceback)
    return 0 if result.successful() else 1


def _wait(result: AsyncResult[Any], timeout: float | None, view: ProgressView) -> bool:
    """Wait for the task to finish, showing its states; False when ``timeout`` ran out."""
    try:
        result.get(timeout=timeout, propagate=False, interval=INTERVAL, on_message=view.update)
    except TimeoutError:
        return False
    return True


def _not_done(
    args: argparse.Namespace, result: AsyncResult[Any], view: ProgressView, waited: float
) -> int:
    if view.seen:
        print(f"Error: task {args.task_id} is still {result.state} after {waited:.1f} s",
              file=sys.stderr)  # fmt: skip
    else:
        print(f"Error: nothing is stored for a task {args.task_id} after {waited:.1f} s: the id "
              "may be wrong, the task still queued (pass --wait SECONDS to wait longer), or "
              "its result expired", file=sys.stderr)  # fmt: skip
    return EXIT_UNKNOWN
