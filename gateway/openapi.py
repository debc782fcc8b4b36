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
from collections.abc import Iterator
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

from dispatch.infra.clean import NO_NUL, VISIBLE
from gateway.auth import ApiRole, required_role
from gateway.params import MAX_ID

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
    "413": "The body is larger than `SWITCHBOARD_MAX_BODY_BYTES`.",
    "422": "Well formed, but not something that can be done here: an action, workflow or "
    "address this deployment does not take (`extra.field` names what).",
    "429": "The sender goes faster than allowed; retry after `Retry-After`.",
    "503": "Not answered now: a service Switchboard depends on cannot be reached "
    "(`unavailable`), or too much arrives at once (`overloaded`); retry after `Retry-After`.",
}
_NAMES = {
    "400": "invalid_input",
    "401": "unauthorized",
    "403": "forbidden",
    "404": "not_found",
    "409": "conflict",
    "413": "payload_too_large",
    "422": "unprocessable",
    "429": "rate_limited",
    "503": "unavailable",
}
_UNPROCESSABLE = {
    "executeAction",
    "recordActivity",
    "runWorkflow",
    "retryActivity",
    "linkIdentity",
    "assignConversation",
    "submitArtifact",
    "messageRequester",
    "reviewTask",
}
"""Operations whose well-formed request may name what this deployment does not have (422)."""
_CONFLICTS = {
    "cancelActivity",
    "retryActivity",
    "approveActivity",
    "rejectActivity",
    "runActivity",
    "takeOverConversation",
    "replyInConversation",
    "handBackConversation",
    "claimTask",
    "submitArtifact",
    "messageRequester",
    "releaseTask",
    "reviewTask",
}
_THROTTLED = {"postMessage"}
_REFERS = {"createToken"}
"""Operations whose body names a resource by id (404 if there is none)."""
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


def _schemas(node: Any) -> Iterator[Schema]:
    """Every schema object in ``node`` (a document part), nested ones included."""
    if isinstance(node, Schema):
        yield node
        for value in vars(node).values():
            yield from _schemas(value)
    elif isinstance(node, list | tuple):
        for item in node:
            yield from _schemas(item)
    elif isinstance(node, dict):
        for item in node.values():
            yield from _schemas(item)
    elif hasattr(node, "__dataclass_fields__"):
        for name in node.__dataclass_fields__:
            yield from _schemas(getattr(node, name))


def _integral_bounds(document: Any) -> None:
    """Bounds as integers (litestar writes them as floats: 2**63 - 1 became 9.22e18, which is
    2**63 and beyond what the server takes)."""
    for node in _schemas(document):
        for bound in ("minimum", "maximum"):
            value = getattr(node, bound)
            if isinstance(value, float) and value.is_integer():
                setattr(node, bound, min(int(value), MAX_ID))


def _structs(base: type[msgspec.Struct] = msgspec.Struct) -> Iterator[type[msgspec.Struct]]:
    for sub in base.__subclasses__():
        yield sub
        yield from _structs(sub)


def _closed_bodies(components: dict[str, Any]) -> None:
    """``additionalProperties: false`` where the server refuses unknown fields (a Struct with
    ``forbid_unknown_fields``): the document says what it does."""
    for struct in _structs():
        if struct.__struct_config__.forbid_unknown_fields and struct.__name__ in components:
            component = components[struct.__name__]
            if isinstance(component, Schema):
                component.additional_properties = False


def _errors_of(path: str, method: str, op: Any, *, secured: bool) -> list[str]:
    """The error statuses an operation can answer, as the server sends them."""
    name = op.operation_id or ""
    codes = ["400"] if op.parameters or method != "get" else []
    codes += ["401", "403"] if secured else []
    codes += ["404"] if "{" in path or name in _REFERS else []
    codes += ["409"] if name in _CONFLICTS else []
    codes += ["413"] if op.request_body is not None else []
    codes += ["422"] if name in _UNPROCESSABLE else []
    codes += ["429"] if name in _THROTTLED else []
    return [*codes, "503"]


