"""The one wiring point: :func:`create_app`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from litestar import Litestar, MediaType, Request, Response, get
from litestar.datastructures import State
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.routes import HTTPRoute
from litestar.static_files import create_static_files_router
from litestar.status_codes import HTTP_204_NO_CONTENT
from litestar.types import Scope

from channels.registry import identity_kinds
from dispatch.infra.logs import configure_logging
from dispatch.infra.throttle import AddressSlots
from dispatch.record.inbox import ChangeHub
from gateway.auth import TokenStore
from gateway.deadline import OutageWatch, RequestDeadline
from gateway.dependencies import PROVIDERS
from gateway.exceptions import exception_to_http_response
from gateway.inbound import Inbound
from gateway.mcp import McpDoor
from gateway.openapi import actions_document, operation_id, refine
from gateway.portal import LoginThrottle, PortalSessions
from gateway.requests import GatewayRequest
from gateway.routes.actions import ActionsController
from gateway.routes.admin import AdminController
from gateway.routes.approvals import ApprovalsController
from gateway.routes.chat import chat_socket, index, widget
from gateway.routes.events import events_socket
from gateway.routes.health import health
from gateway.routes.inbox import InboxController
from gateway.routes.messages import MessagesController
from gateway.routes.metrics import metrics
from gateway.routes.operations import OperationsController
from gateway.routes.portal import PortalController
from gateway.routes.portal_live import WATCH_EVERY_S, portal_live
from gateway.routes.providers import ProvidersController
from gateway.routes.takeover import TakeoverController
from gateway.routes.tasks import SUBMIT_BODY_BYTES, TasksController, released_artifact
from gateway.routes.webhooks import webhooks
from gateway.routes.workflows import WorkflowsController
from gateway.settings import Settings, get_settings
from migrations import prepare
from workers.compose import open_runtime

__all__ = ["create_app"]

DOCS_ASSETS = "/schema/assets"


def create_app(settings: Settings | None = None) -> Litestar:
    """The gateway application; ``settings`` default to the environment's (read once)."""
    settings = settings or get_settings()
    configure_logging(settings.core.log_level, settings.core.log_format)
    outages = OutageWatch()
    # External agents' door (the MCP SDK's server); it calls the runtime the lifespan opens.
    door = McpDoor(base_url=settings.base_url, max_body_bytes=SUBMIT_BODY_BYTES)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await prepare(settings.database)
        async with open_runtime(settings, role="gateway") as runtime:
            app.state.runtime = runtime
            app.state.settings = settings
            app.state.inbound = Inbound(runtime.channels, runtime.dispatcher)
            app.state.tokens = TokenStore(runtime.sessions, settings.http.admin_token)
            app.state.portal = PortalSessions(runtime.secret)
            app.state.login_throttle = LoginThrottle()
            app.state.chat_slots = AddressSlots(settings.throttle.sockets_per_address)
            app.state.change_hub = ChangeHub(runtime.sessions, every_s=WATCH_EVERY_S)
            outages.watch(runtime.engine)
            try:
                yield
            finally:
                await app.state.change_hub.stop()

    app = Litestar(
        route_handlers=[
            index,
            widget,
            actions_schema,
            create_static_files_router(
                path=DOCS_ASSETS,
                directories=[resources.files("gateway") / "static" / "swagger-ui"],  # type: ignore[list-item]
                include_in_schema=False,
            ),
            health,
            metrics,
            chat_socket,
            events_socket,
            MessagesController,
            ActionsController,
            WorkflowsController,
            PortalController,
            TakeoverController,
            InboxController,
            TasksController,
            ProvidersController,
            released_artifact,
            portal_live,
            OperationsController,
            ApprovalsController,
            AdminController,
            webhooks,
            *door.handlers(),
        ],
        dependencies=PROVIDERS,
        lifespan=[lifespan, door.running],
        exception_handlers={Exception: exception_to_http_response},
        middleware=[
            DefineMiddleware(
                RequestDeadline, budget_s=settings.http.request_timeout_s, outages=outages
            )
        ],
        state=State({"outages": outages}),
        request_class=GatewayRequest,
        request_max_body_size=settings.core.max_body_bytes,
        openapi_config=_openapi_config(),
        debug=False,
    )
    refine(
        app,
        public_url=settings.core.public_url,
        max_text_chars=settings.core.max_text_chars,
        identity_channels=sorted(identity_kinds()),
    )
    _complete_allow(app)
    return app


def _openapi_config() -> OpenAPIConfig:
    """The OpenAPI document's frame (``refine`` in :mod:`gateway.openapi` completes it)."""
    return OpenAPIConfig(
        title="Switchboard",
        version="0.1.0",
        path="/schema",
        components=Components(
            security_schemes={
                "bearer": SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="A token from `switchboard tokens create --role ...`. "
                    "Roles: `actions` runs catalog actions and workflows as a guest would "
                    "and reads requests (for ChatGPT Actions); `operator` also posts "
                    "messages, approves, rejects, cancels and takes conversations over; "
                    "`admin` also manages users, tokens and settings. Each operation says "
                    "the role it needs.",
                )
            }
        ),
        use_handler_docstrings=True,
        operation_id_creator=operation_id,
        # Served from the package: the docs work offline, nothing loads from a CDN.
        render_plugins=[
            SwaggerRenderPlugin(
                path=["/", "/swagger"],
                js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                standalone_preset_js_url=f"{DOCS_ASSETS}/swagger-ui-standalone-preset.js",
                favicon="<link rel='icon' href='data:,'>",
            )
        ],
    )


def _complete_allow(app: Litestar) -> None:
    """``OPTIONS`` answers ``Allow`` with every method of its path. Litestar makes the OPTIONS
    handler with a path's first route and keeps it when it merges the path's other handlers
    into a new route, so it listed only the first route's methods (``GET, OPTIONS`` for
    ``/api/v1/activities``, which also takes POST). Its function is replaced by one that
    answers for the merged route (same signature: what litestar prepared for it still fits)."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        allow = ", ".join(sorted(route.methods))
        for handler in route.route_handlers:
            if handler.handler_name == "options_handler":
                handler._fn = _options(allow)


def _options(allow: str) -> Any:
    def options_handler(scope: Scope) -> Response[None]:
        return Response(
            content=None,
            status_code=HTTP_204_NO_CONTENT,
            headers={"Allow": allow},
            media_type=MediaType.TEXT,
        )

    return options_handler


@get("/schema/actions.json", include_in_schema=False, sync_to_thread=False)
def actions_schema(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The OpenAPI document to import as a ChatGPT Action (see :mod:`gateway.openapi`)."""
    document: dict[str, Any] = actions_document(request.app)
    return document
