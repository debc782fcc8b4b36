"""The gateway's own words in the user's language."""

from __future__ import annotations

import pytest

from dispatch.language.i18n import detect, say, spoken, status_word


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("ayuda", "es"),
        ("¿qué puedes hacer?", "es"),
        ("quiero cancelar mi solicitud", "es"),
        ("repite hola", "es"),
        ("dar de alta a ACME", "es"),
        ("help", "en"),
        ("what can you do", "en"),
        ("status of my request", "en"),
        ("12", None),
        ("ok", None),
    ],
)
def test_the_language_a_message_shows(text: str, language: str | None) -> None:
    assert detect(text) == language


def test_a_message_without_a_clue_takes_its_channels_word_or_the_earlier_one() -> None:
    telegram = {"message": {"from": {"language_code": "es-ES"}, "text": "12"}}
    assert spoken("12", telegram) == "es"
    assert spoken("12", {"lang": "es-MX"}) == "es"
    assert spoken("12", {}, "es") == "es"
    assert spoken("help", telegram) == "en"  # what the text shows comes first
    assert spoken("/help", telegram) == "es"  # a command is no language
    assert spoken("12", {"lang": "fr"}) is None


def test_texts_fall_back_to_english() -> None:
    assert say("cancel.done", "es", id=3) == "Solicitud #3 cancelada."
    assert say("cancel.done", "fr", id=3) == "Request #3 cancelled."
    assert say("cancel.done", None, id=3) == "Request #3 cancelled."
    assert status_word("completed", "es") == "completada"
    assert status_word("completed", "en") == "completed"
