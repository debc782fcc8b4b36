"""One error hierarchy for everything Switchboard raises on purpose.

It knows nothing of HTTP: each error has a stable ``code`` and a ``detail`` for people. The
gateway maps classes to status codes in one place (``gateway.exceptions``); a worker records
them on the activity; the web chat sends them as error frames.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "CatalogError",
    "ClientError",
    "ConflictError",
    "ForbiddenError",
    "InvalidInput",
    "NotFoundError",
    "Overloaded",
    "PayloadTooLarge",
    "RateLimited",
    "SettingsError",
    "SwitchboardError",
    "UnauthorizedError",
    "Unavailable",
    "Unprocessable",
]


class SwitchboardError(Exception):
    """Base of every error Switchboard raises on purpose."""

    code: ClassVar[str] = "internal_error"

    def __init__(self, detail: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra or {}


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

    code = "bad_request"


class InvalidInput(ClientError):
    code = "invalid_input"


class Unprocessable(ClientError):
    """Well formed, but not something that can be done (an unknown action, a payload that does
    not fit its schema); ``extra["field"]`` names the culprit."""

    code = "unprocessable"


class PayloadTooLarge(ClientError):
    code = "payload_too_large"


class NotFoundError(ClientError):
    code = "not_found"


class UnauthorizedError(ClientError):
    """No credentials, or ones that are not valid."""

    code = "unauthorized"


class ForbiddenError(ClientError):
    """The caller is known (or the sender verified) but may not do this."""

    code = "forbidden"


class RateLimited(ClientError):
    """The sender goes faster than allowed; nothing was stored. ``retry_after_s`` says when."""

    code = "rate_limited"

    def __init__(self, detail: str, *, retry_after_s: float) -> None:
        super().__init__(detail, extra={"retry_after_s": round(retry_after_s, 2)})
        self.retry_after_s = retry_after_s


class ConflictError(ClientError):
    """The request is valid but the state it acts on does not allow it."""

    code = "conflict"


class Unavailable(SwitchboardError):
    """Something Switchboard depends on (the database, the queue) cannot be reached right now:
    nothing was done, and the same request may be tried again shortly."""

    code = "unavailable"


class Overloaded(SwitchboardError):
    """Switchboard is up and so is everything it depends on, but it cannot take this request in
    time now (too much arrives at once): nothing may have been done; try again shortly."""

    code = "overloaded"
