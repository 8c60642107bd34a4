"""Dashboard sessions: a signed, expiring cookie naming the server key that signed in, and a CSRF
token bound to the session.

The cookie holds ``{key id, Space, session id, expiry}`` (never the key), as base64url JSON with an
HMAC-SHA256 tag over it. The CSRF token is an HMAC of the session id under the same secret, so
every process that shares ``PERKBRIDGE_DASHBOARD_SECRET`` accepts it and none keeps server state.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

COOKIE_NAME = "perkbridge_session"
DASHBOARD_SCOPES = frozenset({"admin:config", "dashboard"})
"""A key holding either of these may sign in."""


@dataclass(frozen=True)
class Session:
    """A signed-in operator: the key (by id) that signed in, its Space, and when it expires."""

    key_id: str
    space: str
    session_id: str
    expires_at: int
    """Unix seconds."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    """Makes and checks session cookies and CSRF tokens under one secret."""

    def __init__(self, secret: bytes, *, ttl_seconds: int) -> None:
        if len(secret) < 16:
            raise ValueError("the dashboard session secret must be at least 16 bytes")
        self._secret = secret
        self.ttl_seconds = ttl_seconds

    @classmethod
    def from_setting(cls, secret: str | None, *, ttl_seconds: int) -> SessionSigner:
        """Over the configured secret, or a random one of this process when none is set."""
        raw = secret.encode() if secret else secrets.token_bytes(32)
        return cls(hashlib.sha256(b"perkbridge-dashboard\0" + raw).digest(), ttl_seconds=ttl_seconds)

    def issue(self, key_id: str, space: str, now: float) -> tuple[Session, str]:
        """A new session for ``key_id`` and its cookie value."""
        session = Session(key_id, space, secrets.token_urlsafe(16), int(now) + self.ttl_seconds)
        body = _b64(
            json.dumps(
                {"k": session.key_id, "s": session.space, "i": session.session_id, "e": session.expires_at},
                separators=(",", ":"),
            ).encode()
        )
        return session, f"{body}.{self._tag(body)}"

    def read(self, cookie: str | None, now: float) -> Session | None:
        """The session a cookie carries, or ``None`` when it is missing, forged, malformed or expired."""
        if not cookie or cookie.count(".") != 1:
            return None
        body, tag = cookie.split(".")
        if not hmac.compare_digest(tag, self._tag(body)):
            return None
        try:
            data = json.loads(_unb64(body))
            session = Session(str(data["k"]), str(data["s"]), str(data["i"]), int(data["e"]))
        except (ValueError, KeyError, TypeError):
            return None
        return session if session.expires_at > now else None

    def csrf_token(self, session: Session) -> str:
        """The token every state-changing form of this session carries."""
        return self._tag("csrf:" + session.session_id)

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token), self.csrf_token(session))

    def _tag(self, text: str) -> str:
        return _b64(hmac.new(self._secret, text.encode(), hashlib.sha256).digest())
