"""Workflow definitions: what the catalog refuses to load, and how templates fill payloads."""

from __future__ import annotations

import pytest

from dispatch.infra.errors import CatalogError
from dispatch.policy.catalog import decode_catalog, load_catalog
from dispatch.policy.workflows import TemplateError, fill
from workers.handlers import BUILTIN_HANDLER_NAMES

BASE = """
[fallback]
agent = "a"
action = "echo"
[agents.a.actions.echo]
description = "echo"
handler = "echo"
public = true
[agents.a.actions.echo.payload]
text = { type = "string" }
[agents.a.actions.count]
description = "count"
handler = "echo"
[agents.a.actions.count.payload]
n = { type = "integer" }
"""


def flow(steps: str, head: str = "") -> bytes:
    return (
        BASE
        + '[workflows.w]\ndescription = "w"\n'
        + head
        + "[workflows.w.input]\nname = { type = 'string' }\n"
        + "maybe = { type = 'string', required = false }\n"
        + steps
    ).encode()


def step(id: str, *deps: str, text: str = "x", extra: str = "") -> str:
    return (
        f'[[workflows.w.steps]]\nid = "{id}"\nagent = "a"\naction = "echo"\n'
        f"depends_on = {list(deps)!r}\npayload = {{ text = {text!r} }}\n{extra}"
    ).replace("'", '"')


def load(content: bytes) -> object:
    return decode_catalog(content, "my.toml", BUILTIN_HANDLER_NAMES)


def test_a_diamond_loads_in_dependency_order_and_is_an_action_of_its_own() -> None:
    catalog = load(
        flow(
            step("d", "b", "c", text="{{ steps.b.result.text }} {{ steps.a.result.text }}")
            + step("b", "a")
            + step("c", "a", text="{{ input.name }}")
            + step("a")
        )
    )
    workflow = catalog.workflows["w"]  # type: ignore[attr-defined]
    order = workflow.order
    assert order.index("a") < order.index("b") < order.index("d")
    assert order.index("c") < order.index("d")
    start = catalog.action("workflows", "w")  # type: ignore[attr-defined]
    assert start.handler == "start_workflow"
    assert list(start.payload) == ["name", "maybe"]  # its payload is the run's input


@pytest.mark.parametrize(
    ("steps", "needle"),
    [
        (step("a", "b") + step("b", "a"), "dependency cycle: a → b → a"),
        (step("a", "c") + step("b", "a") + step("c", "b"), "dependency cycle"),
        (step("a", "a"), "cannot depend on itself"),
        (step("a", "ghost"), "unknown step 'ghost'"),
        (step("a") + step("a"), "duplicate step id"),
        (step("a", text="{{ steps.b.result.text }}") + step("b"), "not one 'a' depends on"),
        (step("a", text="{{ input.nope }}"), "the input has no field 'nope'"),
        (step("a", text="{{ input.maybe }}"), "input field 'maybe' is optional"),
        (step("a", text="{{ env.HOME }}"), "templates read input.*"),
        (step("a", text="{{ input.x-y }}"), "not a dotted name"),
        (step("a", extra='priority = "urgent"\n'), "priority"),
        (step("a", extra='on_failure = "retry"\n'), "on_failure"),
        (
            '[[workflows.w.steps]]\nid = "a"\nagent = "a"\naction = "fly"\n',
            "agent 'a' has no action 'fly'",
        ),
        (
            '[[workflows.w.steps]]\nid = "a"\nagent = "zz"\naction = "echo"\n',
            "unknown agent 'zz'",
        ),
        (
            '[[workflows.w.steps]]\nid = "a"\nagent = "a"\naction = "echo"\n'
            'payload = { txt = "x" }\n',
            "fields ['txt'] are not in a.echo's schema",
        ),
        (
            '[[workflows.w.steps]]\nid = "a"\nagent = "workflows"\naction = "w"\n',
            "not another workflow",
        ),
        ("", "1 to 50 steps"),
        (
            step("a", extra='localized.es = { payload = { txt = "x" } }\n'),
            "localized.es.payload: fields ['txt'] are not in a.echo's schema",
        ),
        (
            step("a", extra='localized.es = { payload = { text = "{{ input.nope }}" } }\n'),
            "the input has no field 'nope'",
        ),
        (step("a", extra='localized.es = { words = "x" }\n'), "words"),
    ],
)
def test_what_could_never_run_is_refused_when_the_catalog_loads(steps: str, needle: str) -> None:
    with pytest.raises(CatalogError) as raised:
        load(flow(steps))
    assert needle in str(raised.value)
    assert "workflows.w" in str(raised.value)


def test_the_workflows_agent_is_built_in() -> None:
    content = BASE + ('[agents.workflows.actions.x]\ndescription = "x"\nhandler = "echo"\n')
    with pytest.raises(CatalogError, match="is built in"):
        load(content.encode())


def test_a_whole_reference_keeps_its_type_and_text_gets_text() -> None:
    scope = {
        "input": {"name": "ACME", "n": 3, "ok": True},
        "steps": {"a": {"result": {"text": "hi", "data": {"total": 120.0, "lines": [1, 2]}}}},
        "run": {"id": 7},
    }
    assert fill({"n": "{{ input.n }}"}, scope) == {"n": 3}
    assert fill("{{steps.a.result.data}}", scope) == {"total": 120.0, "lines": [1, 2]}
    assert fill("{{ steps.a.result.data.lines.1 }}", scope) == 2
    assert (
        fill(
            "#{{ run.id }} {{ input.name }}: {{ steps.a.result.data.total }} {{ input.ok }}", scope
        )
        == "#7 ACME: 120 yes"
    )
    assert fill(["{{ input.name }}", 5], scope) == ["ACME", 5]
    with pytest.raises(TemplateError) as missing:
        fill("{{ steps.b.result.text }}", scope)
    assert missing.value.reference == "steps.b.result.text"


def test_the_bundled_demo_is_a_diamond_chat_can_start() -> None:
    catalog = load_catalog(None, BUILTIN_HANDLER_NAMES)
    demo = catalog.workflows["onboard_customer"]
    assert len(demo.order) >= 4
    deps = {step_id: set(demo.steps[step_id].depends_on) for step_id in demo.order}
    joins = [s for s, d in deps.items() if len(d) >= 2]
    assert joins, "a step joining two branches"
    [join] = joins
    roots = {dep for branch in deps[join] for dep in deps[branch]}
    assert len(roots) == 1  # both branches come from one step: a diamond
    assert any(r.agent == "workflows" and r.action == "onboard_customer" for r in catalog.rules)


def test_a_step_speaks_the_requesters_language_where_it_has_words_in_it() -> None:
    catalog = load(
        flow(
            step(
                "a",
                text="Hi {{ input.name }}",
                extra='localized.es = { payload = { text = "Hola {{ input.name }}" } }\n',
            )
        )
    )
    [a] = catalog.workflows["w"].steps.values()  # type: ignore[attr-defined]
    scope = {"input": {"name": "Ana"}}
    assert fill(a.payload_in("es"), scope) == {"text": "Hola Ana"}
    assert fill(a.payload_in("en"), scope) == {"text": "Hi Ana"}
    assert fill(a.payload_in(None), scope) == {"text": "Hi Ana"}
