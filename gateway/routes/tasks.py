"""Tasks over HTTP: for external agents without an MCP client (their token), and for the
people who review agents' work (the same service as ``/mcp``; see :mod:`dispatch.work.tasks`).

An agent's token lists the tasks it may claim, reads one, claims it, hands work in, writes to
the requester and gives a task back; a supervisor, operator or admin (acting for a user)
lists every task and reviews what was handed in. Nothing else admits an agent's token."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter, PathParameter

from dispatch.infra.errors import ForbiddenError, NotFoundError
from dispatch.record.artifacts import ARTIFACT_PATH, MAX_IMAGE_BYTES, ArtifactLinks
from dispatch.record.models import ActivityStatus
from dispatch.work.tasks import (
    MAX_MESSAGE_CHARS,
    ArtifactView,
    ReviewDecision,
    TaskService,
    TaskSummary,
    TaskView,
)
from gateway.auth import ApiRole, Caller, agent_of, caller_of, person_of, require
from gateway.params import Id

__all__ = ["TasksController", "released_artifact"]

SUBMIT_BODY_BYTES = MAX_IMAGE_BYTES * 4 // 3 + 64 * 1024
"""A submit's body: the largest screenshot in base64, and room for the rest."""
TASK_STATUSES = [
    ActivityStatus.WAITING_FOR_AGENT,
    ActivityStatus.CLAIMED,
    ActivityStatus.IN_REVIEW,
    ActivityStatus.CHANGES_REQUESTED,
    ActivityStatus.COMPLETED,
    ActivityStatus.REJECTED,
    ActivityStatus.FAILED,
    ActivityStatus.EXPIRED,
    ActivityStatus.CANCELLED,
]


class Submit(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    content: Annotated[str, msgspec.Meta(min_length=1)]
    """The work: code, text, a unified diff, or a PNG/JPEG screenshot in base64."""
    type: Annotated[str, msgspec.Meta(max_length=16)]
    """code, text, diff or screenshot."""
    title: Annotated[str, msgspec.Meta(max_length=200)] = ""
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    """The same key again: the same artifact (a retried submit stores one)."""


class Say(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_MESSAGE_CHARS)]


