"""Plans: what a council or an agent answers is read against the action's roles and checked
like a workflow (unknown references, cycles); the catalog refuses plan roles that could never
run, and councils whose members name a provider it does not declare."""

from __future__ import annotations

import json

import pytest

from dispatch.infra.errors import CatalogError
from dispatch.policy.catalog import Catalog, decode_catalog, load_catalog
from dispatch.policy.plans import PlanError, plan_problem, plan_prompt, plan_workflow, read_plan
from dispatch.policy.specs import PlanSpec
from dispatch.record.models import Priority
from workers.handlers import BUILTIN_HANDLER_NAMES


def bundled() -> tuple[Catalog, PlanSpec]:
    catalog = load_catalog(None, BUILTIN_HANDLER_NAMES)
    action = catalog.action("architect", "plan")
    assert action is not None
    assert action.plan is not None
    return catalog, action.plan


def tasks(*found: dict[str, object]) -> str:
    return json.dumps({"tasks": list(found)})


def test_a_diamond_plan_becomes_a_workflow_in_dependency_order() -> None:
    catalog, spec = bundled()
    text = (
        "Here is the plan:\n```json\n"
        + tasks(
            {"id": "api", "role": "developer", "description": "API", "depends_on": ["design"]},
            {"id": "design", "role": "architect", "description": "Design it"},
            {"id": "ui", "role": "developer", "description": "UI", "depends_on": ["design"]},
            {
                "id": "ship",
                "role": "developer",
                "description": "Ship",
                "depends_on": ["api", "ui"],
                "priority": "high",
            },
        )
        + "\n```\nThat is all."
    )
    flow = plan_workflow(read_plan(text, spec), spec, catalog.known)
    assert flow.order == ("design", "api", "ui", "ship")
    ship = flow.steps["ship"]
    assert (ship.agent, ship.action, ship.payload) == ("developer", "fix_bug", {"what": "Ship"})
    assert ship.priority == Priority.HIGH
    assert flow.steps["design"].agent == "architect"
    assert plan_problem(spec, catalog.known, catalog.validate_payload, text) is None


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            tasks(
                {"id": "a", "role": "developer", "description": "A", "depends_on": ["b"]},
                {"id": "b", "role": "developer", "description": "B", "depends_on": ["a"]},
            ),
            "dependency cycle: a → b → a",
        ),
        (
            tasks({"id": "a", "role": "developer", "description": "A", "depends_on": ["zz"]}),
            "unknown step 'zz'",
        ),
        (
            tasks({"id": "a", "role": "developer", "description": "A", "depends_on": ["a"]}),
            "cannot depend on itself",
        ),
        (tasks({"id": "a", "role": "janitor", "description": "A"}), "no role 'janitor'"),
        (tasks({"id": "A b", "role": "developer", "description": "A"}), "tasks[0].id"),
        (
            tasks(
                {"id": "a", "role": "developer", "description": "A"},
                {"id": "a", "role": "developer", "description": "B"},
            ),
            "duplicate step id",
        ),
        (tasks({"id": "a", "role": "developer", "description": " "}), "description"),
        (
            tasks({"id": "a", "role": "developer", "description": "A", "priority": "asap"}),
            "priority",
        ),
        (tasks(), "1 to 20 tasks"),
        ("I would start with the schema.", "neither JSON nor"),
        ('{"tasks": [', "not JSON"),
        ('{"tasks": [], "run": "rm -rf /"}', "not a plan"),
    ],
)
def test_a_plan_that_could_never_run_is_refused_with_why(text: str, needle: str) -> None:
    catalog, spec = bundled()
    why = plan_problem(spec, catalog.known, catalog.validate_payload, text)
    assert why is not None
    assert needle in why
    with pytest.raises(PlanError):
        plan_workflow(read_plan(text, spec), spec, catalog.known)


def test_members_are_told_the_shape_and_the_roles() -> None:
    _, spec = bundled()
    said = plan_prompt(spec)
    assert "Roles: architect, developer." in said
    assert '"depends_on"' in said


