"""Users, their roles and their identities on channels (``switchboard users ...``).

An unknown sender becomes a guest the first time they write (:mod:`dispatch.record.inbound`);
here an operator names people, gives them roles, deactivates them, and links their channel
addresses, moving an address a guest already used over to the named user.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence

import argon2
import msgspec
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dispatch.infra.clean import VISIBLE
from dispatch.infra.errors import InvalidInput, NotFoundError, Unprocessable
from dispatch.language.i18n import LANGUAGES
from dispatch.record.models import Conversation, Role, User, UserIdentity

__all__ = [
    "MAX_CHARS",
    "NAME_PATTERN",
    "IdentityKind",
    "IdentityView",
    "UserDirectory",
    "UserView",
]

HIDDEN = "(not shown)"
MAX_CHARS = 200
NAME_PATTERN = rf"^[^\x00]*{VISIBLE}[^\x00]*$"
"""A name or address as the API takes it: something visible and no NUL (the database refuses
NUL; a blank one names nobody)."""
"""Longest name or address (the columns' width)."""


@dataclasses.dataclass(frozen=True)
class IdentityKind:
    """A kind of address people are known by: ``whatsapp`` (E.164 numbers, whichever WhatsApp
    provider carries them), ``telegram`` (numeric user ids), ... Each channel declares its own;
    the channel registry fills in ``channels``."""

    name: str
    normalize: Callable[[str], str]
    """The address as inbound messages carry it, so a link made by hand matches them; raises
    ``InvalidInput`` for one that cannot be of this kind."""
    help: str
    """What such an address looks like, for people (the CLI's option help)."""
    channels: tuple[str, ...] = ()
    """The channels whose senders are known by this kind of address."""
    hidden: bool = False
    """Addresses of this kind are never shown (a web chat session id)."""


class IdentityView(msgspec.Struct, frozen=True):
    channel: str
    address: str


class UserView(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    name: str
    role: str
    active: bool
    identities: list[IdentityView] = []


def _printable(value: str, field: str) -> None:
    if "\x00" in value or len(value) > MAX_CHARS:
        raise InvalidInput(
            f"the {field} must be under {MAX_CHARS} characters, without NUL", extra={"field": field}
        )


def _role(role: str) -> str:
    try:
        return Role(role).value
    except ValueError:
        raise InvalidInput(
            f"unknown role {role!r}; one of: {', '.join(r.value for r in Role)}"
        ) from None


MIN_PASSWORD_CHARS = 8
_HASHER = argon2.PasswordHasher()
_HASHING = asyncio.Semaphore(2)


@functools.cache
def _dummy_hash() -> str:
    """Verified against when a name has no password: the same work, so timing tells nothing."""
    return _HASHER.hash("not anyone's password")


class UserDirectory:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], kinds: Mapping[str, IdentityKind]
    ) -> None:
        self._sessions = sessions
        self._kinds = kinds

    def _kind(self, name: str) -> IdentityKind:
        kind = self._kinds.get(name)
        if kind is None:
            raise Unprocessable(
                f"unknown channel {name!r}; one of: {', '.join(sorted(self._kinds))}",
                extra={"field": "channel"},
            )
        return kind

    async def add(self, name: str, role: str) -> UserView:
        if not name.strip():
            raise InvalidInput("the name is empty")
        _printable(name, "name")
        async with self._sessions.begin() as session:
            user = User(name=name.strip(), role=_role(role), active=True)
            session.add(user)
            await session.flush()
            return await self._view(session, user)

    async def list(
        self, *, role: str | None = None, after_id: int = 0, limit: int = 100
    ) -> list[UserView]:
        """Users by id after ``after_id``, at most ``limit``, of ``role`` if given: two
        statements, whatever the page."""
        query = select(User).where(User.id > after_id).order_by(User.id).limit(limit)
        if role is not None:
            query = query.where(User.role == role)
        async with self._sessions() as session:
            return await self._views(session, list(await session.scalars(query)))

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
        """Give ``ref`` the identity (``channel``: an identity kind, address); returns the user
        and the identity's previous owner."""
        kind = self._kind(channel)
        if not address.strip():
            raise InvalidInput("the address is empty", extra={"field": "address"})
        _printable(address, "address")
        try:
            address = kind.normalize(address.strip())
        except InvalidInput as exc:  # well formed, but not an address of that kind
            raise Unprocessable(exc.detail, extra={"field": "address"}) from None
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
                .where(Conversation.channel.in_(kind.channels), Conversation.key == address)
                .values(user_id=user.id)
            )
            await session.flush()
            return await self._view(session, user), previous

    async def set_password(self, ref: str, password: str) -> UserView:
        """Give ``ref`` a password for the portal (argon2id; only its hash is kept)."""
        if len(password) < MIN_PASSWORD_CHARS:
            raise InvalidInput(
                f"a password has at least {MIN_PASSWORD_CHARS} characters",
                extra={"field": "password"},
            )
        async with _HASHING:
            hashed = await asyncio.to_thread(_HASHER.hash, password)
        async with self._sessions.begin() as session:
            user = await self._find(session, ref)
            user.password_hash = hashed
            return await self._view(session, user)

    async def set_language(self, ref: str, language: str | None) -> UserView:
        """Speak to ``ref`` in ``language`` whatever they write (None: from what they write)."""
        if language is not None and language not in LANGUAGES:
            raise InvalidInput(
                f"language: one of {', '.join(LANGUAGES)} (or auto)", extra={"field": "language"}
            )
        async with self._sessions.begin() as session:
            user = await self._find(session, ref)
            user.language = language
            return await self._view(session, user)

    async def check_password(self, name: str, password: str) -> UserView | None:
        """The active user ``name`` if ``password`` is theirs, else None (the same work is done
        for a name nobody has, so timing tells nothing)."""
        async with self._sessions() as session:
            # Only a user with a password can log in (a guest may have taken the same name).
            user = await session.scalar(
                select(User)
                .where(User.name == name.strip(), User.password_hash.is_not(None))
                .order_by(User.id)
            )
            stored = user.password_hash if user is not None else None
            try:
                # Off the event loop (64 MiB, ~0.1 s each), two at a time at most.
                async with _HASHING:
                    await asyncio.to_thread(_HASHER.verify, stored or _dummy_hash(), password)
            except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
                return None
            if user is None or stored is None or not user.active:
                return None
            return await self._view(session, user)

    async def _find(self, session: AsyncSession, ref: str) -> User:
        if ref.isdigit():
            user = await session.get(User, int(ref))
        else:
            named = list(await session.scalars(select(User).where(User.name == ref).limit(2)))
            if len(named) > 1:
                # Names are not unique (a web visitor names themselves): never guess.
                raise InvalidInput(f"several users are named {ref!r}; give the id (users list)")
            user = named[0] if named else None
        if user is None:
            raise NotFoundError(f"no user {ref!r}")
        return user

    def _shown(self, kind: str, address: str) -> str:
        known = self._kinds.get(kind)
        return HIDDEN if known is not None and known.hidden else address

    async def _view(self, session: AsyncSession, user: User) -> UserView:
        return (await self._views(session, [user]))[0]

    async def _views(self, session: AsyncSession, users: Sequence[User]) -> builtins.list[UserView]:
        """``users`` with their addresses, read in one statement."""
        identities: dict[int, list[UserIdentity]] = {}
        if users:
            for identity in await session.scalars(
                select(UserIdentity)
                .where(UserIdentity.user_id.in_([u.id for u in users]))
                .order_by(UserIdentity.id)
            ):
                identities.setdefault(identity.user_id, []).append(identity)
        return [self._shaped(u, identities.get(u.id, [])) for u in users]

    def _shaped(self, user: User, identities: Iterable[UserIdentity]) -> UserView:
        return UserView(
            id=user.id,
            name=user.name,
            role=user.role,
            active=user.active,
            identities=[
                IdentityView(i.channel, self._shown(i.channel, i.address)) for i in identities
            ],
        )
