"""Approve, reject and run requests over the API (operator tokens acting for a user)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, post
from litestar.di import NamedDependency
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED

from dispatch.infra.errors import ConflictError
from dispatch.record.activities import ActivityView
from dispatch.record.models import ActivityStatus
from dispatch.work.approvals import ApprovalService, Decision, Outcome
from dispatch.work.execution import Executed, Executor
from dispatch.work.steering import Steering
from gateway.auth import ApiRole, caller_of, person_of, require
from gateway.params import Id
from gateway.routes.actions import acting

__all__ = ["ApprovalsController"]

API_CHANNEL = "api"


def _answer(outcome: Outcome) -> Outcome:
    if not outcome.applied:
        raise ConflictError(outcome.text, extra={"status": outcome.status, "code": outcome.code})
    return outcome


async def _decide(
    request: Request[Any, Any, Any], approvals: ApprovalService, code: int, decision: Decision
) -> Outcome:
    outcome = await approvals.decide(
        user_id=person_of(request, "decisions"), code=code, decision=decision, channel=API_CHANNEL
    )
    return _answer(outcome)


class ApprovalsController(Controller):
    path = "/api/v1/activities/{activity_id:int}"
    tags = ["approvals"]  # noqa: RUF012 - litestar reads a class attribute
    guards = [require(ApiRole.OPERATOR)]  # noqa: RUF012

    @post("/approve", status_code=200)
    async def approve_activity(
        self,
        request: Request[Any, Any, Any],
        approvals: NamedDependency[ApprovalService],
        activity_id: Id,
    ) -> Outcome:
        """Approve as the token's user (who must be an eligible approver); 409 if not counted."""
        return await _decide(request, approvals, activity_id, Decision.APPROVE)

    @post("/reject", status_code=200)
    async def reject_activity(
        self,
        request: Request[Any, Any, Any],
        approvals: NamedDependency[ApprovalService],
        activity_id: Id,
    ) -> Outcome:
        """Reject as the token's user; 409 if the decision was not counted."""
        return await _decide(request, approvals, activity_id, Decision.REJECT)

    @post("/cancel", status_code=200)
    async def cancel_activity(
        self, request: Request[Any, Any, Any], steering: NamedDependency[Steering], activity_id: Id
    ) -> Response[ActivityView]:
        """Withdraw a request that has not started (queued or awaiting approval): 200, it is
        `cancelled` and its requester told. One that is running is asked to stop: 202, still
        `in_progress` with `cancel_requested_at`; its worker stops it at its next lease renewal
        and it ends `cancelled`, its requester told. 409 once it has ended."""
        found = await steering.cancel(activity_id, actor=caller_of(request).actor)
        stopping = found.status == ActivityStatus.IN_PROGRESS
        return Response(found, status_code=HTTP_202_ACCEPTED if stopping else HTTP_200_OK)

    @post("/retry", status_code=202)
    async def retry_activity(
        self, request: Request[Any, Any, Any], executor: NamedDependency[Executor], activity_id: Id
    ) -> Executed:
        """A new attempt at a request that failed, was cancelled or expired, linked to it
        (``retry_of``), through the same checks as an execution by this token; 409 for one in
        any other state."""
        return await executor.retry(activity_id, acting(request))

    @post("/run", status_code=200)
    async def run_activity(
        self,
        request: Request[Any, Any, Any],
        approvals: NamedDependency[ApprovalService],
        activity_id: Id,
    ) -> Outcome:
        """Run an approved request that waits to be run; 409 if it is not waiting."""
        outcome = await approvals.run(
            user_id=person_of(request, "decisions"), code=activity_id, channel=API_CHANNEL
        )
        return _answer(outcome)
