"""Make a worker work inside a Django project: set Django up and keep connections fresh."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celeriac.app import Celeriac


def django_configured() -> bool:
    """True when this process names a Django settings module and Django is installed."""
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        return False
    try:
        import django  # noqa: F401
    except ImportError:
        return False
    return True


def setup_if_configured(app: Celeriac) -> bool:
    """Run ``django.setup()`` once and close stale DB connections around every task."""
    if not django_configured():
        return False
    import django
    from django.apps import apps

    if not apps.ready:
        django.setup()
    _connect_signals()
    return True


def installed_app_names() -> list[str]:
    """The packages of INSTALLED_APPS, for task autodiscovery; empty outside Django."""
    if not django_configured():
        return []
    from django.apps import apps

    if not apps.ready:
        import django

        django.setup()
    return [config.name for config in apps.get_app_configs()]


_connected = False


def _connect_signals() -> None:
    global _connected
    if _connected:
        return
    from celeriac import signals

    signals.task_prerun.connect(_close_old_connections)
    signals.task_postrun.connect(_close_old_connections)
    _connected = True


def _close_old_connections(**_: Any) -> None:
    """Drop connections that are broken or past CONN_MAX_AGE, as Django does per request."""
    from django.db import close_old_connections

    close_old_connections()
