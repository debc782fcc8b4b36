"""The REST channel and the read side of conversations and activities."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, Parameter
from litestar.status_codes import HTTP_202_ACCEPTED

from dispatch.activities import ActivityView
from dispatch.store import MessageView
from gateway.auth import ApiRole, require
from gateway.errors import NotFoundError
from gateway.services import Services

__all__ = ["MessagesController"]


class MessageAccepted(msgspec.Struct, frozen=True, kw_only=True):
    message_id: int
    conversation_id: int
    duplicate: bool
    messages_url: str


class MessagesController(Controller):
    path = "/api/v1"
    tags = ["messages"]  # noqa: RUF012 - litestar reads a class attribute
    guards = [require(ApiRole.ACTIONS)]  # noqa: RUF012

    @post("/messages", status_code=HTTP_202_ACCEPTED, guards=[require(ApiRole.OPERATOR)])
    async def post_message(
        self, request: Request[Any, Any, Any], services: NamedDependency[Services]
    ) -> MessageAccepted:
        """Accept a message; a repeated ``id`` is acknowledged again and processed only once."""
        inbound = services.rest.parse_body(await request.body())
        accepted = await services.dispatcher.ingest(inbound)
        return MessageAccepted(
            message_id=accepted.message_id,
            conversation_id=accepted.conversation_id,
            duplicate=accepted.duplicate,
            messages_url=f"/api/v1/conversations/{accepted.conversation_id}/messages",
        )

    @get("/conversations/{conversation_id:int}/messages")
    async def list_messages(
        self,
        services: NamedDependency[Services],
        conversation_id: FromPath[int],
        after: Annotated[int, Parameter(ge=0)] = 0,
        limit: Annotated[int, Parameter(ge=1, le=500)] = 100,
    ) -> list[MessageView]:
        """The conversation's messages, inbound and outbound, oldest first, after id ``after``."""
        if await services.store.conversation(conversation_id) is None:
            raise NotFoundError(f"no conversation {conversation_id}")
        return await services.store.list_messages(conversation_id, after_id=after, limit=limit)

    @get("/activities/{activity_id:int}")
    async def get_activity(
        self, services: NamedDependency[Services], activity_id: FromPath[int]
    ) -> ActivityView:
        """An activity with its full event history."""
        found = await services.activities.get(activity_id, with_events=True)
        if found is None:
            raise NotFoundError(f"no activity {activity_id}")
        return found
