"""The portal's inbox over the API: conversations as a support lead works them, the person
behind one, and who a conversation is assigned to (see :mod:`dispatch.record.inbox`)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter

from dispatch.infra.errors import NotFoundError, Unprocessable
from dispatch.record.inbox import Inbox, InboxPeople, InboxRow, InboxView, Person
from dispatch.record.models import STAFF
from dispatch.record.users import UserDirectory
from gateway.auth import ApiRole, caller_of, person_of, require
from gateway.params import MAX_ID, Id

__all__ = ["InboxController"]


class Assignment(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    user_id: Annotated[int, msgspec.Meta(ge=1, le=MAX_ID)] | None = None
    """Who has the conversation (null: no one)."""


class ReadUpTo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    message_id: Annotated[int, msgspec.Meta(ge=1, le=MAX_ID)] | None = None
    """The last message read (null or absent: the conversation's latest)."""


class ReadMark(msgspec.Struct, frozen=True, kw_only=True):
    conversation_id: int
    last_read_message_id: int


class Assigned(msgspec.Struct, frozen=True, kw_only=True):
    conversation_id: int
    assignee_user_id: int | None


class InboxController(Controller):
    path = "/api/v1"
    tags = ["inbox"]  # noqa: RUF012 - litestar reads a class attribute
    guards = [require(ApiRole.OPERATOR)]  # noqa: RUF012

    @get("/inbox")
    async def list_inbox(
        self,
        *,
        request: Request[Any, Any, Any],
        inbox: NamedDependency[Inbox],
        view: Annotated[InboxView, Parameter(description="all, mine or unassigned")] = (
            InboxView.ALL
        ),
        people: Annotated[
            InboxPeople, Parameter(description="visitors (not staff), staff or everyone")
        ] = InboxPeople.VISITORS,
        channel: Annotated[str | None, Parameter(max_length=32, description="Channel")] = None,
        limit: Annotated[int, Parameter(ge=1, le=200)] = 50,
    ) -> list[InboxRow]:
        """Conversations the people wrote in last, those asking for a person first: who, the
        last thing said, how long they have waited, what the caller has not read, whether
        someone took it over, who has it."""
        me = caller_of(request).user_id
        return await inbox.rows(
            view=view, me=me, people=people, channel=channel or None, limit=limit
        )

    @post("/conversations/{conversation_id:int}/read", status_code=200)
    async def read_conversation(
        self,
        request: Request[Any, Any, Any],
        inbox: NamedDependency[Inbox],
        conversation_id: Id,
        data: JSONBody[ReadUpTo],
    ) -> ReadMark:
        """The caller has read the conversation up to ``message_id`` (absent: all of it). A
        read mark is a person's: it needs a user (a portal login or a user's token)."""
        mark = await inbox.read(conversation_id, person_of(request, "read marks"), data.message_id)
        if mark is None:
            raise NotFoundError(f"no conversation {conversation_id}")
        return ReadMark(conversation_id=conversation_id, last_read_message_id=mark)

    @get("/conversations/{conversation_id:int}/person")
    async def conversation_person(
        self, inbox: NamedDependency[Inbox], conversation_id: Id
    ) -> Person:
        """Who is behind the conversation: name, addresses, language, latest requests."""
        found = await inbox.person(conversation_id)
        if found is None:
            raise NotFoundError(f"no conversation {conversation_id}")
        return found

    @post("/conversations/{conversation_id:int}/assign", status_code=200)
    async def assign_conversation(
        self,
        inbox: NamedDependency[Inbox],
        users: NamedDependency[UserDirectory],
        conversation_id: Id,
        data: JSONBody[Assignment],
    ) -> Assigned:
        """Give the conversation to a supervisor, operator or admin (``user_id``), or to no
        one (null)."""
        if data.user_id is not None:
            user = await users.get(str(data.user_id))
            if user.role not in STAFF or not user.active:
                raise Unprocessable(
                    "user_id: only an active supervisor, operator or admin is given a conversation",
                    extra={"field": "user_id"},
                )
        if not await inbox.assign(conversation_id, data.user_id):
            raise NotFoundError(f"no conversation {conversation_id}")
        return Assigned(conversation_id=conversation_id, assignee_user_id=data.user_id)
