"""The web dashboard: watch and steer workers, queues and tasks live.

``celeriac -A proj dashboard`` serves it; ``create_app(app)`` returns it as an ASGI app to
mount elsewhere. It needs the ``dashboard`` extra (Starlette, uvicorn, Jinja2); this module
imports none of them until asked, so the ``celeriac`` command works without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from celeriac.dashboard.auth import Auth, User, hash_password, verify_password
from celeriac.errors import MissingExtraError

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from celeriac.app import Celeriac

__all__ = ["Auth", "User", "create_app", "hash_password", "require_extra", "verify_password"]

INSTALL = "pip install 'celeriac[dashboard]'"


def require_extra() -> None:
    """Raise MissingExtraError naming the extra when a library of the dashboard is missing."""
    for module in ("starlette", "uvicorn", "jinja2"):
        try:
            __import__(module)
        except ImportError:
            raise MissingExtraError(
                f"the dashboard needs {module}, which is not installed: {INSTALL}"
            ) from None


def create_app(app: Celeriac, *, auth: Auth | None = None, max_tasks: int = 100_000) -> Starlette:
    """The dashboard for ``app`` as an ASGI app, credentials from ``auth`` (by default from
    ``CELERIAC_DASHBOARD_*`` variables; with none it serves loopback clients only), keeping
    the most recent ``max_tasks`` tasks."""
    require_extra()
    from celeriac.dashboard.app import create_app as build

    return build(app, auth=auth, max_tasks=max_tasks)
