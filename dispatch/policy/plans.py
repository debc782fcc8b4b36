"""Plans: an answer that is a list of tasks by role, with dependencies and priorities.

An action that declares ``produces = "plan"`` answers with JSON (the whole answer, or its
first fenced ```json block)::

    {"tasks": [{"id": "schema", "role": "developer", "description": "...",
                "depends_on": [], "priority": "high"}]}

Read against the action's ``[plan]``: each task's role must be one it maps to an action,
ids are unique names, dependencies name tasks of the plan, and there is no cycle. A plan is
turned into a :class:`Workflow` (one step per task: the role's action, its payload filled
from the task) and checked like a catalog workflow, so an approved plan runs with the same
run machinery as declared workflows.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec

from dispatch.infra.errors import CatalogError
from dispatch.policy.specs import PlanRoleSpec, PlanSpec, StepSpec, WorkflowSpec
from dispatch.policy.workflows import Lookup, TemplateError, Workflow, compile_workflow, fill
from dispatch.policy.workflows import references as template_references
from dispatch.record.models import Priority

__all__ = [
    "TASK_FIELDS",
    "Plan",
    "PlanError",
    "PlanTask",
    "check_role",
    "plan_problem",
    "plan_prompt",
    "plan_workflow",
    "read_plan",
]

TASK_FIELDS = ("id", "role", "description", "priority")
"""What a role's payload template may read of its task (``{{ task.<field> }}``)."""
MAX_DESCRIPTION_CHARS = 4000
_FENCED_JSON = re.compile(r"```(?:json)?\s*\n(.*?)```", re.DOTALL)
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


class PlanError(ValueError):
    """The text is no plan this action may run; the message says why."""


class PlanTask(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    role: str
    description: str
    depends_on: tuple[str, ...] = ()
    priority: Priority = Priority.NORMAL


class Plan(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    tasks: tuple[PlanTask, ...]


def _json_of(text: str) -> str:
    stripped = text.strip()
    if stripped.startswith("{"):
        return stripped
    fenced = _FENCED_JSON.search(text)
    if fenced is None:
        raise PlanError("no plan: the answer is neither JSON nor holds a ```json block")
    return fenced.group(1)


def read_plan(text: str, spec: PlanSpec) -> Plan:
    """The plan ``text`` holds, checked against ``spec`` (its size, roles, ids and
    descriptions); :class:`PlanError` says what is wrong."""
    try:
        plan = msgspec.json.decode(_json_of(text), type=Plan)
    except msgspec.ValidationError as exc:
        raise PlanError(f"not a plan: {exc}") from None
    except msgspec.DecodeError as exc:
        raise PlanError(f"not JSON: {exc}") from None
    _check(plan, spec)
    return plan


def _check(plan: Plan, spec: PlanSpec) -> None:
    if not 1 <= len(plan.tasks) <= spec.max_tasks:
        raise PlanError(f"a plan has 1 to {spec.max_tasks} tasks, not {len(plan.tasks)}")
    for index, task in enumerate(plan.tasks):
        at = f"tasks[{index}]"
        if not _NAME.fullmatch(task.id):
            raise PlanError(f"{at}.id: lowercase letters, digits and _ (not {task.id[:70]!r})")
        if task.role not in spec.roles:
            known = ", ".join(sorted(spec.roles))
            raise PlanError(f"{at}.role: no role {task.role[:70]!r} here (known: {known})")
        if not task.description.strip() or len(task.description) > MAX_DESCRIPTION_CHARS:
            raise PlanError(f"{at}.description: 1 to {MAX_DESCRIPTION_CHARS} characters")


Validate = Callable[[str, str, dict[str, Any]], Any]
"""(agent, action, payload) → the payload checked against the action's schema, or a
``ValueError`` saying why (the catalog's ``validate_payload``)."""


def plan_workflow(
    plan: Plan, spec: PlanSpec, known: Lookup, validate: Validate | None = None
) -> Workflow:
    """The workflow whose steps are the plan's tasks, checked like a catalog workflow
    (unknown dependencies and cycles refused) and, with ``validate``, each task's payload
    against its action's schema; :class:`PlanError` says what is wrong. Its payloads are the
    tasks' text as data: filled once, here, never read as templates again."""
    _check(plan, spec)  # (again: the catalog may have changed since it was read)
    steps = []
    for index, task in enumerate(plan.tasks):
        role = spec.roles[task.role]
        try:
            payload = fill(role.payload, {"task": msgspec.to_builtins(task)})
            if validate is not None:
                validate(role.agent, role.action, payload)
        except TemplateError as exc:
            raise PlanError(f"task {task.id!r}: {exc}") from None
        except ValueError as exc:  # the action's schema (a PayloadError)
            raise PlanError(f"tasks[{index}] (id {task.id!r}): {exc}") from None
        steps.append(
            StepSpec(
                id=task.id,
                agent=role.agent,
                action=role.action,
                payload=payload,
                depends_on=task.depends_on,
                priority=task.priority,
            )
        )
    try:
        return compile_workflow(
            "plan",
            WorkflowSpec(description="plan", steps=tuple(steps)),
            known,
            "plan",
            literal=True,
        )
    except CatalogError as exc:
        raise PlanError(str(exc).replace("plan.steps", "tasks", 1)) from None


def plan_problem(spec: PlanSpec, known: Lookup, validate: Validate | None, text: str) -> str | None:
    """Why ``text`` is no plan this action may run (None: it is one)."""
    try:
        plan_workflow(read_plan(text, spec), spec, known, validate)
    except PlanError as exc:
        return str(exc)
    return None


def plan_prompt(spec: PlanSpec) -> str:
    """What a member is told of the answer's shape."""
    roles = ", ".join(sorted(spec.roles))
    return (
        "Answer with a plan, as JSON only: "
        '{"tasks": [{"id": "short_name", "role": "<role>", "description": "what to do", '
        '"depends_on": ["<id of a task it needs first>"], "priority": "normal"}]}. '
        f"Roles: {roles}. Priorities: low, normal, high, critical. "
        f"At most {spec.max_tasks} tasks; ids are lowercase letters, digits and _; "
        "no task depends on itself or on a task that depends on it."
    )


def check_role(role: str, target: PlanRoleSpec, known: Lookup, at: str) -> None:
    """A role of a ``[plan]`` as the catalog loads: an action a workflow step may run, whose
    payload template names its fields and reads only ``task.*``."""
    if not _NAME.fullmatch(role):
        raise CatalogError(at, "role names are lowercase letters, digits and _")
    action = known(target.agent, target.action, at)
    if action.internal:
        raise CatalogError(at, f"{target.agent}.{target.action} is internal to the gateway")
    if action.produces == "plan":
        raise CatalogError(at, "a plan's task does not make another plan")
    unknown = sorted(set(target.payload) - set(action.payload))
    if unknown:
        raise CatalogError(
            at + ".payload", f"fields {unknown} are not in {target.agent}.{target.action}'s schema"
        )
    for reference in template_references(target.payload):
        root, _, field_name = reference.partition(".")
        if root != "task" or field_name not in TASK_FIELDS:
            raise CatalogError(
                at + ".payload",
                f"{{{{ {reference} }}}}: a role's payload reads task.{'/'.join(TASK_FIELDS)}",
            )
