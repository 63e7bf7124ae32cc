"""Plain text for the terminal: tables, short values, times."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def table(headers: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    """Left-aligned columns, two spaces apart."""
    cells = [tuple(str(cell) for cell in row) for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def indent(text: str) -> str:
    """``text`` indented by two spaces."""
    return "\n".join("  " + line for line in text.splitlines())


def flat(value: Any) -> str:
    """A value on one line: mappings as k=v, lists joined by commas."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={flat(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(flat(v) for v in value) or "-"
    return str(value)


def short(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters."""
    return text if len(text) <= width else text[: width - 3] + "..."


def ago(stamp: float, now: float) -> str:
    """How long ago ``stamp`` was, in seconds or minutes."""
    seconds = max(0.0, now - float(stamp))
    return f"{seconds:.1f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def clock(stamp: float | None) -> str:
    """The local time of day of ``stamp``."""
    return datetime.fromtimestamp(stamp).strftime("%H:%M:%S") if stamp else "-"
