"""Send tasks after the database transaction commits, so workers see the committed rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celeriac.errors import MissingExtraError


def on_commit(callback: Callable[[], Any], using: str | None = None) -> None:
    """Run ``callback`` when the current transaction on ``using`` commits (now, outside one)."""
    try:
        from django.db import transaction
    except ImportError as exc:
        raise MissingExtraError(
            "delay_on_commit needs Django: pip install 'celeriac[django]'"
        ) from exc
    transaction.on_commit(callback, using=using)
