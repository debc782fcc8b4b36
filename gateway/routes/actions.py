"""Executing actions over the API: the same gate as chat (catalog, payload, permission,
approval), for operators, scripts and ChatGPT Actions."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED

from dispatch.record.models import Role
from dispatch.work.execution import Caller, Executed, ExecuteRequest, Executor
from gateway.auth import ApiRole, caller_of, require
from gateway.deadline import DEADLINE

__all__ = ["ActionsController", "acting"]

_TOKEN_ROLES = {ApiRole.ADMIN: Role.ADMIN, ApiRole.OPERATOR: Role.OPERATOR}
"""What a token acting for no user may run, as a user's role (an ``actions`` token: a guest's)."""


class ActionsController(Controller):
    path = "/api/v1/actions"
    tags = ["actions"]  # noqa: RUF012 - litestar reads a class attribute
    guards = [require(ApiRole.ACTIONS)]  # noqa: RUF012

    @post("/execute", status_code=HTTP_202_ACCEPTED)
    async def execute_action(
        self,
        request: Request[Any, Any, Any],
        executor: NamedDependency[Executor],
        data: JSONBody[ExecuteRequest],
    ) -> Response[Executed]:
        """Run an action as the token's user (or, for a token acting for no one, as its role):
        202 with the activity's id and status, or with ``sync``, 200 with its result once it
        ended within ``timeout_s``. 422 names what the catalog does not take, 403 an action the
        caller may not run; one that needs approval answers 202 ``awaiting_approval``."""
        if data.sync:
            # Waiting for the result is what was asked: the request's deadline waits with it.
            request.scope[DEADLINE].extend(data.timeout_s)  # type: ignore[literal-required]
        executed = await executor.execute(data, acting(request))
        status = HTTP_200_OK if data.sync and executed.ended else HTTP_202_ACCEPTED
        return Response(executed, status_code=status)


def acting(request: Request[Any, Any, Any]) -> Caller:
    """Whom an execution runs for: the token's user, or the role the token stands for."""
    caller = caller_of(request)
    role = _TOKEN_ROLES.get(caller.role, Role.GUEST).value
    return Caller(user_id=caller.user_id, role=role, actor=caller.actor)