class Release(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""


class Review(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    decision: ReviewDecision
    comment: Annotated[str, msgspec.Meta(max_length=4000)] = ""
    """What to change (request_changes) or why not (reject): needed for both."""
    round: Annotated[int, msgspec.Meta(ge=1, le=10_000)] | None = None
    """The review round the reviewer saw (409 if the task has moved on since)."""


class Said(msgspec.Struct, frozen=True, kw_only=True):
    task_id: int
    sent: bool = True


def _staff(caller: Caller) -> None:
    if caller.role.rank < ApiRole.OPERATOR.rank:
        raise ForbiddenError("an agent's token or an operator's (or above) reads tasks")


class TasksController(Controller):
    path = "/api/v1/tasks"
    tags = ["tasks"]  # noqa: RUF012 - litestar reads a class attribute
    guards = [require(ApiRole.AGENT)]  # noqa: RUF012 - every route checks whose token it is

    @get("/")
    async def list_tasks(
        self,
        request: Request[Any, Any, Any],
        tasks: NamedDependency[TaskService],
        status: Annotated[
            ActivityStatus | None, Parameter(description="Operators: only tasks in this status")
        ] = None,
        limit: Annotated[int, Parameter(ge=1, le=100)] = 50,
    ) -> list[TaskSummary]:
        """An agent's token: the tasks it may claim, by priority then age. An operator's (or
        above): every task of the actions agents serve, newest first."""
        caller = caller_of(request)
        if caller.role == ApiRole.AGENT:
            return await tasks.queue(agent_of(request), limit=limit)
        _staff(caller)
        return await tasks.listing(status=status.value if status else None, limit=limit)

    @get("/{task_id:int}")
    async def get_task(
        self, request: Request[Any, Any, Any], tasks: NamedDependency[TaskService], task_id: Id
    ) -> TaskView:
        """One task: its request, the requester's conversation, the artifacts handed in and
        what was said about it (an agent sees only the tasks of the actions it serves)."""
        caller = caller_of(request)
        if caller.role == ApiRole.AGENT:
            return await tasks.get(task_id, agent_of(request))
        _staff(caller)
        return await tasks.get(task_id)

    @post("/{task_id:int}/claim", status_code=200)
    async def claim_task(
        self, request: Request[Any, Any, Any], tasks: NamedDependency[TaskService], task_id: Id
    ) -> TaskView:
        """Claim a waiting task (or renew your own claim); 409 naming its state if another
        agent has it."""
        return await tasks.claim(agent_of(request), task_id)

    @post("/{task_id:int}/submit", status_code=201, request_max_body_size=SUBMIT_BODY_BYTES)
    async def submit_artifact(
        self,
        request: Request[Any, Any, Any],
        tasks: NamedDependency[TaskService],
        task_id: Id,
        data: JSONBody[Submit],
    ) -> ArtifactView:
        """Hand work in for a task you hold: it goes to review. Text, code and diffs up to
        1 MB, screenshots up to 4 MB (413 above); a diff must be a unified diff (422)."""
        return await tasks.submit(
            agent_of(request),
            task_id,
            content=data.content,
            kind=data.type,
            title=data.title,
            idempotency_key=data.idempotency_key,
        )

    @post("/{task_id:int}/messages", status_code=202)
    async def message_requester(
        self,
        request: Request[Any, Any, Any],
        tasks: NamedDependency[TaskService],
        task_id: Id,
        data: JSONBody[Say],
    ) -> Said:
        """Write to the requester on their channel; their answer is attached to the task."""
        await tasks.message(agent_of(request), task_id, data.text)
        return Said(task_id=task_id)

    @post("/{task_id:int}/release", status_code=200)
    async def release_task(
        self,
        request: Request[Any, Any, Any],
        tasks: NamedDependency[TaskService],
        task_id: Id,
        data: JSONBody[Release],
    ) -> TaskSummary:
        """Give a task you hold back to the queue."""
        return await tasks.release(agent_of(request), task_id, data.reason)

    @post("/{task_id:int}/review", status_code=200)
    async def review_task(
        self,
        request: Request[Any, Any, Any],
        tasks: NamedDependency[TaskService],
        task_id: Id,
        data: JSONBody[Review],
    ) -> TaskSummary:
        """A reviewer's decision on the work in review: approve (the requester gets it),
        request_changes (back to the agent, with the comment) or reject (with the reason)."""
        caller = caller_of(request)
        _staff(caller)
        return await tasks.review(
            task_id,
            user_id=person_of(request, "reviews"),
            decision=data.decision,
            comment=data.comment,
            round_seen=data.round,
        )


SEEN_AS_DATA = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "private, max-age=300",
    "Referrer-Policy": "no-referrer",
}
"""What an agent wrote is data: shown as text (or an image), never run as a page."""


@get(f"{ARTIFACT_PATH}/{{token:str}}", include_in_schema=False)
async def released_artifact(
    request: Request[Any, Any, Any],
    tasks: NamedDependency[TaskService],
    token: Annotated[str, PathParameter(max_length=200)],
) -> Response[bytes]:
    """An artifact of a completed task, for whoever holds its link (the requester's reply
    carries it): a diff, code or text as plain text, a screenshot as its image."""
    links = ArtifactLinks(request.app.state.runtime.secret, request.app.state.settings.base_url)
    artifact_id = links.read(token)
    found = await tasks.released(artifact_id) if artifact_id is not None else None
    if found is None:
        raise NotFoundError("no such artifact, or its link is not valid")
    media_type, body = found
    return Response(body, media_type=media_type, headers=SEEN_AS_DATA)
