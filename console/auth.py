"""Who may use the console: login tokens, session cookies and CSRF tokens.

A person logs in once with a token (``/login?token=...``, the link ``icm demo`` prints, or the
login form) and gets an HttpOnly, SameSite=Strict cookie. The cookie is signed with a key
derived from that token, so several console replicas that share the tokens accept each other's
sessions, and changing a token ends every session made with it. Scripts send
``Authorization: Bearer <token>`` instead; they carry no ambient credential, so they need no
CSRF token. Browsers must send the session's CSRF token (``X-CSRF-Token`` header or a
``csrf_token`` form field) with every state-changing request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

__all__ = ["ROLES", "Auth", "Principal"]

ROLES = ("viewer", "admin")   # admin: may also change camera settings
COOKIE = "icm_console_session"


@dataclass(frozen=True)
class Principal:
    role: str
    nonce: str          # per session: binds its CSRF token
    bearer: bool = False

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class Auth:
    """Args:
        tokens: role -> token (at least one; an admin token alone is fine).
        session_s: how long a login lasts.
    """

    def __init__(self, tokens: dict[str, str], session_s: float = 12 * 3600) -> None:
        tokens = {r: t for r, t in tokens.items() if t}
        if not tokens:
            raise ValueError("the console needs at least one login token")
        if set(tokens) - set(ROLES):
            raise ValueError(f"unknown roles {sorted(set(tokens) - set(ROLES))}")
        if len(set(tokens.values())) != len(tokens):
            raise ValueError("the viewer and admin tokens must differ")
        for t in tokens.values():
            if len(t) < 8:
                raise ValueError("login tokens must be at least 8 characters")
        self._tokens = tokens
        self._keys = {r: hashlib.sha256(b"icm-console-session\0" + r.encode() + b"\0"
                                        + t.encode()).digest() for r, t in tokens.items()}
        self.session_s = session_s

    def role_of(self, token: str) -> str | None:
        """The role a token grants (constant-time comparison), or None."""
        found = None
        for role, expected in self._tokens.items():
            if hmac.compare_digest(token.encode(), expected.encode()):
                found = role
        return found

    def _sign(self, role: str, payload: str) -> str:
        return hmac.new(self._keys[role], payload.encode(), hashlib.sha256).hexdigest()

    def new_session(self, role: str) -> str:
        """A cookie value: ``role.expiry.nonce.signature``."""
        payload = f"{role}.{int(time.time() + self.session_s)}.{secrets.token_urlsafe(16)}"
        return f"{payload}.{self._sign(role, payload)}"

    def read_session(self, cookie: str | None) -> Principal | None:
        if not cookie or len(cookie) > 256:
            return None
        parts = cookie.split(".")
        if len(parts) != 4 or parts[0] not in self._keys:
            return None
        role, expiry, nonce, sig = parts
        if not hmac.compare_digest(sig, self._sign(role, f"{role}.{expiry}.{nonce}")):
            return None
        if not expiry.isdigit() or int(expiry) < time.time():
            return None
        return Principal(role, nonce)

    def from_bearer(self, header: str | None) -> Principal | None:
        if not header or not header.startswith("Bearer "):
            return None
        role = self.role_of(header[len("Bearer "):].strip())
        return Principal(role, "", bearer=True) if role else None

    def csrf_token(self, who: Principal) -> str:
        if who.bearer:
            return ""
        return hmac.new(self._keys[who.role], b"csrf\0" + who.nonce.encode(),
                        hashlib.sha256).hexdigest()

    def csrf_ok(self, who: Principal, token: str | None) -> bool:
        if who.bearer:
            return True
        return bool(token) and hmac.compare_digest(token or "", self.csrf_token(who))
