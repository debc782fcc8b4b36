"""Telling a reply's language by what the product itself writes: every text of
``dispatch/language/messages/<code>.toml`` and every catalog word, as patterns. A reply that
matches a pattern of another language (and none of its own with the same words) is in the
wrong language."""

from __future__ import annotations

import re
import string
import tomllib
from collections.abc import Iterator
from pathlib import Path

from dispatch.language.i18n import DEFAULT, LANGUAGES
from dispatch.policy.catalog import Catalog

MESSAGES = Path(__file__).resolve().parents[2] / "dispatch" / "language" / "messages"
_LETTERS = re.compile(r"[^\W\d_]{4,}")


def _pattern(template: str) -> re.Pattern[str] | None:
    """A text with ``{placeholders}`` as a pattern; None when its fixed words are too few to
    tell anything (``"{who}: {status}"``)."""
    chunks = [literal for literal, *_ in string.Formatter().parse(template)]
    if sum(len(_LETTERS.findall(chunk)) for chunk in chunks) < 2:
        return None
    return re.compile(
        ".+?".join(re.escape(chunk.strip()) for chunk in chunks if chunk.strip()), re.DOTALL
    )


_TEMPLATE = re.compile(r"\{\{.*?\}\}")


def _step_texts(language: str, catalog: Catalog) -> Iterator[str]:
    """A workflow's step texts in ``language`` (its templates' ``{{ ... }}`` as placeholders)."""
    for flow in catalog.workflows.values():
        for step in flow.steps.values():
            local = step.localized.get(language)
            payload = step.payload if language == DEFAULT else local.payload if local else {}
            for value in payload.values():
                if isinstance(value, str):
                    yield _TEMPLATE.sub("{value}", value)


def _texts(language: str, catalog: Catalog) -> Iterator[str]:
    data = tomllib.loads((MESSAGES / f"{language}.toml").read_text(encoding="utf-8"))
    yield from data["texts"].values()
    yield from _step_texts(language, catalog)
    for _, _, spec in catalog.actions():
        if language == DEFAULT:
            yield spec.description
            yield from [spec.reply] if spec.reply else []
            yield from (spec.question(name, language) for name in spec.payload)
            continue
        # Only what is written in this language: a fallback to the default is not its own.
        local = spec.localized.get(language)
        if local is not None:
            yield from [local.description, *([local.reply] if local.reply else [])]
            yield from local.questions.values()


def foreign(text: str, language: str, catalog: Catalog) -> list[str]:
    """The texts of other languages that ``text`` reads as (empty: none)."""
    own = set(_texts(language, catalog))
    found = []
    for other in LANGUAGES:
        if other == language:
            continue
        for template in set(_texts(other, catalog)) - own:
            pattern = _pattern(template)
            if pattern is not None and pattern.search(text):
                found.append(template)
    return found
