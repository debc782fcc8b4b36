from __future__ import annotations

import pytest

from dispatch.language.text import NormalizedText, normalize
from dispatch.policy.catalog import decode_catalog, load_catalog
from dispatch.understanding.intents import IntentParser
from workers.handlers import BUILTIN_HANDLER_NAMES

HANDLERS = BUILTIN_HANDLER_NAMES


@pytest.fixture(scope="module")
def parser() -> IntentParser:
    return IntentParser(load_catalog(None, HANDLERS))


@pytest.mark.parametrize(
    ("text", "action", "payload"),
    [
        ("help", "help", {}),
        ("AYUDA", "help", {}),
        ("Ayúda!", "help", {}),
        ("/start", "help", {}),
        ("¿Qué puedes hacer?", "help", {}),
        ("what can you do", "help", {}),
        ("echo hello there", "echo", {"text": "hello there"}),
        ("Repite: Ñandú Feliz", "echo", {"text": "Ñandú Feliz"}),
        ("DI  hola  mundo", "echo", {"text": "hola  mundo"}),
        ("status 12", "status", {"activity_id": 12}),
        ("Estado de mi solicitud #7", "status", {"activity_id": 7}),
        ("estado nº 9", "status", {"activity_id": 9}),
        ("#44", "status", {"activity_id": 44}),
        ("¿Cómo va mi pedido 5?", "status", {"activity_id": 5}),
        ("how is my request 3", "status", {"activity_id": 3}),
        ("cancel 12", "cancel", {"activity_id": 12}),
        ("Cancelar mi solicitud #4", "cancel", {"activity_id": 4}),
        ("anula el pedido nº 9", "cancel", {"activity_id": 9}),
        ("YES 123", "approve", {"code": 123}),
        ("sí 123", "approve", {"code": 123}),
        ("Aprobar #123.", "approve", {"code": 123}),
        ("ok 7", "approve", {"code": 7}),
        ("approve: 8", "approve", {"code": 8}),
        ("NO 123", "reject", {"code": 123}),
        ("Rechazar 123!", "reject", {"code": 123}),
        ("reject #5", "reject", {"code": 5}),
        ("Sí", "approve", {}),
        ("no.", "reject", {}),
        ("RUN 17", "run", {"code": 17}),
        ("ejecutar #17", "run", {"code": 17}),
    ],
)
def test_rules_in_spanish_and_english(
    parser: IntentParser, text: str, action: str, payload: dict[str, object]
) -> None:
    intent = parser.parse(text)
    agent = "assistant" if action == "echo" else "system"
    assert (intent.agent, intent.action_type, intent.payload) == (agent, action, payload)
    assert intent.matched
    assert intent.rule_id is not None


@pytest.mark.parametrize(
    "text",
    ["blah", "status abc", "echo", "helpful people", "yes please", "no way 123", "ok"],
)
def test_unmatched_text_falls_back_to_help(parser: IntentParser, text: str) -> None:
    intent = parser.parse(text)
    assert not intent.matched
    assert intent.rule_id is None
    assert (intent.agent, intent.action_type) == ("system", "help")


def test_captures_keep_the_users_original_text() -> None:
    folded = NormalizedText("  ÉCHO   Crème  Brûlée ")
    assert folded.text == "echo creme brulee"
    assert folded.original(5, len(folded.text)) == "Crème  Brûlée"
    assert normalize("İstanbul") == "istanbul"


def test_order_matters_and_keywords_are_whole_words() -> None:
    catalog = decode_catalog(
        b"""
[fallback]
agent = "a"
action = "help"
[agents.a.actions.help]
description = "h"
handler = "help"
public = true
[agents.a.actions.echo]
description = "e"
handler = "echo"
public = true
[agents.a.actions.echo.payload]
text = { type = "string" }
[[rules]]
id = "fixed"
agent = "a"
action = "echo"
keywords = ["ping", "canci\xc3\xb3n"]
payload = { text = "pong" }
[[rules]]
id = "second"
agent = "a"
action = "help"
keywords = ["ping"]
""",
        "t.toml",
        HANDLERS,
    )
    parser = IntentParser(catalog)
    assert parser.parse("PING please").payload == {"text": "pong"}
    assert parser.parse("una cancion").rule_id == "fixed"
    assert parser.parse("pinging").matched is False


KEYWORD_CATALOG = """
[fallback]
agent = "a"
action = "help"
[agents.a.actions.help]
description = "h"
handler = "help"
public = true
[agents.a.actions.mail]
description = "m"
handler = "echo"
public = true
[agents.a.actions.ask]
description = "q"
handler = "echo"
public = true
[agents.a.actions.ticket]
description = "t"
handler = "echo"
public = true
[agents.a.actions.ticket.payload]
summary = { type = "string" }
[[rules]]
id = "mail"
agent = "a"
action = "mail"
keywords = ["e-mail", "correo electrónico", "Send Mail"]
[[rules]]
id = "ask"
agent = "a"
action = "ask"
keywords = ["¿qué hay?"]
[[rules]]
id = "ticket"
agent = "a"
action = "ticket"
keywords = ["no funciona", "broken"]
text_field = "summary"
"""


@pytest.mark.parametrize(
    ("text", "rule_id"),
    [
        ("my E-Mail is down", "mail"),
        ("el CORREO  electronico", "mail"),
        ("please send mail now", "mail"),
        ("sendmail", None),
        ("emails", None),
        ("¿Qué hay?", "ask"),  # starts with no word character: never skipped by the word gate
        ("que hay", None),
    ],
)
def test_keyword_word_gate_skips_only_what_cannot_match(text: str, rule_id: str | None) -> None:
    parser = IntentParser(decode_catalog(KEYWORD_CATALOG.encode(), "k.toml", HANDLERS))
    assert parser.parse(text).rule_id == rule_id
    gated = [r for r in parser._catalog.rules if r.id in {"mail", "ask"}]
    assert [r.keyword_heads for r in gated] == [frozenset({"e", "correo", "send"}), None]


def test_text_field_takes_the_whole_message_and_a_missing_field_is_reported() -> None:
    parser = IntentParser(decode_catalog(KEYWORD_CATALOG.encode(), "k.toml", HANDLERS))
    intent = parser.parse("  La impresora no funciona ")
    assert intent.payload == {"summary": "La impresora no funciona"}
    assert intent.missing == ()
    assert intent.provenance["by"] == "keywords"


@pytest.mark.parametrize(
    ("text", "action"), [("status", "status"), ("Estado", "status"), ("cancel", "cancel")]
)
def test_a_bare_status_or_cancel_is_understood_with_the_number_missing(
    parser: IntentParser, text: str, action: str
) -> None:
    intent = parser.parse(text)
    assert (intent.agent, intent.action_type, intent.missing) == (
        "system",
        action,
        ("activity_id",),
    )
