"""One error hierarchy, mapped to HTTP in one place (:func:`gateway.app.error_handler`)."""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "CatalogError",
    "ClientError",
    "ConflictError",
    "ForbiddenError",
    "InvalidInput",
    "NotFoundError",
    "PayloadTooLarge",
    "SettingsError",
    "SwitchboardError",
    "UnauthorizedError",
]


class SwitchboardError(Exception):
    """Base of every error Switchboard raises on purpose."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, detail: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra or {}

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "detail": self.detail}
        if self.extra:
            body["extra"] = self.extra
        return body


class SettingsError(SwitchboardError):
    """A setting has a bad value; raised at start-up."""

    code = "bad_setting"

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


class CatalogError(SwitchboardError):
    """The catalog file is invalid; ``location`` points at the bad entry."""

    code = "bad_catalog"

    def __init__(self, location: str, problem: str) -> None:
        super().__init__(f"{location}: {problem}")
        self.location = location


class ClientError(SwitchboardError):
    """The caller sent something wrong; nothing was stored."""

    status_code = 400
    code = "bad_request"


class InvalidInput(ClientError):
    status_code = 400
    code = "invalid_input"


class PayloadTooLarge(ClientError):
    status_code = 413
    code = "payload_too_large"


class NotFoundError(ClientError):
    status_code = 404
    code = "not_found"


class UnauthorizedError(ClientError):
    """No credentials, or ones that are not valid (HTTP 401)."""

    status_code = 401
    code = "unauthorized"


class ForbiddenError(ClientError):
    status_code = 403
    code = "forbidden"


class ConflictError(ClientError):
    status_code = 409
    code = "conflict"
