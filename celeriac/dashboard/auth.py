"""Who may use the dashboard: credentials, roles, password hashes, session cookies, CSRF tokens.

Two roles: ``read`` (see everything) and ``operator`` (also act: revoke, redrive, shut down).
Credentials are tokens and users (a name, a role and a password hash); with none configured
the dashboard is *open*: it serves only loopback clients, all of them operators, and the
command refuses to bind anywhere else.

From the environment (``Auth.from_env``)::

    CELERIAC_DASHBOARD_TOKEN        a token with the operator role
    CELERIAC_DASHBOARD_READ_TOKEN   a token with the read role
    CELERIAC_DASHBOARD_USERS        users, one per line or comma: name:role:hash
    CELERIAC_DASHBOARD_SECRET       the key that signs session cookies (default: random per
                                    process, so sessions end when it restarts)

A hash is ``scrypt$n$r$p$salt$key`` (base64 parts), made by ``hash_password`` or
``celeriac dashboard --hash-password``. This module uses only the standard library.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

READ = "read"
OPERATOR = "operator"
ROLES = (READ, OPERATOR)

#: scrypt cost: about 50 ms and 16 MiB per check, which also slows down password guessing.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SESSION_AGE = 12 * 3600.0

ENV_TOKEN = "CELERIAC_DASHBOARD_TOKEN"
ENV_READ_TOKEN = "CELERIAC_DASHBOARD_READ_TOKEN"
ENV_USERS = "CELERIAC_DASHBOARD_USERS"
ENV_SECRET = "CELERIAC_DASHBOARD_SECRET"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, n: int = SCRYPT_N) -> str:
    """A salted scrypt hash of ``password``, as text to put in ``CELERIAC_DASHBOARD_USERS``."""
    if not password:
        raise ValueError("a password must not be empty")
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, hashed: str) -> bool:
    """Whether ``password`` matches ``hashed`` (a malformed hash matches nothing)."""
    try:
        kind, n, r, p, salt, key = hashed.split("$")
        if kind != "scrypt":
            return False
        expected = _unb64(key)
        found = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r),
                               p=int(p), dklen=len(expected), maxmem=2**26)  # fmt: skip
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(found, expected)


def check_hash(hashed: str) -> str:
    """``hashed`` if it looks like a hash from ``hash_password``, else ValueError."""
    parts = hashed.split("$")
    if len(parts) != 6 or parts[0] != "scrypt" or not all(parts):
        raise ValueError(
            "a password hash looks like scrypt$16384$8$1$<salt>$<key>; "
            "make one with: celeriac dashboard --hash-password"
        )
    return hashed


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"a role is {' or '.join(ROLES)}, not {role!r}")
    return role


@dataclass(frozen=True, slots=True)
class User:
    """A person who signs in with a name and a password."""

    name: str
    role: str
    password_hash: str

    def __post_init__(self) -> None:
        if not self.name or ":" in self.name:
            raise ValueError(f"a user name is not empty and has no ':', not {self.name!r}")
        check_role(self.role)
        check_hash(self.password_hash)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who makes a request: a name and a role; ``sid`` ties its CSRF token to its session."""

    name: str
    role: str
    sid: str

    @property
    def can_act(self) -> bool:
        return self.role == OPERATOR


@dataclass
class Auth:
    """The configured credentials, and the key that signs cookies and CSRF tokens."""

    tokens: Mapping[str, str] = field(default_factory=dict)  #: token -> role
    users: tuple[User, ...] = ()
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def __post_init__(self) -> None:
        for token, role in self.tokens.items():
            check_role(role)
            if len(token) < 16:
                raise ValueError("a dashboard token must be at least 16 characters long")
        self._users = {user.name: user for user in self.users}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Auth:
        """Credentials from ``CELERIAC_DASHBOARD_*`` variables (see the module docstring)."""
        env = os.environ if environ is None else environ
        tokens = {}
        if env.get(ENV_TOKEN):
            tokens[env[ENV_TOKEN]] = OPERATOR
        if env.get(ENV_READ_TOKEN):
            tokens[env[ENV_READ_TOKEN]] = READ
        users = parse_users(env.get(ENV_USERS, ""))
        secret = env.get(ENV_SECRET)
        if secret:
            return cls(tokens, users, hashlib.sha256(secret.encode()).digest())
        return cls(tokens, users)

    @property
    def open(self) -> bool:
        """No credentials: loopback clients only, every one of them an operator."""
        return not self.tokens and not self.users

    def by_token(self, token: str) -> Principal | None:
        """The principal a token stands for (compared in constant time)."""
        found = None
        offered = hashlib.sha256(token.encode()).digest()  # equal lengths: nothing leaks
        for known, role in self.tokens.items():
            if hmac.compare_digest(hashlib.sha256(known.encode()).digest(), offered):
                found = Principal(f"token:{role}", role, self._digest("token", known)[:16])
        return found

    def by_password(self, name: str, password: str) -> Principal | None:
        """The principal for a user name and password, or None."""
        user = self._users.get(name)
        if user is None:
            verify_password(password, _DUMMY_HASH)  # the same cost for unknown names
            return None
        if not verify_password(password, user.password_hash):
            return None
        return Principal(user.name, user.role, secrets.token_hex(8))

    # -- session cookies and CSRF tokens -------------------------------------------------------

    def sign(self, data: dict[str, object]) -> str:
        """A cookie value holding ``data``, signed, valid for ``SESSION_AGE`` seconds."""
        payload = _b64(json.dumps({**data, "exp": time.time() + SESSION_AGE}).encode())
        return f"{payload}.{self._digest('cookie', payload)}"

    def unsign(self, value: str) -> dict[str, object] | None:
        """The data in a cookie value, or None when forged, malformed or expired."""
        payload, _, signature = value.partition(".")
        if not hmac.compare_digest(signature, self._digest("cookie", payload)):
            return None
        try:
            data = json.loads(_unb64(payload))
        except ValueError:
            return None
        if not isinstance(data, dict) or float(data.get("exp", 0)) < time.time():
            return None
        return data

    def csrf_token(self, sid: str) -> str:
        """The CSRF token of a session: only pages served to that session carry it."""
        return self._digest("csrf", sid)

    def check_csrf(self, sid: str, token: str) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(sid), token)

    def _digest(self, purpose: str, text: str) -> str:
        return hmac.new(self.secret, f"{purpose}|{text}".encode(), hashlib.sha256).hexdigest()


_DUMMY_HASH = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


def parse_users(text: str) -> tuple[User, ...]:
    """Users from ``name:role:hash`` entries separated by newlines or commas."""
    users = []
    for entry in text.replace(",", "\n").splitlines():
        entry = entry.strip()
        if not entry:
            continue
        parts = entry.split(":")
        if len(parts) != 3:
            raise ValueError(f"a user entry is name:role:hash, not {entry[:40]!r}...")
        users.append(User(*parts))
    return tuple(users)