BASE = """
[fallback]
agent = "a"
action = "echo"
[agents.a.actions.echo]
description = "Echo"
handler = "echo"
[agents.a.actions.echo.payload]
text = { type = "string" }
"""
PLANNER = """
[agents.a.actions.plan]
description = "Plan"
executor = "council"
produces = "plan"
timeout_s = 600
%s
[agents.a.actions.plan.council]
members = [{ name = "one" }]
[agents.a.actions.plan.plan.roles.writer]
agent = "a"
action = "%s"
payload = { %s }
"""


@pytest.mark.parametrize(
    ("extra", "target", "payload", "needle"),
    [
        ("", "nope", 'text = "{{ task.description }}"', "has no action 'nope'"),
        ("", "echo", 'body = "{{ task.description }}"', "fields ['body'] are not in a.echo"),
        ("", "echo", 'text = "{{ input.secret }}"', "reads task.id/role/description/priority"),
        ("", "plan", 'text = "x"', "does not make another plan"),
        ("review = false", "echo", 'text = "x"', "a person approves it before it runs"),
    ],
)
def test_plan_roles_that_could_never_run_are_refused_when_the_catalog_loads(
    extra: str, target: str, payload: str, needle: str
) -> None:
    content = BASE + PLANNER % (extra, target, payload)
    with pytest.raises(CatalogError, match=r"agents\.a\.actions\.plan") as raised:
        decode_catalog(content.encode(), "c.toml", BUILTIN_HANDLER_NAMES)
    assert needle in str(raised.value)


def test_a_council_member_naming_an_undeclared_provider_is_refused() -> None:
    content = (
        BASE
        + """
[agents.a.actions.think]
description = "Think"
executor = "council"
timeout_s = 600
[agents.a.actions.think.council]
members = [{ name = "one" }, { name = "two", provider = "typo" }]
"""
    )
    with pytest.raises(CatalogError, match="'two' uses provider 'typo', which is not declared"):
        decode_catalog(content.encode(), "c.toml", BUILTIN_HANDLER_NAMES)


def test_a_tasks_text_is_data_filled_once_never_a_template() -> None:
    catalog, spec = bundled()
    text = tasks(
        {"id": "a", "role": "developer", "description": "Mail {{ user.name }} the link"},
        {
            "id": "b",
            "role": "developer",
            "depends_on": ["a"],
            "description": "Use {{ steps.a.result.text }} as is",
        },
    )
    flow = plan_workflow(read_plan(text, spec), spec, catalog.known, catalog.validate_payload)
    assert flow.literal  # a run never fills these again
    assert flow.steps["a"].payload == {"what": "Mail {{ user.name }} the link"}
    assert flow.steps["b"].payload == {"what": "Use {{ steps.a.result.text }} as is"}


def test_a_task_its_action_would_refuse_is_refused_before_anyone_approves_it() -> None:
    catalog, spec = bundled()
    text = tasks({"id": "a", "role": "developer", "description": "x" * 3000})
    why = plan_problem(spec, catalog.known, catalog.validate_payload, text)
    assert why is not None
    assert "tasks[0] (id 'a')" in why
    assert "what" in why


def test_a_plan_the_catalog_no_longer_fits_is_refused_not_a_crash() -> None:
    catalog, spec = bundled()
    plan = read_plan(tasks({"id": "a", "role": "architect", "description": "A"}), spec)
    fewer = PlanSpec(roles={"developer": spec.roles["developer"]})
    with pytest.raises(PlanError, match="no role 'architect'"):
        plan_workflow(plan, fewer, catalog.known)


def test_a_workflow_step_that_makes_a_plan_is_refused() -> None:
    content = (
        BASE
        + PLANNER % ("", "echo", 'text = "x"')
        + """
[workflows.w]
description = "W"
[[workflows.w.steps]]
id = "p"
agent = "a"
action = "plan"
"""
    )
    with pytest.raises(CatalogError, match="a step does not make a plan"):
        decode_catalog(content.encode(), "c.toml", BUILTIN_HANDLER_NAMES)
