"""The OpenAPI documents: the full one at ``/schema/openapi.json`` and, for ChatGPT Actions,
``/schema/actions.json`` (what an ``actions`` or ``operator`` token may call).

Litestar builds the document from the routes; this module names each operation as a person
would (``executeAction``, from the handler's name), gives each a summary and its docstring,
declares bearer auth only where a route needs a token (with the role it needs), documents the
errors as they really leave (``{"error", "detail", "extra"}``, :mod:`gateway.exceptions`),
and sets an absolute server URL from ``SWITCHBOARD_PUBLIC_URL``.
"""

from __future__ import annotations

import copy
from typing import Any

import msgspec
from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Reference,
    RequestBody,
    Schema,
    Server,
)
from litestar.routes import HTTPRoute

from gateway.auth import ApiRole, required_role

__all__ = ["ACTIONS_LIMIT", "BODY", "actions_document", "operation_id", "refine"]

ACTIONS_LIMIT = 30
"""Operations ChatGPT Actions takes from one document."""
_DESCRIPTION_MAX = 300
"""Characters ChatGPT Actions keeps of an operation's description."""
_ERROR = "Error"
_ERRORS = {
    "400": "Malformed: a parameter or field of the wrong shape (`detail` names it).",
    "401": "No token, or one that is unknown or revoked.",
    "403": "The token's role (or its user) may not do this.",
    "404": "No such resource.",
    "409": "The resource's state does not allow it (`extra.status` says what it is).",
    "422": "Well formed, but the catalog does not take it (`extra.field` names what).",
    "503": "A service Switchboard depends on cannot be reached; retry after `Retry-After`.",
}
_NAMES = {
    "400": "invalid_input",
    "401": "unauthorized",
    "403": "forbidden",
    "404": "not_found",
    "409": "conflict",
    "422": "unprocessable",
    "503": "unavailable",
}
_METHODS = ("get", "put", "post", "delete", "patch")


def operation_id(handler: HTTPRouteHandler, *_: Any) -> str:
    """``execute_action`` → ``executeAction``."""
    head, *rest = handler.handler_name.split("_")
    return head + "".join(word.capitalize() for word in rest)


def _handlers(app: Litestar) -> dict[str, HTTPRouteHandler]:
    found: dict[str, HTTPRouteHandler] = {}
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            name = handler.operation_id if isinstance(handler.operation_id, str) else None
            found[name or operation_id(handler)] = handler
    return found


def _roles(app: Litestar) -> dict[str, ApiRole | None]:
    return {name: required_role(h.resolve_guards()) for name, h in _handlers(app).items()}


BODY = "body"
"""A route's ``opt`` key naming the Struct it decodes its body into itself (so litestar does
not see it): documented as its request body."""
_SCHEMA_KEYS = {
    "minLength": "min_length",
    "maxLength": "max_length",
    "anyOf": "any_of",
    "additionalProperties": "additional_properties",
    "minItems": "min_items",
    "maxItems": "max_items",
    "minimum": "minimum",
    "maximum": "maximum",
}


def _spec(node: dict[str, Any]) -> Schema | Reference:
    """A JSON Schema (as msgspec writes it) as litestar's OpenAPI objects."""
    if "$ref" in node:
        return Reference(ref=node["$ref"])
    fields: dict[str, Any] = {}
    for key, value in node.items():
        converted: Any = value
        if key == "properties":
            converted = {name: _spec(sub) for name, sub in value.items()}
        elif key == "anyOf":
            converted = [_spec(sub) for sub in value]
        elif key == "items":
            converted = _spec(value)
        elif key == "type":
            converted = OpenAPIType(value)
        fields[_SCHEMA_KEYS.get(key, key)] = converted
    return Schema(**fields)


def _document_body(schema: Any, op: Any, body_type: type[Any]) -> None:
    (ref,), components = msgspec.json.decode(  # as JSON: a tuple default is a list
        msgspec.json.encode(
            msgspec.json.schema_components([body_type], ref_template="#/components/schemas/{name}")
        )
    )
    for name, component in components.items():
        schema.components.schemas.setdefault(name, _spec(component))
    op.request_body = RequestBody(
        content={"application/json": OpenAPIMediaType(schema=_spec(ref))}, required=True
    )


