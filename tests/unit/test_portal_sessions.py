"""The portal's session cookie and CSRF token (signed by itsdangerous, keyed per deployment)."""

from __future__ import annotations

import pytest

from gateway import portal
from gateway.portal import PortalSessions

SECRET = b"s" * 32


def test_a_session_reads_back_and_its_csrf_token_matches_only_itself() -> None:
    sessions = PortalSessions(SECRET)
    cookie, other = sessions.issue(7), sessions.issue(7)
    session = sessions.read(cookie)
    assert session is not None
    assert session.user_id == 7
    assert cookie != other  # two logins, two sessions
    assert sessions.csrf_matches(cookie, sessions.csrf(cookie))
    assert not sessions.csrf_matches(cookie, sessions.csrf(other))
    assert not sessions.csrf_matches(cookie, None)
    assert not sessions.csrf_matches(cookie, "ñ not a token")


@pytest.mark.parametrize(
    "forged",
    [
        lambda c: c[:-2] + ("AA" if not c.endswith("AA") else "BB"),
        lambda c: "eyJ1c2VyX2lkIjoxfQ." + c.split(".", 1)[1],  # another user, the same MAC
        lambda c: PortalSessions(b"t" * 32).issue(7),  # another deployment's key
        lambda c: c + "x" * 600,
        lambda c: "",
    ],
    ids=["tampered MAC", "swapped body", "other key", "too long", "empty"],
)
def test_a_forged_cookie_is_no_session(forged: object) -> None:
    sessions = PortalSessions(SECRET)
    cookie = sessions.issue(7)
    assert sessions.read(forged(cookie)) is None  # type: ignore[operator]


def test_an_expired_session_is_no_session(monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = PortalSessions(SECRET)
    cookie = sessions.issue(7)
    monkeypatch.setattr(portal, "SESSION_S", -1)
    assert sessions.read(cookie) is None
