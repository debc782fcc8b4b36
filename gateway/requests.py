"""The gateway's request: JSON bodies that litestar decodes for a route pass our checks first
(UTF-8, and nesting within ``dispatch.infra.clean.MAX_JSON_DEPTH``)."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.exceptions import SerializationException

from channels.validation import require_depth, require_utf8
from dispatch.infra.errors import InvalidInput

__all__ = ["GatewayRequest"]


class GatewayRequest(Request[Any, Any, Any]):
    """A request whose JSON body is checked by us before litestar's decoder reads it, so a
    client's bad body is a 400 in our words whatever the decoder's release raises for it
    (msgspec 0.22 raised ``UnicodeDecodeError`` for invalid UTF-8 inside a string, which
    litestar does not catch: a 500)."""

    async def json(self) -> Any:
        body = await self.body()
        require_utf8(body)
        require_depth(body)  # litestar's decoder recurses (a RecursionError near 1,000 levels)
        try:
            return await super().json()
        except SerializationException:
            raise InvalidInput("the body is not valid JSON") from None
