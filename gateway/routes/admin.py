"""Users, tokens and settings: admin tokens only."""

from __future__ import annotations

import msgspec
from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from dispatch.users import UserView
from gateway.auth import ApiRole, TokenView, require
from gateway.errors import NotFoundError
from gateway.services import Services

__all__ = ["AdminController"]


class NewUser(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    role: str = "guest"


class RoleChange(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    role: str


class NewIdentity(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    channel: str
    address: str


class NewToken(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    role: str
    user_id: int | None = None


class CreatedToken(msgspec.Struct, frozen=True):
    id: int
    token: str
    """Shown once; only its SHA-256 is kept."""


class SettingView(msgspec.Struct, frozen=True):
    variable: str
    default: str
    doc: str


class AdminController(Controller):
    path = "/api/v1"
    tags = ["admin"]  # noqa: RUF012 - litestar reads a class attribute
    guards = [require(ApiRole.ADMIN)]  # noqa: RUF012

    @get("/users")
    async def list_users(self, services: NamedDependency[Services]) -> list[UserView]:
        return await services.users.list()

    @post("/users", status_code=201)
    async def add_user(
        self, services: NamedDependency[Services], data: JSONBody[NewUser]
    ) -> UserView:
        return await services.users.add(data.name, data.role)

    @post("/users/{user_id:int}/role", status_code=200)
    async def set_role(
        self,
        services: NamedDependency[Services],
        user_id: FromPath[int],
        data: JSONBody[RoleChange],
    ) -> UserView:
        return await services.users.set_role(str(user_id), data.role)

    @post("/users/{user_id:int}/deactivate", status_code=200)
    async def deactivate(
        self, services: NamedDependency[Services], user_id: FromPath[int]
    ) -> UserView:
        return await services.users.set_active(str(user_id), False)

    @post("/users/{user_id:int}/identities", status_code=200)
    async def link(
        self,
        services: NamedDependency[Services],
        user_id: FromPath[int],
        data: JSONBody[NewIdentity],
    ) -> UserView:
        user, _ = await services.users.link(str(user_id), data.channel, data.address)
        return user

    @get("/tokens")
    async def list_tokens(self, services: NamedDependency[Services]) -> list[TokenView]:
        return await services.tokens.list()

    @post("/tokens", status_code=201)
    async def create_token(
        self, services: NamedDependency[Services], data: JSONBody[NewToken]
    ) -> CreatedToken:
        token, token_id = await services.tokens.create(
            name=data.name, role=data.role, user_id=data.user_id
        )
        return CreatedToken(id=token_id, token=token)

    @delete("/tokens/{token_id:int}", status_code=204)
    async def revoke_token(
        self, services: NamedDependency[Services], token_id: FromPath[int]
    ) -> None:
        if not await services.tokens.revoke(token_id):
            raise NotFoundError(f"no live token {token_id}")

    @get("/settings")
    async def settings(self, services: NamedDependency[Services]) -> list[SettingView]:
        """Every setting with its default and description (values, secrets above all, are not
        shown)."""
        return [SettingView(v, d, doc) for v, d, doc in services.settings.describe()]
