"""Hiding secrets in what the dashboard shows: values under names such as password or token.

Events carry arguments as reprs (short text). A repr that Python can read back as a literal is
walked as data: a dict value under a sensitive key becomes ``'***'``, and so does a positional
argument whose parameter (from the registered task's signature) has a sensitive name. Any other
repr gets the same treatment by pattern (``password='x'``, ``'token': 'x'``).
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Callable
from typing import Any

MASK = "***"

#: Parts of names whose values are never shown.
SENSITIVE = re.compile(
    r"pass(word|wd|phrase)?|pwd|secret|token|api[-_]?key|apikey|access[-_]?key|private[-_]?key"
    r"|credential|authori[sz]ation|(?<![a-z])auth(?![a-z])|cookie|session[-_]?id|signature",
    re.IGNORECASE,
)
_QUOTED = r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""
_VALUE = rf"(?:{_QUOTED}|[^,)}}\]\s]+)"
#: ``'password': value``, ``"token": value`` and ``password=value`` inside a repr.
_PAIR = re.compile(rf"(?P<key>(?P<q>['\"])(?P<name>[^'\"]*)(?P=q)\s*:\s*|\b(?P<bare>\w+)=)"
                   rf"(?P<value>{_VALUE})")  # fmt: skip


def sensitive(name: object) -> bool:
    """Whether a value under ``name`` must be hidden."""
    return isinstance(name, str) and SENSITIVE.search(name) is not None


def mask_value(value: Any) -> Any:
    """``value`` with every dict entry under a sensitive key replaced by ``'***'``."""
    if isinstance(value, dict):
        return {k: MASK if sensitive(k) else mask_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_value(item) for item in value]
    if isinstance(value, tuple):
        return tuple(mask_value(item) for item in value)
    return value


def mask_repr(text: str | None, names: list[str] | None = None) -> str:
    """A repr with sensitive values hidden; ``names`` are the positional parameters' names."""
    if not text:
        return text or ""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _mask_pattern(text)
    if names and isinstance(value, tuple | list):
        padded = names + [""] * len(value)
        hidden = [MASK if sensitive(n) else v for n, v in zip(padded, value, strict=False)]
        value = tuple(hidden) if isinstance(value, tuple) else hidden
    return repr(mask_value(value))


def _mask_pattern(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group("name") if match.group("name") is not None else match.group("bare")
        return match.group("key") + repr(MASK) if sensitive(name) else match.group(0)

    return _PAIR.sub(replace, text)


def parameter_names(task: Callable[..., Any] | None) -> list[str] | None:
    """The names of a task's positional parameters (``self`` of a bound task left out)."""
    run = getattr(task, "run", None)
    if run is None:
        return None
    try:
        parameters = list(inspect.signature(run).parameters.values())
    except (TypeError, ValueError):
        return None
    names = [p.name for p in parameters
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]  # fmt: skip
    if getattr(task, "bind", False) and names:
        names = names[1:]
    return names
