"""The LLM fallback against a local OpenAI-compatible server: it proposes, code decides."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatch.record.activities import ActivityView
from gateway.settings import Settings
from tests.support import flow
from tests.support.llm_api import LlmApi, text_only, tool_call
from tests.support.runtime import runtime_for
from workers.runtime import Runtime

CATALOG = """
[fallback]
agent = "assistant"
action = "help"

[agents.assistant.actions.help]
description = "List what you can ask"
handler = "help"
public = true

[agents.billing.actions.invoice_create]
description = "Create an invoice for a client"
handler = "echo"
public = true
[agents.billing.actions.invoice_create.payload]
text = { type = "string", description = "what the invoice is for" }
amount = { type = "amount" }

[agents.billing.actions.invoice_sent]
description = "Mark an invoice as sent (operators only)"
handler = "echo"
roles = ["operator"]
[agents.billing.actions.invoice_sent.payload]
text = { type = "string" }

[[rules]]
id = "help"
agent = "assistant"
action = "help"
keywords = ["help", "ayuda"]
"""


@pytest.fixture
def llm() -> Iterator[LlmApi]:
    with LlmApi() as server:
        yield server
        assert server.unexpected == []


@pytest.fixture
async def services(
    make_settings: Callable[..., Settings], sqlite_url: str, tmp_path: Path, llm: LlmApi
) -> AsyncIterator[Runtime]:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG)
    settings = make_settings(
        database_url=sqlite_url,
        catalog=catalog,
        llm_base_url=llm.base_url,
        llm_api_key="sk-test-key",
        llm_model="test-model",
        llm_timeout_s="0.5",
        llm_breaker_failures="2",
        llm_breaker_cooldown_s="60",
    )
    async with runtime_for(settings, "gateway") as built:
        yield built


async def ask(services: Runtime, text: str, sender: str = "lucia") -> tuple[ActivityView, str]:
    return await flow.ask(services, text, sender=sender)


async def test_a_well_formed_proposal_becomes_the_activity(services: Runtime, llm: LlmApi) -> None:
    llm.scenario = lambda body: tool_call(
        "billing__invoice_create", {"text": "diseño web", "amount": "1.200 €", "confidence": 0.92}
    )
    activity, text = await ask(services, "hazle una factura a ACME por el diseño web, 1.200 €")
    assert (activity.agent_name, activity.action_type) == ("billing", "invoice_create")
    assert activity.details["payload"] == {
        "text": "diseño web",
        "amount": {"value": 1200.0, "currency": "EUR"},
    }
    provenance = activity.details["provenance"]
    assert provenance["parser"] == "llm"
    assert provenance["model"] == "test-model"
    assert provenance["prompt_version"] == "intent-v1"
    assert provenance["outcome"] == "accepted"
    assert provenance["latency_ms"] >= 0
    assert provenance["proposal"]["tool"] == "billing__invoice_create"
    created = next(e for e in activity.events if e.kind == "created")
    assert created.data["provenance"]["proposal"]["arguments"]["confidence"] == 0.92
    assert text == "diseño web"

    [request] = llm.requests
    assert request["temperature"] == 0
    assert request["model"] == "test-model"
    offered = {t["function"]["name"] for t in request["tools"]}
    assert offered == {  # everything this guest may run, and not the operators' action
        "assistant__help",
        "billing__invoice_create",
        "system__help",
        "system__status",
        "system__cancel",
        "system__human",
    }
    assert request["messages"][-1] == {
        "role": "user",
        "content": "hazle una factura a ACME por el diseño web, 1.200 €",
    }
    assert llm.headers[0]["Authorization"] == "Bearer sk-test-key"


async def test_rules_first_the_llm_is_not_asked(services: Runtime, llm: LlmApi) -> None:
    activity, _ = await ask(services, "ayuda")
    assert activity.details["provenance"] == {
        "parser": "rules",
        "rule_id": "control:help",
        "by": "pattern",
        "matched": True,
        "parse_us": activity.details["provenance"]["parse_us"],
        "language": "es",
    }
    assert llm.requests == []


async def test_the_conversation_so_far_goes_with_the_request(
    services: Runtime, llm: LlmApi
) -> None:
    llm.scenario = lambda body: text_only("I am not sure")
    await ask(services, "hola", sender="con-historia")
    await ask(services, "quiero algo", sender="con-historia")
    roles = [m["role"] for m in llm.requests[-1]["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    assert llm.requests[-1]["messages"][1]["content"] == "hola"


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (lambda body: tool_call("billing__invoice_create", "{not json"), "not a JSON object"),
        (
            lambda body: tool_call("billing__invoice_sent", {"text": "x", "confidence": 0.99}),
            "'billing__invoice_sent' is not an action this sender may run",
        ),
        (
            lambda body: tool_call("system__shell", {"cmd": "rm -rf /", "confidence": 1}),
            "'system__shell' is not an action this sender may run",
        ),
        (  # decisions on approvals are never the model's to make
            lambda body: tool_call("system__approve", {"code": 1, "confidence": 1}),
            "'system__approve' is not an action this sender may run",
        ),
        (
            lambda body: tool_call("system__clarify", {"question": "pwned", "confidence": 1}),
            "'system__clarify' is not an action this sender may run",
        ),
        (
            lambda body: tool_call(
                "billing__invoice_create", {"text": "x", "amount": "5", "confidence": 0.2}
            ),
            "confidence 0.2 is below 0.6",
        ),
        (
            lambda body: tool_call("billing__invoice_create", {"text": "x", "amount": "5"}),
            "no confidence given",
        ),
        (
            lambda body: tool_call(
                "billing__invoice_create", {"text": "x", "amount": "lots", "confidence": 0.9}
            ),
            "payload refused",
        ),
        (
            lambda body: tool_call(
                "billing__invoice_create",
                {"text": "x", "amount": "5", "admin": True, "confidence": 0.9},
            ),
            "unknown field 'admin'",
        ),
        (lambda body: text_only("I can't help with that"), "the model proposed no action"),
    ],
)
async def test_bad_proposals_are_refused_and_the_user_gets_help(
    services: Runtime, llm: LlmApi, answer: Any, reason: str
) -> None:
    llm.scenario = answer
    activity, text = await ask(services, "something the rules don't know")
    assert (activity.agent_name, activity.action_type) == ("assistant", "help")
    assert activity.details["provenance"]["outcome"] == "rejected"
    assert reason in activity.details["provenance"]["reason"]
    assert text.startswith("I didn't understand that. You can ask:")
    counters = await services.counters.snapshot()
    assert counters["llm_rejected_total"] == 1


async def test_slow_or_failing_llm_falls_back_and_the_breaker_opens(
    services: Runtime, llm: LlmApi
) -> None:
    llm.scenario = lambda body: (200, {}, 1.0)  # slower than the 0.5 s timeout
    activity, text = await ask(services, "first unknown thing")
    assert activity.details["provenance"]["outcome"] == "unavailable"
    assert text.startswith("I didn't understand that. You can ask:")
    assert len(llm.requests) == 2  # one retry

    llm.scenario = lambda body: (500, {"error": {"message": "boom"}}, 0.0)
    activity, _ = await ask(services, "second unknown thing")
    assert activity.details["provenance"]["reason"] == "HTTP 500"
    assert len(llm.requests) == 4

    # Two failures in a row opened the breaker: the next message does not wait on the LLM.
    activity, text = await ask(services, "third unknown thing")
    assert activity.details["provenance"]["reason"] == "circuit breaker open"
    assert len(llm.requests) == 4
    assert text.startswith("I didn't understand that")
    counters = await services.counters.snapshot()
    assert counters["llm_unavailable_total"] == 3


async def test_an_answer_of_the_wrong_shape_is_treated_as_unavailable(
    services: Runtime, llm: LlmApi
) -> None:
    llm.scenario = lambda body: (200, {"choices": []}, 0.0)
    activity, _ = await ask(services, "whatever")
    assert activity.details["provenance"]["outcome"] == "unavailable"
    assert activity.details["provenance"]["reason"].startswith("unexpected answer")


POISONED_CATALOG = """
[fallback]
agent = "assistant"
action = "help"

