"""The one wiring point: :func:`create_app`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from dispatch.logs import configure_logging
from gateway.auth import TokenStore
from gateway.dependencies import PROVIDERS
from gateway.exceptions import exception_to_http_response
from gateway.routes.admin import AdminController
from gateway.routes.approvals import ApprovalsController
from gateway.routes.chat import chat_socket, index
from gateway.routes.health import health
from gateway.routes.messages import MessagesController
from gateway.routes.metrics import metrics
from gateway.routes.webhooks import webhook_get, webhook_post
from gateway.settings import Settings, get_settings
from migrations import prepare
from workers.compose import open_runtime

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> Litestar:
    """The gateway application; ``settings`` default to the environment's (read once)."""
    settings = settings or get_settings()
    configure_logging(settings.core.log_level)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await prepare(settings.database)
        async with open_runtime(settings, role="gateway") as runtime:
            app.state.runtime = runtime
            app.state.settings = settings
            app.state.tokens = TokenStore(runtime.sessions, settings.http.admin_token)
            yield

    return Litestar(
        route_handlers=[
            index,
            health,
            metrics,
            chat_socket,
            MessagesController,
            ApprovalsController,
            AdminController,
            webhook_post,
            webhook_get,
        ],
        dependencies=PROVIDERS,
        lifespan=[lifespan],
        exception_handlers={Exception: exception_to_http_response},
        request_max_body_size=settings.core.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Switchboard",
            version="0.1.0",
            path="/schema",
            components=Components(
                security_schemes={
                    "bearer": SecurityScheme(
                        type="http",
                        scheme="bearer",
                        description="A token from `switchboard tokens create --role ...` "
                        "(roles: actions = read-only, operator, admin).",
                    )
                }
            ),
            security=[{"bearer": []}],
        ),
        debug=False,
    )