def _only(required: list[str], absent: list[str], empty: list[str]) -> Schema:
    """One shape of a body: ``required`` given (not null), ``absent`` null or left out, ``empty``
    empty objects or left out."""
    properties: dict[str, Schema | Reference] = {
        **{name: Schema(type=OpenAPIType.STRING) for name in required},
        **{name: Schema(type=OpenAPIType.NULL) for name in absent},
        **{name: Schema(type=OpenAPIType.OBJECT, max_properties=0) for name in empty},
    }
    return Schema(required=required, properties=properties)


def _shapes(components: dict[str, Any], max_text_chars: int) -> None:
    """What the server refuses for a body's shape, that a Struct's schema cannot say."""
    execute = components.get("ExecuteRequest")
    if isinstance(execute, Schema):
        execute.one_of = [
            _only(["agent", "action_type"], ["intent", "workflow"], ["input"]),
            _only(["intent"], ["agent", "action_type", "workflow"], ["payload", "input"]),
            _only(["workflow"], ["agent", "action_type", "intent"], ["payload"]),
        ]
    for name in ("RestMessageIn", "Media"):  # every text of these is refused with a NUL
        for field in _schemas(getattr(components.get(name), "properties", None) or {}):
            if field.type == OpenAPIType.STRING and field.pattern is None:
                field.pattern = NO_NUL
    message = components.get("RestMessageIn")
    if isinstance(message, Schema) and message.properties:
        text = message.properties["text"]
        if isinstance(text, Schema):
            text.max_length = max_text_chars
            text.pattern = NO_NUL
        message.any_of = [
            Schema(properties={"text": Schema(type=OpenAPIType.STRING, pattern=VISIBLE)}),
            Schema(
                required=["media"],
                properties={"media": Schema(type=OpenAPIType.ARRAY, min_items=1)},
            ),
        ]


def _identity_channels(schema: Any, channels: list[str]) -> None:
    identity = schema.components.schemas.get("NewIdentity")
    if isinstance(identity, Schema) and identity.properties:
        channel = identity.properties["channel"]
        if isinstance(channel, Schema):
            channel.enum = list(channels)


def refine(
    app: Litestar,
    *,
    public_url: str | None,
    max_text_chars: int = 4096,
    identity_channels: list[str] | None = None,
) -> None:
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
    _integral_bounds(schema)
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
            if role is not None:
                op.security = [{"bearer": []}]
                op.description = (
                    f"{description}\n\nNeeds a token with role `{role.value}` or above."
                )
            codes = _errors_of(path, method, op, secured=role is not None)
            responses = dict(op.responses or {})
            for code in codes:
                responses[code] = _error(code)
            op.responses = responses
    _closed_bodies(schema.components.schemas)
    _shapes(schema.components.schemas, max_text_chars)
    if identity_channels is not None:
        _identity_channels(schema, identity_channels)


def _within(description: str, limit: int) -> str:
    """``description`` in ``limit`` characters, its closing sentence on the role it needs kept
    whole (Actions drops what is beyond the limit: the role is what must not go)."""
    if len(description) <= limit:
        return description
    body, gap, role = description.rpartition("\n\nNeeds a token with role ")
    if not gap:
        return description[: limit - 1] + "…"
    tail = gap + role
    return body[: limit - len(tail) - 1].rstrip() + "…" + tail


def actions_document(app: Litestar) -> dict[str, Any]:
    """The document for ChatGPT Actions: the ``/api/v1`` operations an ``actions`` or
    ``operator`` token may call (not the tasks external agents work), descriptions within
    Actions' limit."""
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
            if not path.startswith("/api/v1/") or role in (None, ApiRole.ADMIN, ApiRole.AGENT):
                continue
            short = copy.deepcopy(op)
            short["description"] = _within(short.get("description", ""), _DESCRIPTION_MAX)
            kept[method] = short
        if kept:
            paths[path] = kept
    document["paths"] = paths
    document["info"] = {**document["info"], "title": "Switchboard (actions)"}
    return document