def _error_schema() -> Schema:
    return Schema(
        type="object",  # type: ignore[arg-type]
        required=["error", "detail"],
        properties={
            "error": Schema(type="string", description="A stable code."),  # type: ignore[arg-type]
            "detail": Schema(type="string", description="What is wrong, for people."),  # type: ignore[arg-type]
            "extra": Schema(
                description="More, where there is more: the parameters or fields at fault (a "
                "list of {key, message, source}), or the state found (an object)."
            ),
        },
    )


def _error(code: str) -> OpenAPIResponse:
    return OpenAPIResponse(
        description=_ERRORS[code],
        content={
            "application/json": OpenAPIMediaType(
                schema=Reference(ref=f"#/components/schemas/{_ERROR}"),
                example={"error": _NAMES[code], "detail": _ERRORS[code]},
            )
        },
    )


def _summary(description: str) -> str:
    """The first sentence (up to a colon), in a few words."""
    head = " ".join(
        description.split(". ", maxsplit=1)[0]
        .split(":", maxsplit=1)[0]
        .split(";", maxsplit=1)[0]
        .split()
    )
    if len(head) <= 80:
        return head.rstrip(".")
    return head[: head.rfind(" ", 0, 79)] + "…"


def refine(app: Litestar, *, public_url: str | None) -> None:
    """Name, describe and secure every operation of the app's document (built once here)."""
    schema = app.openapi_schema
    handlers = _handlers(app)
    roles = {name: required_role(h.resolve_guards()) for name, h in handlers.items()}
    schema.security = None
    if public_url:
        schema.servers = [Server(url=public_url.rstrip("/"))]
    if schema.components.schemas is None:
        schema.components.schemas = {}
    schema.components.schemas[_ERROR] = _error_schema()
    for path, item in (schema.paths or {}).items():
        for method in _METHODS:
            op = getattr(item, method, None)
            if op is None:
                continue
            role = roles.get(op.operation_id or "")
            handler = handlers.get(op.operation_id or "")
            if handler is not None and BODY in handler.opt and op.request_body is None:
                _document_body(schema, op, handler.opt[BODY])
            description = (op.description or "").strip().replace("``", "`")
            op.description = description
            op.summary = _summary(description)
            codes = ["400"] if op.parameters or method != "get" else []
            if role is not None:
                op.security = [{"bearer": []}]
                op.description = (
                    f"{description}\n\nNeeds a token with role `{role.value}` or above."
                )
                codes += ["401", "403"]
            if "{" in path:
                codes.append("404")
            if op.operation_id in {
                "cancelActivity",
                "retryActivity",
                "approveActivity",
                "rejectActivity",
                "runActivity",
                "takeOverConversation",
                "replyInConversation",
                "handBackConversation",
            }:
                codes.append("409")
            if op.operation_id in {"executeAction", "recordActivity", "runWorkflow"}:
                codes.append("422")
            codes.append("503")
            responses = dict(op.responses or {})
            for code in codes:
                responses[code] = _error(code)
            op.responses = responses


def actions_document(app: Litestar) -> dict[str, Any]:
    """The document for ChatGPT Actions: the ``/api/v1`` operations an ``actions`` or
    ``operator`` token may call, descriptions within Actions' limit."""
    roles = _roles(app)
    full = app.openapi_schema.to_schema()
    document = copy.deepcopy(full)
    paths: dict[str, Any] = {}
    for path, item in full.get("paths", {}).items():
        kept = {}
        for method, op in item.items():
            if method not in _METHODS:
                continue
            role = roles.get(op.get("operationId", ""))
            if not path.startswith("/api/v1/") or role in (None, ApiRole.ADMIN):
                continue
            short = copy.deepcopy(op)
            if len(short.get("description", "")) > _DESCRIPTION_MAX:
                short["description"] = short["description"][: _DESCRIPTION_MAX - 1] + "…"
            kept[method] = short
        if kept:
            paths[path] = kept
    document["paths"] = paths
    document["info"] = {**document["info"], "title": "Switchboard (actions)"}
    return document
