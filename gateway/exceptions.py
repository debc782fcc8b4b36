"""The one place errors become HTTP: every error leaves as ``{"error", "detail"[, "extra"]}``.

The core's hierarchy (``dispatch.infra.errors``) knows nothing of status codes; :data:`STATUS_CODES`
gives each class its code here, and a subclass takes its nearest ancestor's.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR, HTTP_503_SERVICE_UNAVAILABLE

from dispatch.infra.errors import (
    ClientError,
    ConflictError,
    ForbiddenError,
    InvalidInput,
    NotFoundError,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    SwitchboardError,
    UnauthorizedError,
    Unavailable,
    Unprocessable,
)
from dispatch.infra.outage import is_overload, is_unavailable

__all__ = [
    "RETRY_AFTER_S",
    "STATUS_CODES",
    "error_body",
    "exception_to_http_response",
    "status_code_of",
]

log = logging.getLogger("switchboard.http")

STATUS_CODES: dict[type[SwitchboardError], int] = {
    ClientError: 400,
    InvalidInput: 400,
    UnauthorizedError: 401,
    ForbiddenError: 403,
    NotFoundError: 404,
    ConflictError: 409,
    PayloadTooLarge: 413,
    Unprocessable: 422,
    RateLimited: 429,
    Unavailable: 503,
    Overloaded: 503,
}
RETRY_AFTER_S = 5
"""What a client is told to wait before trying again while a dependency is down."""


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def status_code_of(error: SwitchboardError) -> int:
    for kind in type(error).__mro__:
        if kind in STATUS_CODES:
            return STATUS_CODES[kind]
    return HTTP_500_INTERNAL_SERVER_ERROR


def error_body(error: SwitchboardError) -> dict[str, Any]:
    body: dict[str, Any] = {"error": error.code, "detail": error.detail}
    if error.extra:
        body["extra"] = error.extra
    return body


def _try_again(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """503 with Retry-After: overloaded (our own limit) or a dependency unavailable."""
    outages = getattr(request.app.state, "outages", None)
    if is_overload(exc) and (outages is None or outages.overloaded()):
        exc = Overloaded(
            "too much is arriving at once to take this now; nothing was stored, try again in "
            f"{RETRY_AFTER_S} s"
        )
    if isinstance(exc, Overloaded):
        body = error_body(exc)
    else:
        if outages is not None:
            outages.seen()  # a request that runs out of time now is answered `unavailable`
        log.warning("unavailable: %s", type(exc).__name__, extra={"path": request.url.path})
        body = {
            "error": Unavailable.code,
            "detail": "a service Switchboard depends on cannot be reached right now; "
            f"nothing was done, try again in {RETRY_AFTER_S} s",
        }
    return Response(
        body,
        status_code=HTTP_503_SERVICE_UNAVAILABLE,
        media_type=MediaType.JSON,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def exception_to_http_response(
    request: Request[Any, Any, Any], exc: Exception
) -> Response[dict[str, Any]]:
    """Litestar's exception handler for every route."""
    if isinstance(exc, Overloaded | Unavailable) or (
        not isinstance(exc, SwitchboardError | HTTPException)
        and (is_unavailable(exc) or is_overload(exc))
    ):
        return _try_again(request, exc)
    if isinstance(exc, RateLimited):
        return Response(
            error_body(exc),
            status_code=status_code_of(exc),
            media_type=MediaType.JSON,
            headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))},
        )
    if isinstance(exc, SwitchboardError) and status_code_of(exc) < 500:
        return Response(error_body(exc), status_code=status_code_of(exc), media_type=MediaType.JSON)
    if isinstance(exc, ValidationException):
        body: dict[str, Any] = {"error": "invalid_input", "detail": exc.detail}
        if exc.extra:
            body["extra"] = exc.extra
        return Response(body, status_code=exc.status_code, media_type=MediaType.JSON)
    if isinstance(exc, HTTPException):
        return Response(
            {"error": _HTTP_CODES.get(exc.status_code, "http_error"), "detail": exc.detail},
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
