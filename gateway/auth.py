"""Bearer tokens for the HTTP API, and the guard that checks them.

A token is shown once when created and stored only as its SHA-256. Each has a role:

- ``actions``: runs catalog actions and workflows as a guest would (through the same gate) and
  reads what was asked (for tools such as ChatGPT Actions);
- ``operator``: also sends messages, approves, rejects and runs requests;
- ``admin``: also manages users, tokens and reads the settings;
- ``agent``: an external agent's, below all of these: it sees, claims and works only the tasks
  of the actions it serves (``serves``).

``SWITCHBOARD_ADMIN_TOKEN``, if set, is an admin token from the environment (to bootstrap the
first real ones); it is compared in constant time and never stored or logged.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from typing import Any

import msgspec
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.handlers.base import BaseRouteHandler
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dispatch.infra.errors import ForbiddenError, InvalidInput, NotFoundError, UnauthorizedError
from dispatch.record.models import ApiToken, Role, User, utcnow
from dispatch.work.tasks import AgentCaller
from gateway.portal import COOKIE, CSRF_HEADER, PortalSessions

__all__ = [
    "ApiRole",
    "Caller",
    "TokenStore",
    "TokenView",
    "agent_of",
    "person_of",
    "portal_caller",
    "require",
]

NAME_CHARS = 200
TOKEN_PREFIX = "sb_"  # noqa: S105 - a prefix that makes leaked tokens greppable, not a secret


class ApiRole(enum.StrEnum):
    AGENT = "agent"
    """An external agent: it sees and acts on the tasks of the actions it serves, nothing else
    (below every other role, so no other route admits it)."""
    ACTIONS = "actions"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(ApiRole).index(self)


class Caller(msgspec.Struct, frozen=True, kw_only=True):
    """Who is calling the API: the token's role and, if it acts for one, its user."""

    token_id: int | None
    role: ApiRole
    user_id: int | None
    name: str = ""
    serves: tuple[str, ...] = ()
    """An agent's token: the actions (``agent.action``) it serves."""

    @property
    def actor(self) -> str:
        """Who did it, as activity events name actors: the token's user, else the token (the
        deployment's admin token has no row)."""
        if self.user_id is not None:
            return f"user:{self.user_id}"
        return f"token:{self.token_id}" if self.token_id is not None else "token:admin"


