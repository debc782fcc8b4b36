"""Workflows: catalog-declared steps with dependencies, checked when the catalog loads.

A workflow names steps (an agent's action each), what each depends on, and payload templates
filled from the run's input and earlier steps' results. Loading rejects what could never run:
unknown agents, actions, steps or payload fields, a dependency cycle, a template that reads a
step the step does not (directly or not) depend on. Each workflow is also an action,
``workflows.<name>``, whose payload is the run's input: starting a run goes through the same
gate as any request (rules, the LLM, permissions, approval, clarifying questions).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dispatch.infra.errors import CatalogError
from dispatch.policy.specs import ActionSpec, AgentSpec, StepSpec, WorkflowSpec

__all__ = [
    "START_HANDLER",
    "WORKFLOWS_AGENT",
    "Lookup",
    "TemplateError",
    "Workflow",
    "compile_workflow",
    "compile_workflows",
    "fill",
    "workflows_agent",
]

WORKFLOWS_AGENT = "workflows"
"""The built-in agent whose actions start the catalog's workflows."""
START_HANDLER = "start_workflow"
MAX_STEPS = 50

_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_TEMPLATE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_WHOLE = re.compile(r"^\{\{\s*([^{}]*?)\s*\}\}$")
_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*")


class TemplateError(ValueError):
    """A template reads something the run does not have (yet): ``reference`` names it."""

    def __init__(self, reference: str, message: str) -> None:
        super().__init__(f"{{{{ {reference} }}}}: {message}")
        self.reference = reference


@dataclass(frozen=True, slots=True)
class Workflow:
    """A checked workflow: its steps by id in an order where each follows its dependencies."""

    name: str
    spec: WorkflowSpec
    steps: dict[str, StepSpec]
    order: tuple[str, ...]
    literal: bool = False
    """Its payloads are final (an approved plan's, whose text is data): never filled again."""


def fill(template: Any, scope: Mapping[str, Any]) -> Any:
    """``template`` with its ``{{ path }}`` references read from ``scope`` (``input``,
    ``steps``, ``run``): a value that is one whole reference takes the referenced value as it
    is; references inside text are written in as text. Raises :class:`TemplateError`."""
    if isinstance(template, dict):
        return {key: fill(value, scope) for key, value in template.items()}
    if isinstance(template, list):
        return [fill(value, scope) for value in template]
    if not isinstance(template, str) or "{{" not in template:
        return template
    whole = _WHOLE.match(template)
    if whole is not None:
        return _lookup(whole.group(1), scope)

    def text(match: re.Match[str]) -> str:
        value = _lookup(match.group(1), scope)
        return value if isinstance(value, str) else _plain(value)

    return _TEMPLATE.sub(text, template)


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _lookup(reference: str, scope: Mapping[str, Any]) -> Any:
    value: Any = scope
    for name in reference.split("."):
        if isinstance(value, Mapping) and name in value:
            value = value[name]
        elif isinstance(value, list) and name.isdigit() and int(name) < len(value):
            value = value[int(name)]
        else:
            raise TemplateError(reference, "the run has no such value")
    if value is None:
        raise TemplateError(reference, "the run has no such value")
    return value


def references(template: Any) -> list[str]:
    """Every ``{{ path }}`` a template holds."""
    if isinstance(template, dict):
        return [ref for value in template.values() for ref in references(value)]
    if isinstance(template, list):
        return [ref for value in template for ref in references(value)]
    if isinstance(template, str):
        return [m.group(1) for m in _TEMPLATE.finditer(template)]
    return []


Lookup = Callable[[str, str, str], ActionSpec]
"""(agent, action, where) → the action's spec, or :class:`CatalogError` naming ``where``."""


def compile_workflows(
    workflows: Mapping[str, WorkflowSpec], known: Lookup, source: str
) -> dict[str, Workflow]:
    return {
        name: compile_workflow(name, spec, known, f"{source}: workflows.{name}")
        for name, spec in workflows.items()
    }


def workflows_agent(workflows: Mapping[str, Workflow]) -> AgentSpec:
    """The actions that start each workflow (payload: its input)."""
    return AgentSpec(
        description="Workflows: several steps, run in the order their dependencies allow",
        actions={
            name: ActionSpec(
                description=flow.spec.description,
                handler=START_HANDLER,
                public=flow.spec.public,
                roles=flow.spec.roles,
                payload=dict(flow.spec.input),
                examples=flow.spec.examples,
                localized=flow.spec.localized,
                approval=flow.spec.approval,
            )
            for name, flow in workflows.items()
        },
    )


