"""Reserved control intents, handled before any catalog rule and never shadowed by one.

They belong to the built-in ``system`` agent, which every catalog gets: ``help`` (what can I
ask), ``status <id>`` (the state of one of my requests) and ``cancel <id>`` (withdraw one of my
requests that has not started), ``approve``/``reject`` (``YES 123`` / ``NO 123``: a decision
on a request awaiting approval). ``clarify`` is never asked for: the gateway creates it to put a
question back to the user (see :mod:`dispatch.clarify`).
"""

from __future__ import annotations

from dispatch.specs import ActionSpec, AgentSpec, FieldSpec, RuleSpec

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
SOFT_CONTROL_RULES = frozenset({BARE_REFERENCE_RULE, BARE_APPROVE_RULE, BARE_REJECT_RULE})
"""Control rules that give way to an open question: there "#12", "yes", "no" are answers."""
_ID = FieldSpec(type="id", description="the request number")
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


def system_agent() -> AgentSpec:
    return AgentSpec(
        description="Built in: help, the state of a request, cancelling one.",
        actions={
            "help": ActionSpec(
                description="List what you can ask",
                handler="help",
                public=True,
                overtakes=True,
                timeout_s=5,
                examples=("help",),
            ),
            "status": ActionSpec(
                description="Show the state of one of your requests",
                handler="status",
                public=True,
                overtakes=True,
                timeout_s=5,
                payload={"activity_id": _ID},
                examples=("status 12",),
            ),
            "cancel": ActionSpec(
                description="Cancel one of your requests that has not started",
                handler="cancel",
                public=True,
                overtakes=True,
                timeout_s=5,
                payload={"activity_id": _ID},
                examples=("cancel 12",),
            ),
            # Decisions on requests awaiting approval ("YES 123" / "NO 123"). Never offered to
            # the LLM: only these exact words decide, and only from an eligible approver.
            "approve": _decision("Approve a request awaiting your decision"),
            "reject": _decision("Reject a request awaiting your decision"),
            "run": ActionSpec(
                description="Run an approved request that waits to be run",
                handler="run",
                public=True,
                internal=True,
                overtakes=True,
                timeout_s=10,
                payload={"code": FieldSpec(type="id", description="the request number")},
            ),
            NOTICE_ACTION: ActionSpec(
                description="Tell the sender something (to slow down)",
                handler="echo",
                public=True,
                internal=True,
                timeout_s=5,
                payload={"text": FieldSpec(type="string")},
            ),
            CLARIFY_ACTION: ActionSpec(
                description="Ask the user for what a request lacks",
                handler="clarify",
                public=True,
                internal=True,
                timeout_s=5,
                payload={"question": FieldSpec(type="string")},
            ),
        },
    )
