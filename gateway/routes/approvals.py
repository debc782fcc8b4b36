"""Approve, reject and run requests over the API (operator tokens acting for a user)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, post
from litestar.di import NamedDependency

from dispatch.approvals import ApprovalService, Decision, Outcome
from dispatch.errors import ConflictError, ForbiddenError
from gateway.auth import ApiRole, caller_of, require
from gateway.params import Id

__all__ = ["ApprovalsController"]

API_CHANNEL = "api"


def _acting_user(request: Request[Any, Any, Any]) -> int:
    caller = caller_of(request)
    if caller.user_id is None:
        raise ForbiddenError(
            "this token acts for no user; decisions are a person's: create the token with "
            "`switchboard tokens create --user ...`"
        )
    return caller.user_id


def _answer(outcome: Outcome) -> Outcome:
    if not outcome.applied:
        raise ConflictError(outcome.text, extra={"status": outcome.status, "code": outcome.code})
    return outcome


async def _decide(
    request: Request[Any, Any, Any], approvals: ApprovalService, code: int, decision: Decision
) -> Outcome:
    outcome = await approvals.decide(
        user_id=_acting_user(request), code=code, decision=decision, channel=API_CHANNEL
    )
    return _answer(outcome)


class ApprovalsController(Controller):
    path = "/api/v1/activities/{activity_id:int}"
    tags = ["approvals"]  # noqa: RUF012 - litestar reads a class attribute
    guards = [require(ApiRole.OPERATOR)]  # noqa: RUF012

    @post("/approve", status_code=200)
    async def approve(
        self,
        request: Request[Any, Any, Any],
        approvals: NamedDependency[ApprovalService],
        activity_id: Id,
    ) -> Outcome:
        """Approve as the token's user (who must be an eligible approver); 409 if not counted."""
        return await _decide(request, approvals, activity_id, Decision.APPROVE)

    @post("/reject", status_code=200)
    async def reject(
        self,
        request: Request[Any, Any, Any],
        approvals: NamedDependency[ApprovalService],
        activity_id: Id,
    ) -> Outcome:
        """Reject as the token's user; 409 if the decision was not counted."""
        return await _decide(request, approvals, activity_id, Decision.REJECT)

    @post("/run", status_code=200)
    async def run(
        self,
        request: Request[Any, Any, Any],
        approvals: NamedDependency[ApprovalService],
        activity_id: Id,
    ) -> Outcome:
        """Run an approved request that waits to be run; 409 if it is not waiting."""
        outcome = await approvals.run(
            user_id=_acting_user(request), code=activity_id, channel=API_CHANNEL
        )
        return _answer(outcome)
