"""Server-rendered pages: Jinja2 templates with autoescaping on, and the filters they use.

Everything a template prints is escaped (task arguments, results, exception messages and
worker names can all hold markup); no template marks anything safe.
"""

from __future__ import annotations

import datetime
import json
import secrets
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

from celeriac import __version__
from celeriac.dashboard.security import base_path, csrf_for, principal_of

TEMPLATES = Path(__file__).parent / "templates"

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _clock(stamp: float | None) -> str:
    if not stamp:
        return "-"
    return datetime.datetime.fromtimestamp(stamp).strftime("%H:%M:%S")


def _when(stamp: float | None) -> str:
    if not stamp:
        return "-"
    return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _ago(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s ago"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.{2 if value < 0.01 else 1}f} ms"
    return f"{value:.2f} s"


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction * 100:.0f}%"


def _as_json(value: Any) -> str:
    """JSON for a ``data-`` attribute (autoescaping makes it safe inside the quotes)."""
    return json.dumps(value, separators=(",", ":"), default=str)


_env.filters.update(clock=_clock, when=_when, ago=_ago, seconds=_seconds, percent=_percent,
                    as_json=_as_json)  # fmt: skip


def render(
    request: Request, template: str, context: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
    """The page ``template`` with ``context``, plus what every page needs."""
    principal = principal_of(request)
    page = _env.get_template(template).render(
        request=request,
        base=base_path(request),
        principal=principal,
        csrf=csrf_for(request),
        new_action_id=lambda: secrets.token_urlsafe(12),
        version=__version__,
        flash=request.query_params.get("done", ""),
        **context,
    )
    return HTMLResponse(page, status_code=status_code)
