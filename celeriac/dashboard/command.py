"""``celeriac -A proj dashboard [--port 5555] [--address 127.0.0.1]``, and ``--hash-password``.

This module is imported whenever the ``celeriac`` command builds its parser, so it imports
the dashboard's libraries only when the command runs.
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import signal
import sys
from typing import TYPE_CHECKING, Any

from celeriac.cli import UsageError, positive_int
from celeriac.dashboard.auth import ENV_TOKEN, ENV_USERS, Auth, hash_password

if TYPE_CHECKING:
    from collections.abc import Callable

    from celeriac.app import Celeriac

DEFAULT_PORT = 5555


def add_command(commands: Any, make: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``dashboard`` to the ``celeriac`` parser."""
    parser = make(commands, "dashboard", cmd_dashboard, "serve the web dashboard")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT, help="default 5555")
    parser.add_argument(
        "--address", default="127.0.0.1",
        help="where to listen (default 127.0.0.1; any other address needs credentials)",
    )
    parser.add_argument(
        "--root-path", default="",
        help="the path a reverse proxy serves it under, such as /dashboard",
    )
    parser.add_argument(
        "--max-tasks", type=positive_int, default=100_000,
        help="tasks kept in memory, the oldest forgotten first (default 100000)",
    )
    parser.add_argument(
        "--hash-password", action="store_true",
        help=f"read a password, print its hash for {ENV_USERS}, and exit",
    )


def _port(text: str) -> int:
    port = positive_int(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, not {port}")
    return port


def loopback(address: str) -> bool:
    """Whether ``address`` is reachable only from this machine."""
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(auth: Auth, address: str) -> None:
    """Refuse to listen beyond loopback without credentials."""
    if auth.open and not loopback(address):
        raise UsageError(
            f"refusing to serve the dashboard on {address} without credentials: anyone who "
            f"can reach it could revoke tasks and stop workers. Set {ENV_TOKEN} (a long random "
            f"token) or {ENV_USERS} (see --hash-password), or listen on 127.0.0.1"
        )


def cmd_dashboard(app: Celeriac, args: argparse.Namespace) -> int:
    """Serve the dashboard until Ctrl-C or SIGTERM."""
    if args.hash_password:
        return _print_hash()
    from celeriac.dashboard import create_app, require_extra

    require_extra()
    import uvicorn

    try:
        auth = Auth.from_env()
    except ValueError as exc:
        raise UsageError(f"dashboard credentials: {exc}") from None
    check_bind(auth, args.address)
    host = f"[{args.address}]" if ":" in args.address else args.address
    access = "open to this machine only, no sign-in" if auth.open else (
        f"sign-in required ({len(auth.tokens)} token(s), {len(auth.users)} user(s))")  # fmt: skip
    print(f"celeriac dashboard for {app.main}: http://{host}:{args.port}{args.root_path}/ "
          f"({access}); Ctrl-C to stop", flush=True)  # fmt: skip
    config = uvicorn.Config(
        create_app(app, auth=auth, max_tasks=args.max_tasks), host=args.address,
        port=args.port, root_path=args.root_path, log_level="warning",
        timeout_graceful_shutdown=2, lifespan="on",
    )  # fmt: skip
    # uvicorn stops on SIGTERM, then raises it again for the handler it found: exit 0.
    signal.signal(signal.SIGTERM, _stopped)
    uvicorn.Server(config).run()
    return 0


def _stopped(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _print_hash() -> int:
    """Read a password (twice at a terminal), print its scrypt hash."""
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("Error: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise UsageError("the password is empty")
    print(hash_password(password))
    return 0
