"""The generic JSON REST channel: ``POST /api/v1/messages``; replies are stored and read back at
``GET /api/v1/conversations/{id}/messages``."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import msgspec

from channels.base import Channel, ChannelContext
from channels.validation import decode_body, require_text
from dispatch.infra.clean import VISIBLE
from dispatch.record.messages import Delivered, InboundMessage, Media, OutboundMessage
from dispatch.record.models import Delivery
from dispatch.record.users import IdentityKind

__all__ = ["RestChannel", "RestMessageIn"]

Key = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=rf"^{VISIBLE}[^\x00]*$")]
"""A conversation or sender key: starts with something visible, no NUL (one regex for both
Python and the document's ECMAScript: their ``\\s`` and ``.`` differ)."""


class RestMessageIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``POST /api/v1/messages``."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    """Your message id: posting the same id again is a no-op (safe retries)."""
    conversation: Key
    """Your conversation key: replies for it are listed under the returned conversation_id."""
    sender: Key
    text: str
    sender_name: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    media: tuple[Media, ...] = ()


REST = IdentityKind(name="rest", normalize=str.strip, help="the sender name an API client uses")


class RestChannel(Channel):
    name: ClassVar[str] = "rest"
    identity: ClassVar[IdentityKind] = REST

    def __init__(self, settings: Any, context: ChannelContext) -> None:
        self._max_text_chars = context.core.max_text_chars

    def parse_body(self, body: bytes) -> InboundMessage:
        data = decode_body(body, RestMessageIn)
        text = require_text(data.text, self._max_text_chars, has_media=bool(data.media))
        return InboundMessage(
            channel=self.name,
            external_id=data.id,
            conversation_key=data.conversation,
            sender=data.sender,
            sender_name=data.sender_name,
            text=text,
            media=data.media,
            raw=msgspec.json.decode(body),
        )

    async def send(self, message: OutboundMessage) -> Delivered:
        # The stored outbound message is the delivery: clients read it from the API.
        return Delivered(status=Delivery.DELIVERED.value)
