"""Reserved control intents, handled before any catalog rule and never shadowed by one.

They belong to the built-in ``system`` agent, which every catalog gets: ``help`` (what can I
ask), ``status <id>`` (the state of one of my requests) and ``cancel <id>`` (withdraw one of my
requests that has not started), ``approve``/``reject`` (``YES 123`` / ``NO 123``: a decision
on a request awaiting approval). ``clarify`` is never asked for: the gateway creates it to put a
question back to the user (see :mod:`dispatch.understanding.clarify`).
"""

from __future__ import annotations

from typing import Any

from dispatch.policy.specs import ActionSpec, AgentSpec, FieldSpec, LocalizedSpec, RuleSpec

__all__ = [
    "BARE_REFERENCE_RULE",
    "CLARIFY_ACTION",
    "CONTROL_RULES",
    "NOTICE_ACTION",
    "SOFT_CONTROL_RULES",
    "SYSTEM_AGENT",
    "system_agent",
]

SYSTEM_AGENT = "system"
CLARIFY_ACTION = "clarify"
NOTICE_ACTION = "notice"
BARE_REFERENCE_RULE = "control:status-ref"
BARE_APPROVE_RULE = "control:approve-bare"
BARE_REJECT_RULE = "control:reject-bare"
BARE_STATUS_RULE = "control:status-ask"
BARE_CANCEL_RULE = "control:cancel-ask"
SOFT_CONTROL_RULES = frozenset(
    {BARE_REFERENCE_RULE, BARE_APPROVE_RULE, BARE_REJECT_RULE, BARE_STATUS_RULE, BARE_CANCEL_RULE}
)
"""Control rules that give way to an open question: there "#12", "yes", "no" are answers."""
_ID = FieldSpec(
    type="id",
    description="the request number",
    question="Which request? Its number, e.g. 12. / ¿Qué solicitud? Su número, p. ej. 12.",
)
_CODE_FIELD = FieldSpec(type="id", required=False, description="the approval code")

_NUMBER = r"\s*(?:#|no\.?|n[°º]|num(?:ero)?\.?|number)?\s*(?P<activity_id>\d+)\s*[.!?]*\s*$"

_CODE = r"\s*[:,]?\s*#?(?P<code>\d+)\s*[.!]*\s*$"

CONTROL_RULES: tuple[RuleSpec, ...] = (
    RuleSpec(
        id="control:help",
        agent=SYSTEM_AGENT,
        action="help",
        patterns=(r"^\s*(?:/start|/help|help|ayuda|menu|\?)\s*[.!?]*\s*$",),
    ),
    RuleSpec(
        id="control:status",
        agent=SYSTEM_AGENT,
        action="status",
        patterns=(
            r"^\s*(?:status|state|estado|situacion)\s*(?:of|de|del)?\s*(?:my\s+|mi\s+)?"
            r"(?:request|activity|solicitud|actividad|pedido)?" + _NUMBER,
        ),
    ),
    RuleSpec(
        # A bare "#12" asks for a status, unless a question is open: then it is the answer.
        id=BARE_REFERENCE_RULE,
        agent=SYSTEM_AGENT,
        action="status",
        patterns=(r"^\s*#(?P<activity_id>\d+)\s*\??\s*$",),
    ),
    RuleSpec(
        id="control:approve",
        agent=SYSTEM_AGENT,
        action="approve",
        patterns=(
            r"^\s*(?:yes|si|approve|approved|aprobar|apruebo|aprobado|ok|okay|vale)" + _CODE,
        ),
    ),
    RuleSpec(
        id="control:reject",
        agent=SYSTEM_AGENT,
        action="reject",
        patterns=(r"^\s*(?:no|reject|rejected|deny|rechazar|rechazo|rechazado|denegar)" + _CODE,),
    ),
    RuleSpec(
        # A bare "YES"/"NO": decides when exactly one request awaits this approver. Not a bare
        # "ok"/"vale": people say that to acknowledge, not to approve (the evaluation set's
        # negatives caught it).
        id=BARE_APPROVE_RULE,
        agent=SYSTEM_AGENT,
        action="approve",
        patterns=(r"^\s*(?:yes|si|approve|aprobar|apruebo)\s*[.!]*\s*$",),
    ),
    RuleSpec(
        id=BARE_REJECT_RULE,
        agent=SYSTEM_AGENT,
        action="reject",
        patterns=(r"^\s*(?:no|reject|rechazar|rechazo)\s*[.!]*\s*$",),
    ),
    RuleSpec(
        id="control:run",
        agent=SYSTEM_AGENT,
        action="run",
        patterns=(r"^\s*(?:run|ejecutar|ejecuta)" + _CODE,),
    ),
    RuleSpec(
        # "status" alone (a help button): which request is asked back.
        id=BARE_STATUS_RULE,
        agent=SYSTEM_AGENT,
        action="status",
        patterns=(r"^\s*(?:status|state|estado)\s*[.!?]*\s*$",),
    ),
    RuleSpec(
        # "cancel" alone: which request is asked back (with a question open, it drops that).
        id=BARE_CANCEL_RULE,
        agent=SYSTEM_AGENT,
        action="cancel",
        patterns=(r"^\s*(?:cancel|cancela|cancelar)\s*[.!?]*\s*$",),
    ),
    RuleSpec(
        id="control:human",
        agent=SYSTEM_AGENT,
        action="human",
        patterns=(
            r"^\s*(?:(?:i\s+want\s+to\s+|can\s+i\s+|quiero\s+|puedo\s+)?(?:talk|speak|hablar)"
            r"\s+(?:to|with|con)\s+)?(?:an?\s+|una?\s+)?(?:agent|agente|human|humano|person|"
            r"persona|operator|operador|real\s+person|persona\s+real)\s*(?:please|por\s+favor)?"
            r"\s*[.!?]*\s*$",
        ),
    ),
    RuleSpec(
        id="control:cancel",
        agent=SYSTEM_AGENT,
        action="cancel",
        patterns=(
            r"^\s*(?:cancel|cancela|cancelar|anula|anular)\s*(?:the\s+|la\s+|el\s+|mi\s+|my\s+)?"
            r"(?:request|solicitud|pedido|actividad)?" + _NUMBER,
        ),
    ),
)


