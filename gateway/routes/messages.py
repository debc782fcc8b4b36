"""The REST channel and the read side of conversations and activities."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, TypeVar

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_202_ACCEPTED

from channels.rest import RestChannel, RestMessageIn
from dispatch.infra.clean import clean_text
from dispatch.infra.errors import InvalidInput, NotFoundError
from dispatch.record.activities import ActivityFilter, ActivityLog, ActivityView
from dispatch.record.models import ActivityStatus
from dispatch.record.store import ConversationView, MessageStore, MessageView
from dispatch.work.execution import AuditNote, Executor
from dispatch.work.service import DispatchService
from gateway.auth import ApiRole, caller_of, require
from gateway.openapi import BODY
from gateway.params import MAX_ID, Id, IdOrZero
from gateway.routes.actions import acting

__all__ = ["MessagesController"]


class MessageAccepted(msgspec.Struct, frozen=True, kw_only=True):
    message_id: int
    conversation_id: int
    duplicate: bool
    messages_url: str


class ConversationPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[ConversationView]
    """Newest first (``GET /api/v1/conversations/{id}/messages`` has their messages)."""
    next_cursor: str | None
    """Pass as ``cursor`` for the next page; null on the last."""


class ActivityPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[ActivityView]
    """Newest first, without their events (``GET /api/v1/activities/{id}`` has them)."""
    next_cursor: str | None
    """Pass as ``cursor`` for the next page; null on the last."""


CURSOR = r"^[1-9][0-9]{0,17}$"
Cursor = Annotated[
    str | None,
    Parameter(description="The previous page's next_cursor, as it came", pattern=CURSOR),
]
Limit = Annotated[int, Parameter(ge=1, le=500, description="Page size")]


_Row = TypeVar("_Row", ActivityView, ConversationView)


def _cut(items: list[_Row], limit: int) -> tuple[list[_Row], str | None]:
    """A page of ``limit`` from ``limit + 1`` rows fetched (the extra one tells there is a next
    page), and the cursor to it."""
    more = len(items) > limit
    items = items[:limit]
    return items, str(items[-1].id) if more else None


def _text(value: str | None) -> str | None:
    """A filter's text as the database can hold it (a NUL matches nothing stored anyway)."""
    return None if value is None else clean_text(value)


def _since(value: str | None) -> dt.datetime | None:
    """An RFC 3339 date-time, offset included (what the document says ``since`` is)."""
    if value is None:
        return None
    try:
        since = msgspec.convert(value, dt.datetime)
    except msgspec.ValidationError:
        since = None
    if since is None or since.tzinfo is None:
        raise InvalidInput(
            "since: an RFC 3339 date-time with its offset, e.g. 2026-12-01T00:00:00Z",
            extra={"field": "since"},
        )
    return since


def _before(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if re.fullmatch(CURSOR, cursor) is None:
        raise InvalidInput("cursor: not one this API gave (use next_cursor as it came)")
    return int(cursor)


class MessagesController(Controller):
    path = "/api/v1"
    tags = ["messages"]  # noqa: RUF012 - litestar reads a class attribute
    guards = [require(ApiRole.ACTIONS)]  # noqa: RUF012

    @post(
        "/messages",
        status_code=HTTP_202_ACCEPTED,
        guards=[require(ApiRole.OPERATOR)],
        opt={BODY: RestMessageIn},  # parsed by the REST channel itself, with its own errors
    )
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
        latest: Annotated[
            bool, Parameter(description="The last `limit` messages instead of the first ones")
        ] = False,
    ) -> list[MessageView]:
        """The conversation's messages, inbound and outbound, oldest first, after id ``after``
        (the first ``limit`` of them, or with ``latest`` the last)."""
        if await store.conversation(conversation_id) is None:
            raise NotFoundError(f"no conversation {conversation_id}")
        return await store.list_messages(
            conversation_id, after_id=after, limit=limit, latest=latest
        )

    @get("/activities", guards=[require(ApiRole.OPERATOR)])
    async def list_activities(
        self,
        *,
        activities: NamedDependency[ActivityLog],
        agent: Annotated[str | None, Parameter(description="Agent name")] = None,
        action_type: Annotated[str | None, Parameter(description="Action type")] = None,
        status: Annotated[ActivityStatus | None, Parameter(description="Status")] = None,
        actor: Annotated[
            int | None, Parameter(ge=1, le=MAX_ID, description="Requester's user id")
        ] = None,
        channel: Annotated[str | None, Parameter(description="Channel asked on")] = None,
        since: Annotated[
            str | None,
            Parameter(
                description="Created at or after: an RFC 3339 date-time with its offset "
                "(2026-12-01T00:00:00Z)",
                schema_extra={"format": "date-time"},
            ),
        ] = None,
        cursor: Cursor = None,
        limit: Limit = 50,
    ) -> ActivityPage:
        """Activities, newest first: filtered by agent, action type, status, requester
        (``actor``, a user id), channel and creation time (``since``, ISO 8601), a page of
        ``limit`` at a time (``cursor``: the previous page's ``next_cursor``)."""
        where = ActivityFilter(
            agent=_text(agent),
            action_type=_text(action_type),
            status=status,
            actor_user_id=actor,
            channel=_text(channel),
            since=_since(since),
        )
        found = await activities.page(where, before_id=_before(cursor), limit=limit + 1)
        items, next_cursor = _cut(found, limit)
        return ActivityPage(items=items, next_cursor=next_cursor)

    @get("/conversations", guards=[require(ApiRole.OPERATOR)])
    async def list_conversations(
        self,
        *,
        store: NamedDependency[MessageStore],
        channel: Annotated[str | None, Parameter(description="Channel")] = None,
        user: Annotated[int | None, Parameter(ge=1, le=MAX_ID, description="User id")] = None,
        cursor: Cursor = None,
        limit: Limit = 50,
    ) -> ConversationPage:
        """Conversations, newest first, of a channel or a user, a page of ``limit`` at a time
        (``cursor``: the previous page's ``next_cursor``)."""
        found = await store.conversations(
            channel=_text(channel), user_id=user, before_id=_before(cursor), limit=limit + 1
        )
        items, next_cursor = _cut(found, limit)
        return ConversationPage(items=items, next_cursor=next_cursor)

    @post("/activities", status_code=HTTP_201_CREATED, guards=[require(ApiRole.OPERATOR)])
    async def record_activity(
        self,
        request: Request[Any, Any, Any],
        executor: NamedDependency[Executor],
        data: JSONBody[AuditNote],
    ) -> ActivityView:
        """Record something done outside Switchboard as an activity, for the audit: no
        handler runs; ``status`` is how it ended (completed, failed or cancelled; 422 for
        another)."""
        return await executor.note(data, acting(request))

    @get("/activities/{activity_id:int}")
    async def get_activity(
        self, activities: NamedDependency[ActivityLog], activity_id: Id
    ) -> ActivityView:
        """An activity with its full event history."""
        found = await activities.get(activity_id, with_events=True)
        if found is None:
            raise NotFoundError(f"no activity {activity_id}")
        return found
