"""The guard in front of every route: who is asking, may they, and the headers every answer gets.

- Open (no credentials): only loopback clients, and only under a loopback host name (so a web
  page cannot reach the dashboard by pointing its own domain at 127.0.0.1); each is an operator.
- With credentials: a session cookie from the login form, ``Authorization: Bearer <token>``,
  or HTTP Basic with a user's name and password. Without one, pages redirect to the login form
  and the API, the live stream and ``/metrics`` answer 401 (a Prometheus scraper sends
  ``Authorization: Bearer <token>``; a read token will do). Only the login form and the static
  files (the dashboard's own JavaScript and CSS) are served to anyone.
- Every state-changing route is a POST that checks the operator role and a CSRF token (a
  form field or an ``X-CSRF-Token`` header) bound to the session; see ``actions.py``.
- Every answer forbids inline script and framing; none allows other origins to read it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import secrets
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from celeriac.dashboard.auth import OPERATOR, Auth, Principal

COOKIE = "celeriac_dashboard"
PUBLIC = ("/login", "/static/")
HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
#: Seconds a checked Basic header is remembered (scrypt costs ~50 ms per check).
BASIC_CACHE_SECONDS = 60.0


def base_path(request: Request) -> str:
    """Where the dashboard is mounted ('' at the root, '/dashboard' under Django, ...)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def local_path(scope: Scope) -> str:
    """The request's path below where the dashboard is mounted."""
    path, root = str(scope.get("path", "")), str(scope.get("root_path", "")).rstrip("/")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


def principal_of(request: Request) -> Principal | None:
    """Who made the request (None: nobody signed in)."""
    found = request.scope.get("celeriac.principal")
    return found if isinstance(found, Principal) else None


def csrf_for(request: Request) -> str:
    """The CSRF token that forms of this request's session carry."""
    auth: Auth = request.scope["celeriac.auth"]
    return auth.csrf_token(str(request.scope["celeriac.sid"]))


def loopback_client(scope: Scope) -> bool:
    client = scope.get("client")
    if not client:
        return True  # no network peer (a Unix socket)
    try:
        return ipaddress.ip_address(str(client[0])).is_loopback
    except ValueError:
        return False


def loopback_host(request: Request) -> bool:
    host = request.headers.get("host", "")
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name.lower() in LOOPBACK_NAMES


class Guard:
    """ASGI middleware: host and client checks, who is asking, security headers."""

    def __init__(self, app: ASGIApp, auth: Auth) -> None:
        self.app = app
        self.auth = auth
        self._basic: dict[str, tuple[float, Principal | None]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        cookie: str | None = None
        if self.auth.open and not (loopback_client(scope) and loopback_host(request)):
            response: Response | None = PlainTextResponse(
                "This dashboard has no credentials configured, so it serves only loopback "
                "clients at localhost or 127.0.0.1.", status_code=403)  # fmt: skip
        else:
            principal, sid, cookie = self.identify(request)
            scope["celeriac.auth"], scope["celeriac.sid"] = self.auth, sid
            scope["celeriac.principal"] = principal
            response = None if principal or _public(local_path(scope)) else _ask_login(request)
        secure = scope.get("scheme") == "https"
        send = _with_headers(send, cookie, base_path(request) or "/", secure)
        if response is not None:
            await response(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def identify(self, request: Request) -> tuple[Principal | None, str, str | None]:
        """``(principal, session id, new cookie value or None)`` for a request."""
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "bearer" and credentials:
            found = self.auth.by_token(credentials.strip())
            return found, found.sid if found else secrets.token_hex(8), None
        if scheme.lower() == "basic" and credentials:
            found = self._by_basic(credentials.strip())
            return found, found.sid if found else secrets.token_hex(8), None
        session = self.auth.unsign(request.cookies.get(COOKIE, "")) or {}
        sid = session.get("sid")
        if not isinstance(sid, str):
            sid = secrets.token_hex(16)
            return self._open(sid), sid, self.auth.sign({"sid": sid})
        if self.auth.open:
            return self._open(sid), sid, None
        name, role = session.get("name"), session.get("role")
        if isinstance(name, str) and isinstance(role, str):
            return Principal(name, role, sid), sid, None
        return None, sid, None

    def _open(self, sid: str) -> Principal | None:
        return Principal("local", OPERATOR, sid) if self.auth.open else None

    def _by_basic(self, credentials: str) -> Principal | None:
        key = hashlib.sha256(credentials.encode()).hexdigest()
        cached = self._basic.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        try:
            name, _, password = base64.b64decode(credentials).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        found = self.auth.by_password(name, password)
        if found is not None:
            found = Principal(found.name, found.role, key[:16])  # a stable CSRF token
        if len(self._basic) > 1000:
            self._basic.clear()
        self._basic[key] = (time.monotonic() + BASIC_CACHE_SECONDS, found)
        return found


def _public(path: str) -> bool:
    return path == PUBLIC[0] or path.startswith(PUBLIC[1])


def _ask_login(request: Request) -> Response:
    """A page asks for the login form; the API, the stream and the metrics say 401."""
    path = local_path(request.scope)
    wants_page = request.method == "GET" and "text/html" in request.headers.get("accept", "")
    if wants_page and not path.startswith(("/api/", "/stream", "/metrics")):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        url = f"{base_path(request)}/login?next={_quote(target)}"
        return RedirectResponse(url, status_code=303)
    return JSONResponse({"error": "authentication required"}, status_code=401,
                        headers={"www-authenticate": 'Bearer realm="celeriac"'})  # fmt: skip


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="/")


def _with_headers(send: Send, cookie: str | None, path: str, secure: bool) -> Send:
    """``send`` that adds the security headers (and a new session cookie) to the response."""

    async def sender(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers: list[Any] = list(message.get("headers", []))
            present = {name.lower() for name, _ in headers}
            for name, value in HEADERS.items():
                if name.encode() not in present:
                    headers.append((name.encode(), value.encode()))
            if b"cache-control" not in present:
                headers.append((b"cache-control", b"no-store"))
            if cookie is not None and not _sets_cookie(headers):
                headers.append((b"set-cookie", session_cookie(cookie, path, secure).encode()))
            message = {**message, "headers": headers}
        await send(message)

    return sender


def _sets_cookie(headers: list[Any]) -> bool:
    return any(name.lower() == b"set-cookie" for name, _ in headers)


def session_cookie(value: str, path: str, secure: bool) -> str:
    """A ``Set-Cookie`` value for the session: not readable by script, not sent cross-site."""
    flags = "; Secure" if secure else ""
    return f"{COOKIE}={value}; Path={path}; HttpOnly; SameSite=Strict{flags}"
