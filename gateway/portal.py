"""The supervisor portal's sessions: a password login, a signed cookie, and CSRF protection.

A supervisor, operator or admin with a password (``switchboard users set-password NAME``) logs
in at ``/portal``; the gateway answers with a session cookie (HttpOnly, SameSite=Strict, Secure
behind HTTPS) signed with a key of this deployment, expiring after ``SESSION_S``. The portal's
page then calls the same ``/api/v1`` routes as a token would, as that user (a supervisor or
operator as the ``operator`` role, an admin as ``admin``); every call that changes something
must carry the session's CSRF token in ``X-CSRF-Token`` (a cookie alone is not enough, so
another site cannot make the browser act). Repeated wrong passwords for a name lock it out for
a while (429 with ``Retry-After``), growing with each further failure.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

import msgspec
from itsdangerous import BadData, Signer, URLSafeTimedSerializer

from dispatch.infra.errors import RateLimited
from dispatch.record.keys import derive
from dispatch.record.models import Role

__all__ = [
    "COOKIE",
    "CSRF_HEADER",
    "PORTAL_ROLES",
    "LoginThrottle",
    "PortalSession",
    "PortalSessions",
]

COOKIE = "sb_portal"
CSRF_HEADER = "x-csrf-token"
SESSION_S = 12 * 3600
MAX_COOKIE_CHARS = 512
PORTAL_ROLES = frozenset({Role.SUPERVISOR.value, Role.OPERATOR.value, Role.ADMIN.value})
"""Who may log in: guests and agents may not."""


class PortalSession(msgspec.Struct, frozen=True):
    user_id: int
    nonce: str
    """Random: two logins of one user are two sessions, with two CSRF tokens."""


class PortalSessions:
    """Signed, expiring session cookies and their CSRF tokens (nothing stored server-side),
    by itsdangerous: a timed signature for the cookie, a signature of the cookie under another
    purpose for its CSRF token."""

    def __init__(self, secret: bytes) -> None:
        key = derive(secret, "portal-sessions")
        self._cookies = URLSafeTimedSerializer(key, salt="portal-session")
        self._csrf = Signer(key, salt="portal-csrf")

    def issue(self, user_id: int) -> str:
        session = PortalSession(user_id=user_id, nonce=secrets.token_urlsafe(12))
        return str(self._cookies.dumps(msgspec.to_builtins(session)))

    def read(self, cookie: str | None) -> PortalSession | None:
        """The session a cookie carries, if it is ours and unexpired."""
        if not cookie or len(cookie) > MAX_COOKIE_CHARS:
            return None
        try:
            data = self._cookies.loads(cookie, max_age=SESSION_S)
            return msgspec.convert(data, PortalSession)
        except (BadData, msgspec.ValidationError):
            return None

    def csrf(self, cookie: str) -> str:
        """The CSRF token of a session."""
        return self._csrf.get_signature(cookie).decode()

    def csrf_matches(self, cookie: str, token: str | None) -> bool:
        """Compared in constant time (itsdangerous' own comparison)."""
        return token is not None and self._csrf.verify_signature(cookie, token)


@dataclass
class LoginThrottle:
    """Failed logins per name and per client address: after ``free`` failures (``ip_free``
    for an address) the key is locked out for ``base_s``, doubling with each further failure
    (at most ``max_s``); a success clears the name and is not held against the address. The
    address is the TCP peer's, or the one a trusted proxy forwarded
    (``SWITCHBOARD_TRUSTED_PROXIES``). An attempt counts as a failure before its
    password is checked (so attempts sent at once cannot all slip through), and is forgiven
    if it succeeds. Per process: a cluster's gateways each count their own."""

    free: int = 5
    ip_free: int = 20
    base_s: float = 30.0
    max_s: float = 900.0
    cap: int = 10_000
    _failures: dict[str, tuple[int, float]] = field(default_factory=dict)

    def attempt(self, name: str, client: str, *, now: float | None = None) -> None:
        """Raises :class:`RateLimited` while the name or the address is locked out; else
        counts this attempt as a failure until :meth:`succeeded` says otherwise."""
        now = time.monotonic() if now is None else now
        keys = ((f"name:{name.strip().lower()}", self.free), (f"ip:{client}", self.ip_free))
        for key, free in keys:
            count, until = self._failures.get(key, (0, 0.0))
            if count >= free and until > now:
                raise RateLimited(
                    f"too many failed logins; try again in {until - now:.0f} s",
                    retry_after_s=until - now,
                )
        for key, free in keys:
            count, _ = self._failures.get(key, (0, 0.0))
            count += 1
            lock_s = min(self.max_s, self.base_s * 2 ** (count - free)) if count >= free else 0.0
            self._store(key, (count, now + lock_s), now)

    def succeeded(self, name: str, client: str) -> None:
        """Only failures count: the name starts again, and this attempt, counted against the
        address until now, is forgiven (a supervisor logging in all day is not locked out)."""
        self._failures.pop(f"name:{name.strip().lower()}", None)
        key = f"ip:{client}"
        count, until = self._failures.get(key, (0, 0.0))
        if count <= 1:
            self._failures.pop(key, None)
        else:
            self._failures[key] = (count - 1, until)

    def _store(self, key: str, value: tuple[int, float], now: float) -> None:
        if key not in self._failures and len(self._failures) >= self.cap:
            # Forget what no longer locks anything; a key that still does is kept.
            for old in [k for k, (_, until) in self._failures.items() if until <= now]:
                del self._failures[old]
            if len(self._failures) >= self.cap:
                return
        self._failures[key] = value
