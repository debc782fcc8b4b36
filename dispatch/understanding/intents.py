"""Rule-based intent parsing: the catalog's ordered rules turn text into an :class:`Intent`.

The LLM fallback (a later issue) plugs in behind :class:`IntentParser` as another proposer whose
proposals are validated by the same code.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from dispatch.language.text import NormalizedText
from dispatch.policy.catalog import WORD, Catalog, CompiledRule, PayloadError

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
    missing: tuple[str, ...] = ()
    """Required payload fields the message did not give: ask for them, don't guess."""
    alternatives: tuple[tuple[str, str], ...] = ()
    """Other (agent, action) the message matched as well (by keywords): ask which one."""


class IntentParser:
    """Tries the catalog's rules in order; the first that matches with a valid payload wins.

    A rule's patterns are tried before its keywords. The rules are flattened once into one
    list of (rule, regex, is_keyword) so parsing is a single tight loop of ``search`` calls.
    A match may lack required fields (``Intent.missing``); a match by keywords only also
    collects the other actions whose keywords match (``Intent.alternatives``).
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
        words: set[str] | None = None
        for index, (rule, regex, is_keyword) in enumerate(self._flat):
            if is_keyword:
                if rule is matched_rule:
                    continue  # a rule's keywords count only when none of its patterns matched
                if rule.keyword_heads is not None:
                    # A keyword search scans the whole text; the word set is built once and
                    # rules none of whose keywords' first words occur are skipped.
                    if words is None:
                        words = set(WORD.findall(folded))
                    if rule.keyword_heads.isdisjoint(words):
                        continue
            match = regex.search(folded)
            if match is None:
                continue
            matched_rule = rule
            payload = _captured(rule, match, normalized) if not is_keyword else dict(rule.payload)
            if rule.text_field is not None:
                payload[rule.text_field] = text.strip()
            intent = self._validated(rule, payload, "keywords" if is_keyword else "pattern")
            if intent is None:
                continue
            if is_keyword:
                others = self._other_keyword_actions(
                    rule, folded, words or set(WORD.findall(folded)), index + 1
                )
                if others:
                    return msgspec.structs.replace(intent, alternatives=others)
            return intent
        return self._fallback()

    def _other_keyword_actions(
        self, first: CompiledRule, folded: str, words: set[str], start: int
    ) -> tuple[tuple[str, str], ...]:
        seen = {(first.agent, first.action)}
        others: list[tuple[str, str]] = []
        for rule, regex, is_keyword in self._flat[start:]:
            key = (rule.agent, rule.action)
            if not is_keyword or key in seen:
                continue
            if rule.keyword_heads is not None and rule.keyword_heads.isdisjoint(words):
                continue
            if regex.search(folded) is not None:
                seen.add(key)
                others.append(key)
        return tuple(others)

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

    def _validated(self, rule: CompiledRule, payload: dict[str, Any], by: str) -> Intent | None:
        try:
            valid = self._catalog.validate_payload(rule.agent, rule.action, payload, partial=True)
        except PayloadError:
            return None
        return Intent(
            agent=rule.agent,
            action_type=rule.action,
            payload=valid,
            rule_id=rule.id,
            provenance={"parser": "rules", "rule_id": rule.id, "by": by},
            missing=tuple(self._catalog.missing_fields(rule.agent, rule.action, valid)),
        )


def _captured(
    rule: CompiledRule, match: re.Match[str], normalized: NormalizedText
) -> dict[str, Any]:
    """The rule's fixed payload plus its named groups, as the user typed them."""
    payload = dict(rule.payload)
    for name, value in match.groupdict().items():
        if value is not None:
            payload[name] = normalized.original(*match.span(name)).strip()
    return payload
