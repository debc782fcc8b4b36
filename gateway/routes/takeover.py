"""Human takeover over the API (and the portal): take a conversation over, answer, hand back."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from dispatch.infra.errors import NotFoundError
from dispatch.work.takeover import MAX_TEXT_CHARS, Takeover, Takeovers
from gateway.auth import ApiRole, person_of, require
from gateway.params import Id

__all__ = ["TakeoverController"]


class HumanMessage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT_CHARS)]


class TakeoverController(Controller):
    path = "/api/v1/conversations/{conversation_id:int}"
    tags = ["takeover"]  # noqa: RUF012 - litestar reads a class attribute
    guards = [require(ApiRole.OPERATOR)]  # noqa: RUF012

    @get("/takeover")
    async def get_takeover(
        self, takeovers: NamedDependency[Takeovers], conversation_id: Id
    ) -> Takeover:
        """Who has taken this conversation over (404 if the bot answers it)."""
        found = await takeovers.current(conversation_id)
        if found is None:
            raise NotFoundError(f"conversation {conversation_id} is not taken over")
        return found

    @post("/takeover", status_code=200)
    async def take_over_conversation(
        self,
        request: Request[Any, Any, Any],
        takeovers: NamedDependency[Takeovers],
        conversation_id: Id,
    ) -> Takeover:
        """Stop the bot on this conversation: its user's messages are kept for you (see the
        conversation's messages) and the user is told a person answers. 409 if taken over."""
        return await takeovers.take(conversation_id, user_id=person_of(request, "takeovers"))

    @post("/reply", status_code=202)
    async def reply_in_conversation(
        self,
        request: Request[Any, Any, Any],
        takeovers: NamedDependency[Takeovers],
        conversation_id: Id,
        data: JSONBody[HumanMessage],
    ) -> Takeover:
        """Send the user a message on their own channel (its delivery status shows in the
        conversation's messages). 409 unless you took the conversation over."""
        return await takeovers.send(
            conversation_id, data.text, user_id=person_of(request, "takeovers")
        )

    @post("/handback", status_code=200)
    async def hand_back_conversation(
        self,
        request: Request[Any, Any, Any],
        takeovers: NamedDependency[Takeovers],
        conversation_id: Id,
    ) -> Takeover:
        """The bot answers again from the next message on; the user is told. 409 unless taken
        over."""
        return await takeovers.hand_back(conversation_id, user_id=person_of(request, "takeovers"))
