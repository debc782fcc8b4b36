"""Rule-based intent parsing: the catalog's ordered rules turn text into an :class:`Intent`.

The LLM fallback (a later issue) plugs in behind :class:`IntentParser` as another proposer whose
proposals are validated by the same code.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from dispatch.catalog import Catalog, CompiledRule, PayloadError
from dispatch.text import NormalizedText

__all__ = ["Intent", "IntentParser"]


class Intent(msgspec.Struct, frozen=True, kw_only=True):
    """A parsed request: which agent should do what, with which payload, and why we think so."""

    agent: str
    action_type: str
    payload: dict[str, Any]
    rule_id: str | None = None
    """The catalog rule that matched, or None for the fallback."""
    matched: bool = True
    provenance: dict[str, Any] = {}
    """How this was decided: the rule, or the model, prompt version, latency and proposal."""


class IntentParser:
    """Tries the catalog's rules in order; the first that matches with a valid payload wins.

    A rule's patterns are tried before its keywords. The rules are flattened once into one
    list of (rule, regex, is_keyword) so parsing is a single tight loop of ``search`` calls.
    """

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        flat: list[tuple[CompiledRule, re.Pattern[str], bool]] = []
        for rule in catalog.rules:
            flat.extend((rule, pattern, False) for pattern in rule.patterns)
            if rule.keywords is not None:
                flat.append((rule, rule.keywords, True))
        self._flat = tuple(flat)

    def parse(self, text: str) -> Intent:
        normalized = NormalizedText(text)
        folded = normalized.text
        matched_rule: CompiledRule | None = None
        for rule, regex, is_keyword in self._flat:
            if is_keyword and rule is matched_rule:
                continue  # a rule's keywords count only when none of its patterns matched
            match = regex.search(folded)
            if match is None:
                continue
            matched_rule = rule
            payload = dict(rule.payload)
            if not is_keyword:
                for name, value in match.groupdict().items():
                    if value is not None:
                        payload[name] = normalized.original(*match.span(name)).strip()
            intent = self._validated(rule, payload)
            if intent is not None:
                return intent
        return self._fallback()

    def _fallback(self) -> Intent:
        fallback = self._catalog.fallback
        return Intent(
            agent=fallback.agent,
            action_type=fallback.action,
            payload={},
            rule_id=None,
            matched=False,
            provenance={"parser": "rules", "rule_id": None},
        )

    def _validated(self, rule: CompiledRule, payload: dict[str, Any]) -> Intent | None:
        try:
            valid = self._catalog.validate_payload(rule.agent, rule.action, payload)
        except PayloadError:
            return None
        return Intent(
            agent=rule.agent,
            action_type=rule.action,
            payload=valid,
            rule_id=rule.id,
            provenance={"parser": "rules", "rule_id": rule.id},
        )