class TokenView(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    name: str
    role: str
    user_id: int | None
    created_at: str
    revoked: bool
    serves: list[str] = []


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], admin_token: str | None) -> None:
        self._sessions = sessions
        self._admin_hash = _hash(admin_token) if admin_token else None

    async def create(
        self,
        *,
        name: str,
        role: str,
        user_id: int | None = None,
        serves: tuple[str, ...] = (),
    ) -> tuple[str, int]:
        """A new token (shown to the caller once) and its id; an agent's names the actions it
        serves."""
        try:
            api_role = ApiRole(role)
        except ValueError:
            raise InvalidInput(
                f"unknown token role {role!r}; one of: {', '.join(r.value for r in ApiRole)}"
            ) from None
        if not name.strip():
            raise InvalidInput("a token needs a name")
        if "\x00" in name or len(name) > NAME_CHARS:
            raise InvalidInput(f"a token's name is under {NAME_CHARS} characters, without NUL")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        async with self._sessions.begin() as session:
            if user_id is not None and await session.get(User, user_id) is None:
                raise NotFoundError(f"no user {user_id}")
            if api_role == ApiRole.AGENT and (user_id is not None or not serves):
                raise InvalidInput("an agent's token acts for no user and serves some action")
            if api_role != ApiRole.AGENT and serves:
                raise InvalidInput("only an agent's token serves actions")
            row = ApiToken(
                name=name.strip(),
                role=api_role.value,
                token_hash=_hash(token),
                user_id=user_id,
                serves=list(serves) or None,
            )
            session.add(row)
            await session.flush()
            return token, row.id

    async def list(self) -> list[TokenView]:
        async with self._sessions() as session:
            rows = await session.scalars(select(ApiToken).order_by(ApiToken.id))
            return [
                TokenView(
                    id=r.id,
                    name=r.name,
                    role=r.role,
                    user_id=r.user_id,
                    created_at=r.created_at.isoformat(),
                    revoked=r.revoked_at is not None,
                    serves=list(r.serves or []),
                )
                for r in rows
            ]

    async def revoke(self, token_id: int) -> bool:
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(ApiToken)
                .where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
                .values(revoked_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    async def of_user(self, user_id: int) -> Caller | None:
        """A portal session's caller: its user, if still active and allowed in."""
        async with self._sessions() as session:
            user = await session.get(User, user_id)
        return None if user is None else portal_caller(user.id, user.role, user.active)

    async def identify(self, token: str) -> Caller | None:
        digest = _hash(token)
        if self._admin_hash is not None and hmac.compare_digest(digest, self._admin_hash):
            return Caller(token_id=None, role=ApiRole.ADMIN, user_id=None)
        async with self._sessions() as session:
            row = await session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
            if row is None or row.revoked_at is not None:
                return None
            if not hmac.compare_digest(row.token_hash, digest):
                return None
            if row.user_id is not None:
                user = await session.get(User, row.user_id)
                if user is None or not user.active:
                    return None  # a token acting for a deactivated user is dead with them
            return Caller(
                token_id=row.id,
                role=ApiRole(row.role),
                user_id=row.user_id,
                name=row.name,
                serves=tuple(row.serves or ()),
            )


def portal_caller(user_id: int, role: str, active: bool) -> Caller | None:
    """Whom a portal session speaks as: its user, if still active and allowed in."""
    api_role = _PORTAL_API_ROLES.get(role)
    if not active or api_role is None:
        return None
    return Caller(token_id=None, role=api_role, user_id=user_id)


_PORTAL_API_ROLES = {
    Role.ADMIN.value: ApiRole.ADMIN,
    Role.SUPERVISOR.value: ApiRole.OPERATOR,
    Role.OPERATOR.value: ApiRole.OPERATOR,
}
"""What a portal user may call, by their role (guests and agents have no portal)."""
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def _from_portal(connection: ASGIConnection[Any, Any, Any, Any]) -> Caller | None:
    """The caller of a portal session cookie; a change needs its CSRF token too."""
    sessions: PortalSessions | None = getattr(connection.app.state, "portal", None)
    cookie = connection.cookies.get(COOKIE)
    if sessions is None or not cookie or connection.scope["type"] != ScopeType.HTTP:
        return None  # a WebSocket cannot carry the CSRF header: the cookie is no login there
    session = sessions.read(cookie)
    if session is None:
        raise UnauthorizedError("the portal session ended; log in again")
    method = connection.scope.get("method")
    changes = method is not None and method not in _SAFE_METHODS
    if changes and not sessions.csrf_matches(cookie, connection.headers.get(CSRF_HEADER)):
        raise ForbiddenError("a change from the portal needs its X-CSRF-Token header")
    tokens: TokenStore = connection.app.state.tokens
    caller = await tokens.of_user(session.user_id)
    if caller is None:
        raise UnauthorizedError("this user may not use the portal any more")
    return caller


def require(role: ApiRole) -> Any:
    """A litestar guard: the request carries a valid bearer token of ``role`` or above (or a
    portal session whose user's role counts as one)."""

    async def guard(
        connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler
    ) -> None:
        header = connection.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        caller: Caller | None
        if sum(name.lower() == b"authorization" for name, _ in connection.scope["headers"]) > 1:
            raise UnauthorizedError("send one Authorization header, not several")
        if not header and (caller := await _from_portal(connection)) is not None:
            pass
        elif scheme.lower() != "bearer" or not token:
            raise UnauthorizedError("send 'Authorization: Bearer <token>'")
        else:
            # Exactly as issued: HTTP already trims the header's own spaces and tabs; anything
            # else around the token (a non-breaking space, say) makes it another token.
            tokens: TokenStore = connection.app.state.tokens
            caller = await tokens.identify(token)
        if caller is None:
            raise UnauthorizedError("unknown or revoked token")
        if caller.role.rank < role.rank:
            raise ForbiddenError(f"this needs a token with role {role.value} or above")
        connection.scope["switchboard_caller"] = caller  # type: ignore[typeddict-unknown-key]

    guard.role = role  # type: ignore[attr-defined]  # read by gateway.openapi
    return guard


def required_role(guards: Any) -> ApiRole | None:
    """The role a route needs (the strongest of its :func:`require` guards), if any."""
    roles = [guard.role for guard in guards if isinstance(getattr(guard, "role", None), ApiRole)]
    return max(roles, key=lambda role: role.rank) if roles else None


def agent_of(connection: ASGIConnection[Any, Any, Any, Any]) -> AgentCaller:
    """The external agent behind the call; any other caller is refused (tasks are claimed,
    worked and handed in by agents only)."""
    caller = caller_of(connection)
    if caller.role != ApiRole.AGENT or caller.token_id is None:
        raise ForbiddenError("only an agent's token claims and works tasks")
    return AgentCaller(token_id=caller.token_id, name=caller.name, serves=caller.serves)


def caller_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Caller:
    caller: Caller = connection.scope["switchboard_caller"]  # type: ignore[typeddict-item]
    return caller


def person_of(connection: ASGIConnection[Any, Any, Any, Any], what: str) -> int:
    """The user behind the call, for what only a person does (``what``: "decisions", "a
    takeover"); a token acting for no one is refused."""
    user_id = caller_of(connection).user_id
    if user_id is None:
        raise ForbiddenError(
            f"this token acts for no user; {what} are a person's: create the token with "
            "`switchboard tokens create --user ...`, or use the portal"
        )
    return user_id
