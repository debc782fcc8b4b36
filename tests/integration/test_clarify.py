"""Clarify, don't guess: a question back for a missing detail or an ambiguous match, answered
on the next turn; the question is per conversation and times out."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from dispatch.record.messages import InboundMessage
from dispatch.record.models import Activity, Conversation, ConversationState
from gateway.settings import Settings
from tests.support.flow import ask, wait_for
from tests.support.llm_api import LlmApi, tool_call
from tests.support.runtime import runtime_for
from workers import jobs
from workers.runtime import Runtime

CATALOG = Path(__file__).resolve().parent.parent / "data" / "eval_catalog.toml"


def tomorrow() -> str:
    return (dt.date.today() + dt.timedelta(days=1)).isoformat()


@pytest.fixture
def llm() -> Iterator[LlmApi]:
    with LlmApi() as server:
        yield server


@pytest.fixture
def make_services(
    make_settings: Callable[..., Settings], sqlite_url: str, llm: LlmApi
) -> Callable[..., Any]:
    def make(**values: Any) -> Any:
        settings = make_settings(
            database_url=sqlite_url, catalog=CATALOG, llm_base_url=llm.base_url, **values
        )
        return runtime_for(settings, "gateway")

    return make


@pytest.fixture
async def services(make_services: Callable[..., Any]) -> AsyncIterator[Runtime]:
    async with make_services() as built:
        yield built


async def open_state(services: Runtime, sender: str) -> ConversationState | None:
    async with services.sessions() as session:
        state: ConversationState | None = await session.scalar(
            select(ConversationState)
            .join(Conversation, Conversation.id == ConversationState.conversation_id)
            .where(Conversation.key == sender)
        )
    return state


async def test_missing_slot_is_asked_for_and_the_answer_fills_it(services: Runtime) -> None:
    question, text = await ask(services, "create an invoice", sender="ana")
    assert (question.agent_name, question.action_type) == ("system", "clarify")
    assert text.startswith("Which client is the invoice for?")
    assert question.details["provenance"]["clarify"]["for"] == "billing.create_invoice"
    assert question.details["provenance"]["clarify"]["field"] == "client"
    state = await open_state(services, "ana")
    assert state is not None
    assert state.question_activity_id == question.id

    activity, text = await ask(services, "Acme Ltd.", sender="ana")
    assert (activity.agent_name, activity.action_type) == ("billing", "create_invoice")
    assert activity.details["payload"] == {"client": "Acme Ltd."}
    provenance = activity.details["provenance"]
    assert provenance["parser"] == "clarify"
    assert provenance["original"]["rule_id"] == "invoice-create"
    assert provenance["answers"] == {"client": "Acme Ltd."}
    assert text == "create_invoice: client=Acme Ltd."
    assert await open_state(services, "ana") is None


async def test_two_missing_slots_are_asked_one_after_the_other(services: Runtime) -> None:
    # Asked in Spanish: the questions come in Spanish (the catalog gives both).
    _, text = await ask(services, "agenda una reunión", sender="bea")
    assert text.startswith("¿Con quién es la reunión?")
    _, text = await ask(services, "Carlos", sender="bea")
    assert text.startswith("¿Qué día?")
    before = tomorrow()
    activity, text = await ask(services, "mañana", sender="bea")
    assert activity.action_type == "schedule_meeting"
    # (read on either side of midnight: the day it was asked is between these two)
    assert activity.details["payload"]["with"] == "Carlos"
    assert activity.details["payload"]["date"] in {before, tomorrow()}


async def test_an_answer_that_does_not_fit_is_asked_again_then_given_up(
    services: Runtime,
) -> None:
    _, text = await ask(services, "send the invoice", sender="cai")
    assert text.startswith("Which invoice number?")
    again, text = await ask(services, "the blue one", sender="cai")
    assert again.action_type == "clarify"
    assert text.startswith("That doesn't fit")
    assert "Which invoice number?" in text
    state = await open_state(services, "cai")
    assert state is not None
    assert state.attempts == 1
    await ask(services, "no idea really", sender="cai")
    # The third unusable answer ends the question: the text is understood on its own.
    last, _ = await ask(services, "whatever", sender="cai")
    assert (last.agent_name, last.action_type) == ("system", "help")
    assert await open_state(services, "cai") is None


async def test_ambiguous_match_offers_the_options_and_a_number_picks_one(
    services: Runtime,
) -> None:
    question, text = await ask(services, "the invoice please", sender="dan")
    assert text.splitlines() == [
        "Which one do you mean?",  # asked in English: the English half
        "1. Create an invoice for a client",
        "2. Send an existing invoice to its client",
    ]
    assert question.details["provenance"]["clarify"]["choices"] == [
        {"label": "Create an invoice for a client", "text": "1"},
        {"label": "Send an existing invoice to its client", "text": "2"},
    ]
    replies = await services.store.replies_to(question.source_message_id)
    offered = await services.store.choices_of(replies[0].id)
    assert offered is not None
    assert [c.text for c in offered[1]] == ["1", "2"]  # buttons on Telegram

    _, text = await ask(services, "2", sender="dan")
    assert text.startswith("Which invoice number?")
    activity, text = await ask(services, "#12", sender="dan")
    assert (activity.action_type, activity.details["payload"]) == ("send_invoice", {"invoice": 12})
    assert activity.details["provenance"]["original"]["rule_id"] == "invoice-words"
    assert activity.details["provenance"]["answers"] == {
        "choice": "billing.send_invoice",
        "invoice": "#12",
    }


async def test_abort_a_new_request_or_a_control_intent_while_a_question_is_open(
    services: Runtime,
) -> None:
    await ask(services, "create an invoice", sender="eva")
    _, text = await ask(services, "olvídalo", sender="eva")
    assert text == "De acuerdo, lo dejo."  # "olvídalo": Spanish
    assert await open_state(services, "eva") is None
    after, _ = await ask(services, "Acme", sender="eva")
    assert after.action_type == "help"  # nothing left to fill

    await ask(services, "create an invoice", sender="eva")
    status, _ = await ask(services, "help", sender="eva")  # a control intent keeps the question
    assert status.action_type == "help"
    filled, _ = await ask(services, "Acme", sender="eva")
    assert filled.action_type == "create_invoice"

    await ask(services, "create an invoice", sender="eva")
    other, _ = await ask(services, "ticket #45", sender="eva")  # a new request replaces it
    assert (other.action_type, other.details["payload"]) == ("ticket_status", {"ticket": 45})
    assert await open_state(services, "eva") is None


async def test_questions_are_per_conversation_and_time_out(
    make_services: Callable[..., Any],
) -> None:
    async with make_services(clarify_timeout_s=0.5) as services:
        await ask(services, "create an invoice", sender="fay")
        other, _ = await ask(services, "Acme", sender="gil")  # another conversation
        assert other.action_type == "help"
        await asyncio.sleep(0.6)
        late, _ = await ask(services, "Acme", sender="fay")
        assert late.action_type == "help"
        assert await open_state(services, "fay") is None


async def test_an_llm_proposal_lacking_a_required_field_gets_a_question(
    services: Runtime, llm: LlmApi
) -> None:
    llm.scenario = lambda body: tool_call("crm__find_client", {"confidence": 0.9})
    question, text = await ask(services, "I'm looking for someone we work with", sender="hal")
    assert question.action_type == "clarify"
    assert question.details["provenance"]["parser"] == "llm"
    assert text.startswith("Which client are you looking for?")
    activity, _ = await ask(services, "Globex", sender="hal")
    assert (activity.action_type, activity.details["payload"]) == (
        "find_client",
        {"query": "Globex"},
    )
    assert len(llm.requests) == 1  # the answer is not sent to the model


async def test_an_answer_dispatched_before_its_question_waits_for_it(services: Runtime) -> None:
    """Conversation order holds for understanding too: dispatching message 2 first dispatches
    message 1 (which asks the question) and then reads 2 as the answer."""
    accepted = [
        await services.store.accept(
            InboundMessage(
                channel="rest",
                external_id=f"order-{n}",
                conversation_key="ivy",
                sender="ivy",
                text=text,
            )
        )
        for n, text in enumerate(["find client", "Initech"])
    ]
    second = await services.dispatcher.dispatch_message(accepted[1].message_id, lease_s=30)
    assert second is not None
    assert (second.outcome, second.activity_id) == ("waiting", None)
    # Message 1 asks its question, then wakes message 2, which is read as the answer.
    await jobs.dispatch_message(services, accepted[0].message_id)

    async def recorded() -> int | None:  # by the wake-up: nothing here dispatches it again
        async with services.sessions() as session:
            return await session.scalar(
                select(Activity.id).where(Activity.source_message_id == accepted[1].message_id)
            )

    activity_id = await wait_for(recorded)
    activity = await services.activities.get(activity_id)
    assert activity is not None
    assert (activity.action_type, activity.details["payload"]) == (
        "find_client",
        {"query": "Initech"},
    )

    async def asked_again() -> Any:  # None while the wake-up still holds the message's claim
        return await services.dispatcher.dispatch_message(accepted[1].message_id, lease_s=30)

    again = await wait_for(asked_again)
    assert (again.activity_id, again.created) == (activity_id, False)  # found, not made twice


async def test_approval_keywords_are_reserved_before_catalog_rules(services: Runtime) -> None:
    """ "YES 123" is a decision, never a catalog action nor the answer to an open question;
    with no approval gate configured, nothing awaits this sender's decision."""
    await ask(services, "create an invoice", sender="jon")
    decision, text = await ask(services, "SÍ 123", sender="jon")
    assert (decision.agent_name, decision.action_type) == ("system", "approve")
    assert decision.details["payload"] == {"code": 123}
    assert decision.details["result"]["data"]["applied"] is False
    # "SÍ" shows Spanish: the answer is in it.
    assert text.startswith("No hay nada pendiente de tu decisión con el código 123.")
    rejected, _ = await ask(services, "rechazar 123", sender="jon")
    assert rejected.action_type == "reject"
    filled, _ = await ask(services, "Acme", sender="jon")  # the question is still open
    assert filled.action_type == "create_invoice"
