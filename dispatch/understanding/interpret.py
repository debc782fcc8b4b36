"""From text to an :class:`~dispatch.understanding.intents.Intent`: rules, then the LLM, then help.

The LLM only proposes. Its proposal becomes an intent only if the tool is one this sender was
offered (catalog ∩ permissions), its arguments decode against the action's payload schema, and
its confidence reaches the floor. Otherwise the message falls back to help, the reason is kept
in the provenance, and a counter is raised.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from dispatch.infra.clean import clean_json
from dispatch.infra.metrics import Counters
from dispatch.policy.catalog import Catalog, PayloadError
from dispatch.policy.permissions import may_request
from dispatch.understanding.intents import Intent, IntentParser
from dispatch.understanding.llm import (
    PROMPT_VERSION,
    LlmClient,
    LlmUnavailable,
    Proposal,
    tool_name,
)

__all__ = ["History", "Interpreter"]

log = logging.getLogger("switchboard.interpret")

History = Callable[[], Awaitable[Sequence[tuple[str, str]]]]


class Interpreter:
    def __init__(
        self,
        *,
        catalog: Catalog,
        parser: IntentParser,
        llm: LlmClient | None,
        counters: Counters,
        confidence_floor: float,
    ) -> None:
        self._catalog = catalog
        self._parser = parser
        self._llm = llm
        self._counters = counters
        self._floor = confidence_floor

    def rules(self, text: str) -> Intent:
        """The catalog's rules alone (no LLM)."""
        return self._parser.parse(text)

    def decided(self, text: str) -> Intent | None:
        """The intent if the rules settle it (or no LLM is to be asked); None: ask the LLM."""
        intent = self._parser.parse(text)
        if intent.matched or self._llm is None or not text.strip():
            return intent
        return None

    async def interpret(
        self, text: str, *, role: str | None, active: bool, history: History
    ) -> Intent:
        intent = self._parser.parse(text)
        if intent.matched or self._llm is None or not text.strip():
            return intent
        offered = [
            (agent, action, spec)
            for agent, action, spec in self._catalog.actions()
            if not spec.internal and may_request(role, active, spec)
        ]
        base: dict[str, Any] = {
            "parser": "llm",
            "model": self._llm.model,
            "prompt_version": PROMPT_VERSION,
        }
        try:
            proposal = await self._llm.propose(text, offered, await history())
        except LlmUnavailable as exc:
            await self._counters.incr("llm_unavailable_total")
            log.warning("LLM unavailable; falling back to help", extra={"reason": str(exc)})
            return self._fallback(intent, {**base, "outcome": "unavailable", "reason": str(exc)})
        provenance = {
            **base,
            "latency_ms": proposal.latency_ms,
            "proposal": {"tool": proposal.tool, "arguments": proposal.arguments},
        }
        accepted = self._check(proposal, {tool_name(a, n) for a, n, _ in offered})
        if isinstance(accepted, str):
            await self._counters.incr("llm_rejected_total")
            return self._fallback(intent, {**provenance, "outcome": "rejected", "reason": accepted})
        await self._counters.incr("llm_accepted_total")
        agent, action, payload = accepted
        return Intent(
            agent=agent,
            action_type=action,
            payload=payload,
            provenance={**provenance, "outcome": "accepted"},
            missing=tuple(self._catalog.missing_fields(agent, action, payload)),
        )

    def _check(  # noqa: PLR0911 - one early return per reason a proposal is refused
        self, proposal: Proposal, offered: set[str]
    ) -> tuple[str, str, dict[str, Any]] | str:
        """(agent, action, payload) if acceptable, else why not."""
        if proposal.tool is None:
            return "the model proposed no action"
        if proposal.tool not in offered:
            return f"{proposal.tool!r} is not an action this sender may run"
        if not isinstance(proposal.arguments, dict) or "__malformed__" in proposal.arguments:
            return "arguments are not a JSON object"
        if clean_json(proposal.arguments) != proposal.arguments:
            return "arguments carry characters that cannot be kept (NUL)"
        arguments = dict(proposal.arguments)
        confidence = arguments.pop("confidence", None)
        if not isinstance(confidence, int | float) or isinstance(confidence, bool):
            return "no confidence given"
        if confidence < self._floor:
            return f"confidence {confidence} is below {self._floor}"
        agent, _, action = proposal.tool.partition("__")
        try:
            # Partial: a missing required field is asked for (understanding.clarify), not guessed.
            payload = self._catalog.validate_payload(agent, action, arguments, partial=True)
        except PayloadError as exc:
            return f"payload refused: {exc}"
        return agent, action, payload

    def _fallback(self, intent: Intent, provenance: dict[str, Any]) -> Intent:
        return Intent(
            agent=intent.agent,
            action_type=intent.action_type,
            payload=intent.payload,
            matched=False,
            provenance=provenance,
        )
