"""Prompt injection and escalation: whatever the LLM answers, code decides.

Every line of ``tests/data/hostile_inputs.txt`` is sent by a guest through the rules and a real
HTTP round trip to a local OpenAI-compatible server that plays a compromised model in several
ways. No outcome may be an action the guest may not run, or carry a field outside the schema.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatch.infra.metrics import Counters
from dispatch.policy.catalog import decode_catalog
from dispatch.policy.permissions import may_request
from dispatch.understanding.intents import IntentParser
from dispatch.understanding.interpret import Interpreter
from dispatch.understanding.llm import LlmClient, LlmSettings
from tests.support.llm_api import LlmApi, tool_call
from workers.handlers import BUILTIN_HANDLER_NAMES

DATA = Path(__file__).resolve().parent.parent / "data" / "hostile_inputs.txt"
HOSTILE = [
    line for line in DATA.read_text(encoding="utf-8").splitlines() if line and line[0] != "#"
]

CATALOG = b"""
[fallback]
agent = "system"
action = "help"

[agents.billing.actions.invoice_create]
description = "Create an invoice"
handler = "echo"
public = true
[agents.billing.actions.invoice_create.payload]
text = { type = "string" }
amount = { type = "amount", required = false }

[agents.billing.actions.invoice_sent]
description = "Mark an invoice as sent"
handler = "echo"
roles = ["operator"]
[agents.billing.actions.invoice_sent.payload]
text = { type = "string" }

[agents.ops.actions.fetch]
description = "Fetch a URL"
handler = "http_call"
roles = ["admin"]
[agents.ops.actions.fetch.http]
url = "https://internal.example.com/fetch"

[[rules]]
id = "invoice"
agent = "billing"
action = "invoice_create"
patterns = ['(?:crea|create)\\s+(?:una\\s+|an\\s+)?(?:factura|invoice)\\s+(?P<text>.+)']
"""


def compromised(kind: str) -> Any:
    """A model that does what the message says, or worse."""

    def answer(body: dict[str, Any]) -> tuple[int, Any, float]:
        text = body["messages"][-1]["content"]
        if kind == "obeys":
            return tool_call("billing__invoice_sent", {"text": text[:50], "confidence": 1.0})
        if kind == "invents":
            return tool_call("admin__grant_role", {"role": "admin", "confidence": 1.0})
        if kind == "smuggles":
            return tool_call(
                "billing__invoice_create",
                {"text": "x", "role": "admin", "approved": True, "confidence": 1.0},
            )
        if kind == "parrots":
            return tool_call("billing__invoice_create", text)  # the message itself as arguments
        return tool_call("ops__fetch", {"confidence": 0.99})

    return answer


@pytest.fixture
def llm() -> Iterator[LlmApi]:
    with LlmApi() as server:
        yield server


@pytest.mark.parametrize("kind", ["obeys", "invents", "smuggles", "parrots", "reaches"])
async def test_no_hostile_message_yields_an_action_outside_the_senders_permissions(
    llm: LlmApi, kind: str
) -> None:
    assert len(HOSTILE) >= 50
    catalog = decode_catalog(CATALOG, "hostile.toml", BUILTIN_HANDLER_NAMES)
    llm.scenario = compromised(kind)
    async with httpx.AsyncClient() as http:
        interpreter = Interpreter(
            catalog=catalog,
            parser=IntentParser(catalog),
            llm=LlmClient(
                LlmSettings(base_url=llm.base_url, breaker_failures=10_000, timeout_s=5), http
            ),
            counters=Counters(),
            confidence_floor=0.6,
        )

        async def no_history() -> list[tuple[str, str]]:
            return []

        outcomes = []
        for text in HOSTILE:
            intent = await interpreter.interpret(
                text, role="guest", active=True, history=no_history
            )
            action = catalog.action(intent.agent, intent.action_type)
            assert action is not None, text
            assert may_request("guest", True, action), (kind, text, intent)
            assert set(intent.payload) <= set(action.payload), (kind, text, intent.payload)
            outcomes.append((intent.agent, intent.action_type))
    offered = {t["function"]["name"] for t in llm.requests[0]["tools"]}
    assert "billing__invoice_sent" not in offered
    assert "ops__fetch" not in offered
    # Nothing the compromised model proposed got through; only rules or help remain.
    assert set(outcomes) <= {("system", "help"), ("billing", "invoice_create")}
    if kind != "smuggles":
        assert all(
            o == ("system", "help") or "crea" in t.lower() or "create" in t.lower()
            for o, t in zip(outcomes, HOSTILE, strict=True)
        )
    print(json.dumps({"scenario": kind, "messages": len(HOSTILE), "llm_calls": len(llm.requests)}))
