"""Users, tokens and settings: admin tokens only."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter

from dispatch.infra.config import SettingView
from dispatch.infra.errors import NotFoundError
from dispatch.record.models import Role
from dispatch.record.users import MAX_CHARS, NAME_PATTERN, UserDirectory, UserView
from gateway.auth import ApiRole, TokenStore, TokenView, require
from gateway.params import MAX_ID, Id, IdOrZero
from gateway.settings import Settings

__all__ = ["AdminController"]


Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CHARS, pattern=NAME_PATTERN)]
"""A user's or a token's name: something visible, no NUL, at most 200 characters."""
Address = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CHARS, pattern=NAME_PATTERN)]


class NewUser(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Name
    role: Role = Role.GUEST


class RoleChange(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    role: Role


class NewIdentity(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    channel: str
    """An identity kind: one of ``GET /api/v1/users``' identity channels (422 for another)."""
    address: Address
    """As that channel writes it (a phone number for WhatsApp; 422 if it is not one)."""


class NewToken(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Name
    role: Literal["actions", "operator", "admin"]
    """(An external agent's token names the actions it serves: `switchboard agents add`.)"""
    user_id: Annotated[int, msgspec.Meta(ge=1, le=MAX_ID)] | None = None


class CreatedToken(msgspec.Struct, frozen=True):
    id: int
    token: str
    """Shown once; only its SHA-256 is kept."""


class AdminController(Controller):
    path = "/api/v1"
    tags = ["admin"]  # noqa: RUF012 - litestar reads a class attribute
    guards = [require(ApiRole.ADMIN)]  # noqa: RUF012

    @get("/users")
    async def list_users(
        self,
        users: NamedDependency[UserDirectory],
        role: Annotated[Role | None, Parameter(description="Only users of this role")] = None,
        after: Annotated[IdOrZero, Parameter(description="Users after this id")] = 0,
        limit: Annotated[int, Parameter(ge=1, le=500)] = 100,
    ) -> list[UserView]:
        """Users by id, with their role, whether active, and their addresses: the first
        ``limit`` after id ``after`` (the next page: ``after`` the last one's id), of one
        ``role`` if given."""
        return await users.list(role=role, after_id=after, limit=limit)

    @post("/users", status_code=201)
    async def create_user(
        self, users: NamedDependency[UserDirectory], data: JSONBody[NewUser]
    ) -> UserView:
        """Add a user with a role (guest, agent, operator, supervisor, admin)."""
        return await users.add(data.name, data.role)

    @post("/users/{user_id:int}/role", status_code=200)
    async def set_user_role(
        self,
        users: NamedDependency[UserDirectory],
        user_id: Id,
        data: JSONBody[RoleChange],
    ) -> UserView:
        """Change a user's role; it applies to what they ask from now on."""
        return await users.set_role(str(user_id), data.role)

    @post("/users/{user_id:int}/deactivate", status_code=200)
    async def deactivate_user(self, users: NamedDependency[UserDirectory], user_id: Id) -> UserView:
        """Deactivate a user: they may ask for nothing, and a waiting request of theirs is
        refused when it would run."""
        return await users.set_active(str(user_id), False)

    @post("/users/{user_id:int}/identities", status_code=200)
    async def link_identity(
        self,
        users: NamedDependency[UserDirectory],
        user_id: Id,
        data: JSONBody[NewIdentity],
    ) -> UserView:
        """Give the user an address: ``channel`` is the kind of address (``whatsapp``,
        ``telegram``, ``webchat``, ``rest``), whichever channel carries it."""
        user, _ = await users.link(str(user_id), data.channel, data.address)
        return user

    @get("/tokens")
    async def list_tokens(self, tokens: NamedDependency[TokenStore]) -> list[TokenView]:
        """Every API token (never the token itself): name, role, user, whether revoked."""
        return await tokens.list()

    @post("/tokens", status_code=201)
    async def create_token(
        self, tokens: NamedDependency[TokenStore], data: JSONBody[NewToken]
    ) -> CreatedToken:
        """Create an API token with a role (actions, operator, admin), acting for a user or for
        no one; the token is shown in this answer only."""
        token, token_id = await tokens.create(name=data.name, role=data.role, user_id=data.user_id)
        return CreatedToken(id=token_id, token=token)

    @delete("/tokens/{token_id:int}", status_code=204)
    async def revoke_token(self, tokens: NamedDependency[TokenStore], token_id: Id) -> None:
        """Revoke an API token at once."""
        if not await tokens.revoke(token_id):
            raise NotFoundError(f"no live token {token_id}")

    @get("/settings")
    async def list_settings(self, settings: NamedDependency[Settings]) -> list[SettingView]:
        """Every setting with the value in effect, where it came from (default, env, .env) and
        its description; secrets show only whether they are set."""
        return settings.describe()
