"""Clarify, don't guess: a request missing a required detail, or matching several actions, gets a
question back, and the next message of the conversation answers it.

The open question lives in ``conversation_states`` (one per conversation, with a time-out) as a
:class:`Pending`. This module is the pure logic: which question to ask for an intent, and what an
answer makes of a pending question. :class:`~dispatch.work.service.DispatchService` loads and stores
the state in the transaction that records the activity.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

import msgspec

from dispatch.language.i18n import LANGUAGES, say
from dispatch.language.text import normalize
from dispatch.policy.catalog import Catalog, PayloadError
from dispatch.policy.control import CLARIFY_ACTION, SOFT_CONTROL_RULES, SYSTEM_AGENT
from dispatch.policy.specs import ActionSpec
from dispatch.record.messages import Choice
from dispatch.understanding.intents import Intent

__all__ = ["MAX_ASKS", "Clarifier", "Pending", "Resolution"]

MAX_ASKS = 3
"""Times one question is asked before the gateway stops waiting for a usable answer."""

_ABORT = re.compile(
    r"^\s*(?:cancel|cancela|cancelar|stop|para|forget\s+it|never\s*mind|nevermind|olvidalo|"
    r"dejalo|no\s+importa|nada|nothing|no)\s*[.!]*\s*$"
)
_NUMBER = re.compile(r"^\s*(?:#|n[°º]?\s*)?(\d{1,2})\s*[.)]?\s*$")
DROPPED = "OK, I dropped that request. / De acuerdo, lo dejo."


class Pending(msgspec.Struct, frozen=True, kw_only=True):
    """A question the gateway asked and the request it belongs to."""

    kind: Literal["fill", "choose"]
    agent: str
    action: str
    payload: dict[str, Any] = {}
    missing: tuple[str, ...] = ()
    """``fill``: the required fields still lacking; the first is the one asked for."""
    options: tuple[tuple[str, str], ...] = ()
    """``choose``: the (agent, action) pairs offered, in the order numbered in the question."""
    provenance: dict[str, Any] = {}
    """How the original request was understood (rule or model)."""


class Resolution(msgspec.Struct, frozen=True, kw_only=True):
    """What a message does to a conversation's open question.

    ``intent`` None means: interpret the message as usual. ``state`` is the question to keep
    open afterwards: ``"keep"`` the current one, ``"clear"``, or a new :class:`Pending`.
    """

    intent: Intent | None
    state: Pending | Literal["keep", "clear"]
    attempts: int = 0


class Clarifier:
    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def settle(self, intent: Intent) -> tuple[Intent, Pending | None]:
        """The intent to record for ``intent``: itself if complete, else a question."""
        if not intent.matched or (not intent.missing and not intent.alternatives):
            return intent, None
        if intent.alternatives:
            pending = Pending(
                kind="choose",
                agent=intent.agent,
                action=intent.action_type,
                payload=intent.payload,
                options=((intent.agent, intent.action_type), *intent.alternatives),
                provenance=intent.provenance,
            )
        else:
            pending = Pending(
                kind="fill",
                agent=intent.agent,
                action=intent.action_type,
                payload=intent.payload,
                missing=intent.missing,
                provenance=intent.provenance,
            )
        return self.ask(pending), pending

    def ask(self, pending: Pending, *, hint: str = "") -> Intent:
        """The ``system.clarify`` intent that puts ``pending``'s question to the user."""
        choices: list[Choice] = []
        language = _asked_in(pending)
        if pending.kind == "choose":
            lines = [_each(lambda lang: say("clarify.which", lang))]
            for number, (agent, action) in enumerate(pending.options, start=1):
                spec = self._catalog.action(agent, action)
                label = spec.words(language)[0] if spec else f"{agent}.{action}"
                lines.append(f"{number}. {label}" if spec is None else _numbered(number, spec))
                choices.append(Choice(label=label[:64], text=str(number)))
            question = "\n".join(lines)
            asked: dict[str, Any] = {"options": [f"{a}.{n}" for a, n in pending.options]}
        else:
            field_name = pending.missing[0]
            spec = self._catalog.action(pending.agent, pending.action)
            question = (
                _each(lambda lang: spec.question(field_name, lang))
                if spec
                else f"What is {field_name}?"
            )
            asked = {"field": field_name}
        return Intent(
            agent=SYSTEM_AGENT,
            action_type=CLARIFY_ACTION,
            payload={"question": f"{hint}\n{question}" if hint else question},
            rule_id=pending.provenance.get("rule_id"),
            provenance={
                **pending.provenance,
                "clarify": {
                    "kind": pending.kind,
                    "for": f"{pending.agent}.{pending.action}",
                    **asked,
                    "choices": [msgspec.to_builtins(c) for c in choices],
                },
            },
        )

    def resume(self, pending: Pending, attempts: int, text: str, parsed: Intent) -> Resolution:
        """What ``text`` (parsed by the rules as ``parsed``) does to the open question."""
        rule_id = parsed.rule_id or ""
        if rule_id in SOFT_CONTROL_RULES:
            pass  # "#12", "yes", "no" answer the question
        elif rule_id.startswith("control:"):
            return Resolution(intent=parsed, state="keep", attempts=attempts)
        elif parsed.matched and parsed.provenance.get("by") == "pattern":
            return Resolution(intent=None, state="clear")  # a new request replaces the old one
        folded = normalize(text)
        if _ABORT.match(folded):
            return Resolution(intent=self._say(DROPPED, pending), state="clear")
        answered: Intent | str | None = (
            self._fill(pending, text) if pending.kind == "fill" else self._choose(pending, folded)
        )
        if isinstance(answered, Intent):
            return Resolution(intent=answered, state="clear")
        if attempts + 1 >= MAX_ASKS:
            return Resolution(intent=None, state="clear")
        hint = answered or say("clarify.pick", _asked_in(pending))
        return Resolution(intent=self.ask(pending, hint=hint), state=pending, attempts=attempts + 1)

    def _fill(self, pending: Pending, text: str) -> Intent | str:
        field_name = pending.missing[0]
        value = text.strip()
        try:
            payload = self._catalog.validate_payload(
                pending.agent, pending.action, {**pending.payload, field_name: value}, partial=True
            )
        except PayloadError as exc:
            return say("clarify.misfit", _asked_in(pending), problem=exc)
        return self._resumed(pending, pending.agent, pending.action, payload, {field_name: value})

    def _choose(self, pending: Pending, folded: str) -> Intent | None:
        number = _NUMBER.match(folded)
        chosen: tuple[str, str] | None = None
        if number is not None and 1 <= int(number.group(1)) <= len(pending.options):
            chosen = pending.options[int(number.group(1)) - 1]
        else:
            for agent, action in pending.options:
                spec = self._catalog.action(agent, action)
                names = {normalize(action.replace("_", " ")), normalize(action)}
                if spec is not None:
                    # A button sends its label: the description, cut to a button's length.
                    for language in LANGUAGES:
                        description = spec.words(language)[0]
                        names.add(normalize(description))
                        names.add(normalize(description[:64]))
                if folded in names:
                    chosen = (agent, action)
                    break
        if chosen is None:
            return None
        agent, action = chosen
        # Keyword matches carry no captured fields, only fixed ones the chosen action accepts.
        spec = self._catalog.action(agent, action)
        payload = {k: v for k, v in pending.payload.items() if spec and k in spec.payload}
        return self._resumed(pending, agent, action, payload, {"choice": f"{agent}.{action}"})

    def _resumed(
        self,
        pending: Pending,
        agent: str,
        action: str,
        payload: dict[str, Any],
        answer: dict[str, Any],
    ) -> Intent:
        # One flat record however many questions it took: what was first understood, and
        # every answer given since.
        original = pending.provenance.get("original", pending.provenance)
        answers = {**pending.provenance.get("answers", {}), **answer}
        return Intent(
            agent=agent,
            action_type=action,
            payload=payload,
            rule_id=original.get("rule_id"),
            provenance={"parser": "clarify", "original": original, "answers": answers},
            missing=tuple(self._catalog.missing_fields(agent, action, payload)),
        )

    def _say(self, text: str, pending: Pending) -> Intent:
        return Intent(
            agent=SYSTEM_AGENT,
            action_type=CLARIFY_ACTION,
            payload={"question": text},
            provenance={"parser": "clarify", "dropped": f"{pending.agent}.{pending.action}"},
        )


def _asked_in(pending: Pending) -> str | None:
    """The language the question was asked in (recorded with it)."""
    language = pending.provenance.get("language")
    return language if isinstance(language, str) else None


def _each(render: Callable[[str], str]) -> str:
    """A line in every language, ``"English / Español"`` (the order of :data:`LANGUAGES`), cut
    to the conversation's language where it is sent (:func:`in_language`); once if all agree."""
    texts = [render(language) for language in LANGUAGES]
    return texts[0] if len(set(texts)) == 1 else " / ".join(texts)


def _numbered(number: int, spec: ActionSpec) -> str:
    """An option of a choice, in every language."""
    return _each(lambda language: f"{number}. {spec.words(language)[0]}")
