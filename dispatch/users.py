"""Users, their roles and their identities on channels (``switchboard users ...``).

An unknown sender becomes a guest the first time they write (``MessageStore.accept``); here an
operator names people, gives them roles, deactivates them, and links their channel addresses,
moving an address a guest already used over to the named user.
"""

from __future__ import annotations

import msgspec
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from channels.phone import to_e164
from dispatch.models import Conversation, Role, User, UserIdentity
from gateway.errors import InvalidInput, NotFoundError

__all__ = ["IdentityView", "UserDirectory", "UserView", "normalize_address"]


class IdentityView(msgspec.Struct, frozen=True):
    channel: str
    address: str


class UserView(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    name: str
    role: str
    active: bool
    identities: list[IdentityView] = []


def normalize_address(channel: str, address: str) -> str:
    """The address as the channel's inbound messages carry it (so a link matches them)."""
    address = address.strip()
    if not address:
        raise InvalidInput("the address is empty")
    if channel == "whatsapp":
        return to_e164(address)
    if channel == "telegram":
        if not address.lstrip("-").isdigit():
            raise InvalidInput("a Telegram address is the numeric user id")
        return str(int(address))
    return address


def _role(role: str) -> str:
    try:
        return Role(role).value
    except ValueError:
        raise InvalidInput(
            f"unknown role {role!r}; one of: {', '.join(r.value for r in Role)}"
        ) from None


class UserDirectory:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def add(self, name: str, role: str) -> UserView:
        if not name.strip():
            raise InvalidInput("the name is empty")
        async with self._sessions.begin() as session:
            user = User(name=name.strip(), role=_role(role), active=True)
            session.add(user)
            await session.flush()
            return await self._view(session, user)

    async def list(self) -> list[UserView]:
        async with self._sessions() as session:
            users = list(await session.scalars(select(User).order_by(User.id)))
            return [await self._view(session, u) for u in users]

    async def get(self, ref: str) -> UserView:
        """A user by id or name."""
        async with self._sessions() as session:
            return await self._view(session, await self._find(session, ref))

    async def set_role(self, ref: str, role: str) -> UserView:
        async with self._sessions.begin() as session:
            user = await self._find(session, ref)
            user.role = _role(role)
            return await self._view(session, user)

    async def set_active(self, ref: str, active: bool) -> UserView:
        async with self._sessions.begin() as session:
            user = await self._find(session, ref)
            user.active = active
            return await self._view(session, user)

    async def link(self, ref: str, channel: str, address: str) -> tuple[UserView, int | None]:
        """Give ``ref`` the identity (channel, address); returns it and the previous owner."""
        address = normalize_address(channel, address)
        async with self._sessions.begin() as session:
            user = await self._find(session, ref)
            identity = await session.scalar(
                select(UserIdentity).where(
                    UserIdentity.channel == channel, UserIdentity.address == address
                )
            )
            previous = None
            if identity is None:
                session.add(UserIdentity(user_id=user.id, channel=channel, address=address))
            elif identity.user_id != user.id:
                previous = identity.user_id
                identity.user_id = user.id
            await session.execute(
                update(Conversation)
                .where(Conversation.channel == channel, Conversation.key == address)
                .values(user_id=user.id)
            )
            await session.flush()
            return await self._view(session, user), previous

    async def _find(self, session: AsyncSession, ref: str) -> User:
        user = (
            await session.get(User, int(ref))
            if ref.isdigit()
            else await session.scalar(select(User).where(User.name == ref).order_by(User.id))
        )
        if user is None:
            raise NotFoundError(f"no user {ref!r}")
        return user

    @staticmethod
    async def _view(session: AsyncSession, user: User) -> UserView:
        identities = await session.scalars(
            select(UserIdentity).where(UserIdentity.user_id == user.id).order_by(UserIdentity.id)
        )
        return UserView(
            id=user.id,
            name=user.name,
            role=user.role,
            active=user.active,
            identities=[IdentityView(i.channel, i.address) for i in identities],
        )
