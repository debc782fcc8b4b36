"""The one wiring point: :func:`create_app`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from litestar import Litestar, MediaType, Request, Response
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from gateway.errors import SwitchboardError
from gateway.logging import configure_logging
from gateway.routes.admin import AdminController
from gateway.routes.approvals import ApprovalsController
from gateway.routes.chat import chat_socket, index
from gateway.routes.health import health
from gateway.routes.messages import MessagesController
from gateway.routes.metrics import metrics
from gateway.routes.webhooks import telegram_inbound, twilio_inbound, twilio_status
from gateway.services import Services, build_services
from gateway.settings import Settings, get_settings

__all__ = ["create_app", "error_handler"]

log = logging.getLogger("switchboard.http")


def error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """Every error leaves as JSON: ``{"error": code, "detail": text, "extra": {...}}``."""
    if isinstance(exc, SwitchboardError):
        return Response(exc.to_body(), status_code=exc.status_code, media_type=MediaType.JSON)
    if isinstance(exc, ValidationException):
        body: dict[str, Any] = {"error": "invalid_input", "detail": exc.detail}
        if exc.extra:
            body["extra"] = exc.extra
        return Response(body, status_code=exc.status_code, media_type=MediaType.JSON)
    if isinstance(exc, HTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "http_error"
        )
        return Response(
            {"error": code, "detail": exc.detail},
            status_code=exc.status_code,
            media_type=MediaType.JSON,
            headers=exc.headers,
        )
    log.exception("unhandled error", extra={"path": request.url.path})
    return Response(
        {"error": "internal_error", "detail": "internal error; see the gateway log"},
        status_code=HTTP_500_INTERNAL_SERVER_ERROR,
        media_type=MediaType.JSON,
    )


def create_app(settings: Settings | None = None) -> Litestar:
    """The gateway application; ``settings`` default to the environment's (read once)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with build_services(settings, role="gateway") as services:
            app.state.services = services
            yield

    def provide_services(state: State) -> Services:
        services: Services = state.services
        return services

    return Litestar(
        route_handlers=[
            index,
            health,
            metrics,
            chat_socket,
            MessagesController,
            ApprovalsController,
            AdminController,
            twilio_inbound,
            twilio_status,
            telegram_inbound,
        ],
        dependencies={"services": Provide(provide_services, sync_to_thread=False)},
        lifespan=[lifespan],
        exception_handlers={Exception: error_handler},
        request_max_body_size=settings.http.max_body_bytes,
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
