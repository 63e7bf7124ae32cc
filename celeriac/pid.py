"""This process's id, kept current across ``fork()`` without a system call per read.

Connections must not be shared with a forked child, so hot paths (every ``app.broker``,
every message's origin) compare the id they were opened in with this one; ``os.getpid()``
is a real system call each time, while this is a variable set once per process.
"""

from __future__ import annotations

import os

_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def current() -> int:
    """The id of the calling process."""
    return _pid
