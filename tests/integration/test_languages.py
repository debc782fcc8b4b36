"""Every word in the user's language: the whole demo in Spanish gets no English reply, and in
English no Spanish one — the gateway's own texts, the catalog's replies and questions, the
approval, person and takeover notices, a workflow's news."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.flow import ask, wait_for
from tests.support.languages import foreign
from workers.runtime import Runtime

FLOWS = {
    "es": {
        "help": "ayuda",
        "unknown": "necesito algo rarísimo",
        "echo": "repite hola",
        "invoice": "factura a ACME por 120 €",
        "invoice_asked": "crea una factura",
        "ticket": "abre una incidencia: la impresora no funciona",
        "status_asked": "estado",
        "cancel": "cancelar 1",
        "refund": "reembolsa la factura 1",
        "person": "quiero hablar con un humano",
        "onboard": "dar de alta a ACME",
    },
    "en": {
        "help": "help",
        "unknown": "I need something very strange",
        "echo": "echo hello",
        "invoice": "create an invoice for ACME, 120 €",
        "invoice_asked": "create an invoice",
        "ticket": "open a ticket: the printer is broken",
        "status_asked": "status",
        "cancel": "cancel 1",
        "refund": "refund invoice 1",
        "person": "I want to talk to a human",
        "onboard": "onboard ACME",
    },
}
EXPECTED = {
    "es": {
        "help": "Puedes pedir:",
        "invoice": "Factura INV-0001 para ACME: 120 EUR",
        "invoice_asked": "¿Para qué cliente es la factura?",
        "filled": "Factura INV-0002 para Globex",
        "ticket": "Incidencia T-0001 abierta: la impresora no funciona",
        "person": "He pedido que te atienda una persona; te contestará aquí.",
    },
    "en": {
        "help": "You can ask:",
        "invoice": "Invoice INV-0001 for ACME: 120 EUR",
        "invoice_asked": "Which client is the invoice for?",
        "filled": "Invoice INV-0002 for Globex",
        "ticket": "Ticket T-0001 opened: the printer is broken",
        "person": "I've asked a person to join; they will answer here.",
    },
}


async def settled(embedded: Runtime, sender: str) -> list[str]:
    """Every reply the visitor got, once none is still on its way."""

    async def replies() -> list[str] | None:
        messages = await embedded.store.recent("rest", sender, limit=500)
        outbound = [m for m in messages if m.direction == "outbound"]
        if any(m.delivery in {"pending", "sending"} for m in outbound):
            return None
        return [m.text for m in outbound]

    found: list[str] = await wait_for(replies)
    return found


@pytest.mark.parametrize("language", ["es", "en"])
async def test_the_whole_demo_is_answered_in_the_visitors_language(
    embedded: Runtime, language: str
) -> None:
    said, expected = FLOWS[language], EXPECTED[language]
    visitor = f"visitor-{language}"
    supervisor = await embedded.users.add(f"sup-{language}", "supervisor")
    await embedded.users.link(str(supervisor.id), "rest", f"sup-{language}")

    async def asked(key: str) -> tuple[Any, str]:
        return await ask(embedded, said[key], sender=visitor)

    assert (await asked("help"))[1].startswith(expected["help"])
    await asked("unknown")
    assert (await asked("echo"))[1] in {"hola", "hello"}
    assert (await asked("invoice"))[1] == expected["invoice"]
    assert (await asked("invoice_asked"))[1] == expected["invoice_asked"]
    assert (await ask(embedded, "Globex", sender=visitor))[1] == expected["filled"]
    assert (await asked("ticket"))[1] == expected["ticket"]
    await asked("status_asked")
    await ask(embedded, "1", sender=visitor)  # no clue in "1": the conversation's language
    await asked("cancel")
    refund, _ = await asked("refund")
    assert refund.status == "awaiting_approval"
    await ask(embedded, f"YES {refund.id}", sender=f"sup-{language}")
    await asked("person")  # its first reply pages the supervisor: the visitor's is checked below
    conversation = await embedded.store.conversation_by_key("rest", visitor)
    assert conversation is not None
    await embedded.takeovers.take(conversation.id, user_id=supervisor.id)
    await embedded.takeovers.hand_back(conversation.id, user_id=supervisor.id)
    await asked("onboard")

    replies = await settled(embedded, visitor)
    assert len(replies) >= 16
    assert expected["person"] in replies
    wrong = {
        text: found for text in replies if (found := foreign(text, language, embedded.catalog))
    }
    assert wrong == {}
