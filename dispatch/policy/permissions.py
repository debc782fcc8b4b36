"""Who may request what. For now: what the catalog marks public, plus the roles it names."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from dispatch.policy.specs import ActionSpec
from dispatch.record.models import User

__all__ = ["ADMIN_ROLE", "acting_role", "may_request", "requester_role"]

ADMIN_ROLE = "admin"


def may_request(role: str | None, active: bool, action: ActionSpec) -> bool:
    """Whether a user with ``role`` may ask for ``action``; inactive users may ask for nothing.

    Checked at dispatch and again when a worker picks the job up.
    """
    if not active:
        return False
    return action.public or role == ADMIN_ROLE or (role is not None and role in action.roles)


def acting_role(details: dict[str, Any]) -> str | None:
    """The role an activity with no requesting user was asked for with: an API token's that
    acts for no one (recorded with the request)."""
    role = (details.get("provenance") or {}).get("role")
    return role if isinstance(role, str) else None


async def requester_role(
    session: AsyncSession, user_id: int | None, details: dict[str, Any]
) -> tuple[User | None, str | None, bool]:
    """Who asked for an activity as permissions see them now: (user, role, active)."""
    if user_id is None:
        return None, acting_role(details), True
    user = await session.get(User, user_id)
    return (user, user.role, user.active) if user else (None, None, False)
