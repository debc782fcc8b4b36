"""The REST channel and the read side of conversations and activities."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import Parameter
from litestar.status_codes import HTTP_202_ACCEPTED

from channels.rest import RestChannel
from dispatch.activities import ActivityLog, ActivityView
from dispatch.errors import NotFoundError
from dispatch.service import DispatchService
from dispatch.store import MessageStore, MessageView
from gateway.auth import ApiRole, caller_of, require
from gateway.params import Id, IdOrZero

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
        self,
        request: Request[Any, Any, Any],
        rest: NamedDependency[RestChannel],
        dispatcher: NamedDependency[DispatchService],
    ) -> MessageAccepted:
        """Accept a message; a repeated ``id`` is acknowledged again and processed only once.

        A token acting for a user speaks as that user, whatever ``sender`` says; a token acting
        for no user speaks only for senders who are guests (403 otherwise)."""
        inbound = rest.parse_body(await request.body())
        user_id = caller_of(request).user_id
        if user_id is None:
            inbound = msgspec.structs.replace(inbound, guests_only=True)
        else:
            inbound = msgspec.structs.replace(inbound, as_user=user_id)
        accepted = await dispatcher.ingest(inbound, client=True)
        return MessageAccepted(
            message_id=accepted.message_id,
            conversation_id=accepted.conversation_id,
            duplicate=accepted.duplicate,
            messages_url=f"/api/v1/conversations/{accepted.conversation_id}/messages",
        )

    @get("/conversations/{conversation_id:int}/messages")
    async def list_messages(
        self,
        store: NamedDependency[MessageStore],
        conversation_id: Id,
        after: IdOrZero = 0,
        limit: Annotated[int, Parameter(ge=1, le=500)] = 100,
    ) -> list[MessageView]:
        """The conversation's messages, inbound and outbound, oldest first, after id ``after``."""
        if await store.conversation(conversation_id) is None:
            raise NotFoundError(f"no conversation {conversation_id}")
        return await store.list_messages(conversation_id, after_id=after, limit=limit)

    @get("/activities/{activity_id:int}")
    async def get_activity(
        self, activities: NamedDependency[ActivityLog], activity_id: Id
    ) -> ActivityView:
        """An activity with its full event history."""
        found = await activities.get(activity_id, with_events=True)
        if found is None:
            raise NotFoundError(f"no activity {activity_id}")
        return found
