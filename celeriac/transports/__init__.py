"""Transports by URL scheme, imported only when a URL asks for them."""

from __future__ import annotations

import importlib
from typing import Any

from celeriac.errors import TransportError
from celeriac.transports.base import Delivery, Subscription, Transport

__all__ = ["SCHEMES", "Delivery", "Subscription", "Transport", "open_transport"]

#: scheme -> "module:class"; the module is imported on first use of the scheme.
SCHEMES: dict[str, str] = {
    "memory": "celeriac.transports.memory:MemoryTransport",
    "sqlite": "celeriac.transports.sqlite:SQLiteTransport",
    "redis": "celeriac.transports.redis:RedisTransport",
    "rediss": "celeriac.transports.redis:RedisTransport",
    "redis+cluster": "celeriac.transports.redis:RedisTransport",
    "rediss+cluster": "celeriac.transports.redis:RedisTransport",
    "unix": "celeriac.transports.redis:RedisTransport",
}


def open_transport(url: str, options: dict[str, Any] | None = None) -> Transport:
    """Create the transport for ``url`` (``sqlite:///path``, ``memory://name``, ...)."""
    if not isinstance(url, str) or "://" not in url:
        raise TransportError(
            f"not a broker URL: {url!r} (expected scheme://..., one of: "
            f"{', '.join(s + '://' for s in sorted(SCHEMES))})"
        )
    scheme = url.split("://", 1)[0].lower()
    target = SCHEMES.get(scheme)
    if target is None:
        raise TransportError(
            f"unsupported broker URL scheme {scheme!r} in {url!r}; supported: "
            f"{', '.join(s + '://' for s in sorted(SCHEMES))}"
        )
    module_name, class_name = target.split(":")
    cls: type[Transport] = getattr(importlib.import_module(module_name), class_name)
    return cls(url, options)
