"""Workflows over the API: what the catalog declares, starting a run, and following it."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED

from dispatch.infra.errors import NotFoundError
from dispatch.policy.catalog import Catalog
from dispatch.policy.specs import FieldSpec
from dispatch.record.models import Priority
from dispatch.work.execution import MAX_WAIT_S, Executed, ExecuteRequest, Executor
from dispatch.work.runs import RunView, WorkflowRuns
from gateway.auth import ApiRole, require
from gateway.params import Id
from gateway.routes.actions import acting

__all__ = ["WorkflowsController"]


class StepInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    agent: str
    action: str
    depends_on: list[str]
    priority: Priority | None
    on_failure: str


class WorkflowInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    description: str
    input: dict[str, FieldSpec]
    """The run's input fields (as an action's payload)."""
    steps: list[StepInfo]
    """In an order where each step follows its dependencies."""
    public: bool
    roles: list[str]
    needs_approval: bool
    examples: list[str]


class RunRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    input: dict[str, Any] = {}
    priority: Priority | None = None
    """Of the request that starts the run; each step takes its own (the catalog's)."""
    sync: bool = False
    """Wait for the run to end (up to ``timeout_s``)."""
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=MAX_WAIT_S)] = 10.0
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None


class WorkflowsController(Controller):
    path = "/api/v1"
    tags = ["workflows"]  # noqa: RUF012 - litestar reads a class attribute
    guards = [require(ApiRole.ACTIONS)]  # noqa: RUF012

    @get("/workflows")
    async def list_workflows(self, catalog: NamedDependency[Catalog]) -> list[WorkflowInfo]:
        """The catalog's workflows: input fields, steps with their dependencies, who may start
        one and whether starting needs approval."""
        return [
            WorkflowInfo(
                name=name,
                description=flow.spec.description,
                input=dict(flow.spec.input),
                steps=[
                    StepInfo(
                        id=step_id,
                        agent=flow.steps[step_id].agent,
                        action=flow.steps[step_id].action,
                        depends_on=list(flow.steps[step_id].depends_on),
                        priority=flow.steps[step_id].priority,
                        on_failure=flow.steps[step_id].on_failure,
                    )
                    for step_id in flow.order
                ],
                public=flow.spec.public,
                roles=list(flow.spec.roles),
                needs_approval=flow.spec.approval is not None,
                examples=list(flow.spec.examples),
            )
            for name, flow in catalog.workflows.items()
        ]

    @post("/workflows/{workflow:str}/run", status_code=HTTP_202_ACCEPTED)
    async def run_workflow(
        self,
        request: Request[Any, Any, Any],
        executor: NamedDependency[Executor],
        workflow: Annotated[str, Parameter(max_length=100, description="The workflow's name")],
        data: JSONBody[RunRequest],
    ) -> Response[Executed]:
        """Start a run as the token's user (or role), through the same gate as any request:
        202 with the run's id (``activity_id``) and ``workflow_run_url``, or with ``sync``, 200
        once the run ended within ``timeout_s``. 404 for an unknown workflow, 422 names a bad
        input field, 403 a workflow the caller may not start; one that needs approval answers
        202 ``awaiting_approval``."""
        if not executor.knows_workflow(workflow):
            raise NotFoundError(f"no workflow {workflow!r} in the catalog")
        executed = await executor.execute(
            ExecuteRequest(
                workflow=workflow,
                input=data.input,
                priority=data.priority,
                sync=data.sync,
                timeout_s=data.timeout_s,
                idempotency_key=data.idempotency_key,
            ),
            acting(request),
        )
        status = HTTP_200_OK if data.sync and executed.ended else HTTP_202_ACCEPTED
        return Response(executed, status_code=status)

    @get("/workflow-runs/{run_id:int}")
    async def get_workflow_run(
        self, workflows: NamedDependency[WorkflowRuns], run_id: Id
    ) -> RunView:
        """A run with each step's status (``waiting``, ``skipped``, or its activity's),
        activity id, result and error; the run's error names the step that stopped it."""
        run = await workflows.get(run_id)
        if run is None:
            raise NotFoundError(f"no workflow run {run_id}")
        return run