[agents.assistant.actions.help]
description = "List what you can ask"
handler = "help"
public = true

[agents.shop.actions.order]
description = "Order some units of a product"
handler = "echo"
public = true
[agents.shop.actions.order.payload]
text = { type = "string", description = "the product" }
quantity = { type = "number", required = false }

[[rules]]
id = "echo"
agent = "shop"
action = "order"
patterns = ['^echo (?P<text>.+)$']
"""

POISON = {
    "NaN": ('{"text": "x", "quantity": NaN, "confidence": 0.9}', "rejected"),
    "Infinity": ('{"text": "x", "quantity": -Infinity, "confidence": 0.9}', "rejected"),
    "NUL": (json.dumps({"text": "a\u0000b", "confidence": 0.9}), "rejected"),
    "5 MB": (json.dumps({"text": "x" * 5_000_000, "confidence": 0.9}), "unavailable"),
}


@pytest.mark.services
async def test_a_poisoned_proposal_is_refused_and_the_conversation_goes_on(
    make_settings: Callable[..., Settings], pg_migrated: str, tmp_path: Path, llm: LlmApi
) -> None:
    """What PostgreSQL cannot store (NaN, infinities, NUL) or should not (5 MB) in a model's
    answer never becomes an activity: the sender gets help, the attempt is recorded small, and
    the conversation's next messages run as usual."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(POISONED_CATALOG)
    settings = make_settings(
        database_url=pg_migrated,
        catalog=catalog,
        llm_base_url=llm.base_url,
        llm_timeout_s="5",
        llm_breaker_failures="10",
    )

    def scenario(body: dict[str, Any]) -> tuple[int, Any, float]:
        # By the message's text: leftovers of other tests in the shared database may be here.
        text = body["messages"][-1]["content"]
        for name, (arguments, _) in POISON.items():
            if f"({name})" in text:
                return tool_call("shop__order", arguments)
        return text_only("no idea")

    llm.scenario = scenario
    async with runtime_for(settings, "gateway") as services:
        for name, (_, outcome) in POISON.items():
            sender = f"poisoned-{name}"
            activity, text = await ask(services, f"an order please ({name})", sender=sender)
            provenance = activity.details["provenance"]
            assert provenance["outcome"] == outcome, name
            assert text.startswith("I didn't understand that."), name
            assert len(json.dumps(activity.details)) < 2000, name
            for n in range(2):
                _, echoed = await ask(services, f"echo next {n}", sender=sender)
                assert echoed == f"next {n}", name
