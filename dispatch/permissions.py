"""Who may request what. For now: what the catalog marks public, plus the roles it names."""

from __future__ import annotations

from dispatch.specs import ActionSpec

__all__ = ["ADMIN_ROLE", "may_request"]

ADMIN_ROLE = "admin"


def may_request(role: str | None, active: bool, action: ActionSpec) -> bool:
    """Whether a user with ``role`` may ask for ``action``; inactive users may ask for nothing.

    Checked at dispatch and again when a worker picks the job up.
    """
    if not active:
        return False
    return action.public or role == ADMIN_ROLE or (role is not None and role in action.roles)