def _decision(description: str) -> ActionSpec:
    return ActionSpec(
        description=description,
        handler="decide",
        public=True,
        internal=True,
        overtakes=True,
        timeout_s=10,
        payload={"code": _CODE_FIELD},
    )


def _asked(
    description: str, handler: str, example: str, spanish: LocalizedSpec, **more: Any
) -> ActionSpec:
    """A built-in action people ask for (public, ahead of what waits)."""
    return ActionSpec(
        description=description,
        handler=handler,
        public=True,
        overtakes=True,
        timeout_s=more.pop("timeout_s", 5),
        examples=(example,),
        localized={"es": spanish},
        **more,
    )


def _internal(
    description: str, handler: str, field: str, spec: FieldSpec, **more: Any
) -> ActionSpec:
    """A built-in action only the gateway itself starts (never offered to people or the LLM)."""
    return ActionSpec(
        description=description,
        handler=handler,
        public=True,
        internal=True,
        timeout_s=more.pop("timeout_s", 5),
        payload={field: spec},
        **more,
    )


def system_agent() -> AgentSpec:
    return AgentSpec(
        description="Built in: help, the state of a request, cancelling one.",
        actions={
            "help": _asked(
                "List what you can ask",
                "help",
                "help",
                LocalizedSpec("Lista lo que puedes pedir", ("ayuda",)),
            ),
            "status": _asked(
                "Show the state of one of your requests",
                "status",
                "status 12",
                LocalizedSpec(
                    "Muestra el estado de una de tus solicitudes", ("estado 12",), "estado"
                ),
                payload={"activity_id": _ID},
                button="status",
            ),
            "cancel": _asked(
                "Cancel one of your requests that has not started",
                "cancel",
                "cancel 12",
                LocalizedSpec(
                    "Cancela una de tus solicitudes que no haya empezado",
                    ("cancelar 12",),
                    "cancelar",
                ),
                payload={"activity_id": _ID},
                button="cancel",
            ),
            "human": _asked(
                "Ask for a person to answer instead of the bot",
                "human",
                "agent",
                LocalizedSpec("Pide que te atienda una persona", ("humano",)),
                timeout_s=10,
            ),
            # Decisions on requests awaiting approval ("YES 123" / "NO 123"). Never offered to
            # the LLM: only these exact words decide, and only from an eligible approver.
            "approve": _decision("Approve a request awaiting your decision"),
            "reject": _decision("Reject a request awaiting your decision"),
            "run": _internal(
                "Run an approved request that waits to be run",
                "run",
                "code",
                FieldSpec(type="id", description="the request number"),
                overtakes=True,
                timeout_s=10,
            ),
            NOTICE_ACTION: _internal(
                "Tell the sender something (to slow down)", "echo", "text", FieldSpec(type="string")
            ),
            CLARIFY_ACTION: _internal(
                "Ask the user for what a request lacks",
                "clarify",
                "question",
                FieldSpec(type="string"),
            ),
        },
    )