def compile_workflow(
    name: str, spec: WorkflowSpec, known: Lookup, where: str, *, literal: bool = False
) -> Workflow:
    """One workflow, checked (see the module); :class:`CatalogError` names what is wrong.
    ``literal``: its payloads are final values, not templates (an approved plan's)."""
    if not _NAME.fullmatch(name):
        raise CatalogError(where, "workflow names are lowercase letters, digits and _")
    if not 1 <= len(spec.steps) <= MAX_STEPS:
        raise CatalogError(where + ".steps", f"a workflow has 1 to {MAX_STEPS} steps")
    for field_name in spec.input:
        if not _NAME.fullmatch(field_name):
            raise CatalogError(where + f".input.{field_name}", "bad field name")
    steps = _indexed(spec, where)
    for index, step in enumerate(spec.steps):
        _check_step(step, steps, known, f"{where}.steps[{index}] (id {step.id!r})")
    order = _ordered(steps, where)
    for index, step in enumerate(spec.steps):
        at = f"{where}.steps[{index}] (id {step.id!r}).payload"
        if not literal:
            _check_references(step, spec, _ancestors(steps, step.id), at)
    return Workflow(name=name, spec=spec, steps=steps, order=order, literal=literal)


def _indexed(spec: WorkflowSpec, where: str) -> dict[str, StepSpec]:
    steps: dict[str, StepSpec] = {}
    for index, step in enumerate(spec.steps):
        at = f"{where}.steps[{index}] (id {step.id!r})"
        if not _NAME.fullmatch(step.id):
            raise CatalogError(at, "step ids are lowercase letters, digits and _")
        if step.id in steps:
            raise CatalogError(at, "duplicate step id")
        steps[step.id] = step
    return steps


def _check_step(step: StepSpec, steps: dict[str, StepSpec], known: Lookup, at: str) -> None:
    if step.agent == WORKFLOWS_AGENT:
        raise CatalogError(at, "a step runs an action, not another workflow")
    action = known(step.agent, step.action, at)
    if action.internal:
        raise CatalogError(at, f"{step.agent}.{step.action} is internal to the gateway")
    if action.produces == "plan":
        raise CatalogError(at, "a step does not make a plan (its run would be a run of its own)")
    for where, payload in step.payloads():
        unknown_fields = sorted(set(payload) - set(action.payload))
        if unknown_fields:
            raise CatalogError(
                f"{at}.{where}",
                f"fields {unknown_fields} are not in {step.agent}.{step.action}'s schema",
            )
    for dependency in step.depends_on:
        if dependency not in steps:
            raise CatalogError(at + ".depends_on", f"unknown step {dependency!r}")
        if dependency == step.id:
            raise CatalogError(at + ".depends_on", "a step cannot depend on itself")


def _ordered(steps: dict[str, StepSpec], where: str) -> tuple[str, ...]:
    """Steps in declaration order, each after its dependencies; a cycle is named."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(step_id: str, path: list[str]) -> None:
        if state.get(step_id) == "done":
            return
        if state.get(step_id) == "visiting":
            cycle = [*path[path.index(step_id) :], step_id]
            raise CatalogError(where + ".steps", f"dependency cycle: {' → '.join(cycle)}")
        state[step_id] = "visiting"
        for dependency in steps[step_id].depends_on:
            visit(dependency, [*path, step_id])
        state[step_id] = "done"
        order.append(step_id)

    for step_id in steps:
        visit(step_id, [])
    return tuple(order)


def _ancestors(steps: dict[str, StepSpec], step_id: str) -> set[str]:
    seen: set[str] = set()
    todo = list(steps[step_id].depends_on)
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(steps[current].depends_on)
    return seen


def _check_references(step: StepSpec, spec: WorkflowSpec, ancestors: set[str], at: str) -> None:
    for reference in {r for _, payload in step.payloads() for r in references(payload)}:
        if not _PATH.fullmatch(reference):
            raise CatalogError(at, f"{{{{ {reference} }}}}: not a dotted name")
        root, _, rest = reference.partition(".")
        head = rest.split(".")[0]
        if root == "input":
            if head not in spec.input:
                raise CatalogError(at, f"{{{{ {reference} }}}}: the input has no field {head!r}")
            if not spec.input[head].required:
                raise CatalogError(
                    at,
                    f"{{{{ {reference} }}}}: input field {head!r} is optional; a template reads "
                    "only required ones (a run without it would fail there)",
                )
        elif root == "steps":
            if head not in ancestors:
                raise CatalogError(
                    at,
                    f"{{{{ {reference} }}}}: step {head!r} is not one {step.id!r} depends on "
                    "(its result would not be there yet)",
                )
        elif reference != "run.id":
            raise CatalogError(
                at, f"{{{{ {reference} }}}}: templates read input.*, steps.<id>.* or run.id"
            )
