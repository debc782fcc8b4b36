"""The supervisor portal at ``/portal``: its page, and logging in and out (``gateway.portal``)."""

from __future__ import annotations

from importlib import resources
from typing import Annotated, Any

import msgspec
from litestar import Controller, MediaType, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.params import JSONBody

from dispatch.infra.errors import ForbiddenError, InvalidInput, NotFoundError, UnauthorizedError
from dispatch.record.users import UserDirectory, UserView
from gateway.auth import portal_caller
from gateway.portal import COOKIE, CSRF_HEADER, PORTAL_ROLES, SESSION_S, PortalSessions
from gateway.settings import Settings

__all__ = ["PortalController"]


class Login(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]


class PortalUser(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    name: str
    role: str


class Me(msgspec.Struct, frozen=True, kw_only=True):
    user: PortalUser
    csrf: str
    """Send it as ``X-CSRF-Token`` with every call that changes something."""


async def portal_user(connection: ASGIConnection[Any, Any, Any, Any]) -> UserView | None:
    """The user of the connection's portal session, if it is one who may still use the portal
    (None: no session, or its user is gone, inactive or no longer of a portal role)."""
    sessions: PortalSessions = connection.app.state.portal
    session = sessions.read(connection.cookies.get(COOKIE))
    if session is None:
        return None
    users: UserDirectory = connection.app.state.runtime.users
    try:
        user = await users.get(str(session.user_id))
    except NotFoundError:
        return None
    return user if portal_caller(user.id, user.role, user.active) is not None else None


def _static(name: str) -> str:
    return resources.files("gateway").joinpath(f"static/{name}").read_text("utf-8")


class PortalController(Controller):
    path = "/portal"
    include_in_schema = False

    @get(["/", "/{view:str}", "/{view:str}/{item:int}"], media_type=MediaType.HTML)
    async def portal_page(self) -> str:
        """The portal's one page, at every view's own address (``/portal/conversations/12``):
        a reload or a shared link opens that view."""
        return _static("portal.html")

    @get("/app.js", media_type="text/javascript")
    async def portal_script(self) -> str:
        return _static("portal.js")

    @post("/login", status_code=200)
    async def login(
        self,
        request: Request[Any, Any, Any],
        users: NamedDependency[UserDirectory],
        settings: NamedDependency[Settings],
        data: JSONBody[Login],
    ) -> Response[Me]:
        """A session for a supervisor, operator or admin with a password: 401 for a wrong
        name or password, 403 for anyone else, 429 after repeated failures."""
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise InvalidInput("send the login as application/json")  # no cross-site form
        throttle = request.app.state.login_throttle
        client = request.client.host if request.client else "?"
        throttle.attempt(data.name, client)
        user = await users.check_password(data.name, data.password)
        if user is None:
            raise UnauthorizedError("wrong name or password")
        if user.role not in PORTAL_ROLES:
            raise ForbiddenError("only supervisors, operators and admins use the portal")
        throttle.succeeded(data.name, client)
        sessions: PortalSessions = request.app.state.portal
        cookie = sessions.issue(user.id)
        secure = (settings.core.public_url or "").startswith("https://")
        me = Me(
            user=PortalUser(id=user.id, name=user.name, role=user.role), csrf=sessions.csrf(cookie)
        )
        return Response(
            me,
            cookies=[
                Cookie(
                    key=COOKIE,
                    value=cookie,
                    max_age=SESSION_S,
                    path="/",
                    httponly=True,
                    secure=secure,
                    samesite="strict",
                )
            ],
        )

    @post("/logout", status_code=200)
    async def logout(self, request: Request[Any, Any, Any]) -> Response[dict[str, bool]]:
        sessions: PortalSessions = request.app.state.portal
        cookie = request.cookies.get(COOKIE)
        if cookie and not sessions.csrf_matches(cookie, request.headers.get(CSRF_HEADER)):
            raise ForbiddenError("logging out needs the session's X-CSRF-Token header")
        return Response(
            {"logged_out": True},
            cookies=[Cookie(key=COOKIE, value="", max_age=0, path="/", httponly=True)],
        )

    @get("/me")
    async def me(self, request: Request[Any, Any, Any]) -> Me:
        """Who is logged in, and the session's CSRF token (401 if no one)."""
        sessions: PortalSessions = request.app.state.portal
        cookie = request.cookies.get(COOKIE)
        if cookie is None or sessions.read(cookie) is None:
            raise UnauthorizedError("not logged in")
        user = await portal_user(request)
        if user is None:
            raise UnauthorizedError("this user may not use the portal any more")
        return Me(
            user=PortalUser(id=user.id, name=user.name, role=user.role),
            csrf=sessions.csrf(cookie),
        )
