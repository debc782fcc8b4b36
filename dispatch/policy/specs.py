"""The catalog's schema: agents, actions, payload fields, approval policies and rules.

Plain msgspec Structs decoded from the catalog file; :mod:`dispatch.policy.catalog` validates
them and compiles the rules, and :mod:`dispatch.policy.control` declares the built-in ``system``
agent with them.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from dispatch.language.i18n import in_language
from dispatch.record.models import Priority

__all__ = [
    "ARTIFACT_TYPES",
    "CHECK_KINDS",
    "ActionSpec",
    "AgentSpec",
    "ApprovalSpec",
    "BudgetSpec",
    "CatalogFile",
    "CheckSpec",
    "CouncilSpec",
    "CriterionSpec",
    "FallbackSpec",
    "FieldSpec",
    "FieldType",
    "FollowUpSpec",
    "HttpCallSpec",
    "LocalizedSpec",
    "MemberSpec",
    "PlanRoleSpec",
    "PlanSpec",
    "ProviderSpec",
    "ReviewSpec",
    "RuleSpec",
    "StepLocalizedSpec",
    "StepSpec",
    "WorkflowSpec",
]

FieldType = Literal[
    "string", "integer", "number", "boolean", "amount", "date", "phone", "email", "id"
]


class FieldSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    type: FieldType = "string"
    required: bool = True
    description: str = ""
    max_length: int | None = None
    question: str = ""
    """Asked when a request lacks this (required) field; default built from the description."""

    def ask(self, name: str) -> str:
        return self.question or f"What is {self.description or name.replace('_', ' ')}?"


class HttpCallSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where the ``http_call`` handler POSTs the payload."""

    url: str
    timeout_s: float = 10.0
    retries: int = 2
    backoff_s: float = 0.5
    headers: dict[str, str] = {}
    reply_field: str | None = None
    """Field of the JSON answer to reply with; default: a text answer or the JSON itself."""


class ApprovalSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A human must say yes before the action runs."""

    approvers: tuple[str, ...] = ("supervisor", "admin")
    """Roles that may decide."""
    quorum: int = 1
    """Approvals needed; one rejection is final."""
    self_approval: bool = False
    """Whether the requester may approve their own request."""
    ttl_s: float = 3600.0
    """After this the request expires, and the requester is told."""
    auto_run: bool = True
    """Approved → run at once; otherwise it waits for "RUN <code>" or the API's run."""


ARTIFACT_TYPES = ("code", "text", "diff", "screenshot")
"""What an external agent may hand in."""


class ReviewSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A person reviews what an external agent handed in before the requester gets it."""

    reviewers: tuple[str, ...] = ("supervisor", "admin")
    """Roles that may decide."""
    quorum: int = 1
    """Approvals needed; one rejection is final."""
    ttl_s: float = 7 * 24 * 3600.0
    """After this without a decision, the task expires and the requester is told."""


class FollowUpSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An action of the catalog an approved task starts (with the task's payload)."""

    agent: str
    action: str
    auto_run: bool = True
    """Start it at once; otherwise it waits as ``pending`` until someone runs it."""


class MemberSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One member of a council: a provider (and model) with a persona."""

    name: str
    provider: str = "default"
    model: str | None = None
    """Default: the provider's."""
    persona: str = ""
    """Its system prompt: who it is and how it thinks."""
    role: str = "member"


class CriterionSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    description: str
    weight: float = 1.0


CHECK_KINDS = ("json_schema", "forbid", "max_chars", "python_syntax", "ruff")


class CheckSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A check every proposal must pass to be ranked (nothing a member writes is run)."""

    kind: Literal["json_schema", "forbid", "max_chars", "python_syntax", "ruff"]
    schema: dict[str, Any] | None = None
    """json_schema: the schema the proposal (JSON) must satisfy."""
    patterns: tuple[str, ...] = ()
    """forbid: regular expressions no proposal may match."""
    max_chars: int | None = None


class BudgetSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A council run ends cleanly, with what it has, at the first of these."""

    calls: int = 60
    tokens: int = 200_000


class ArchitectSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A provider that picks the council's answer among its best proposals, and says why."""

    provider: str = "default"
    model: str | None = None
    top_k: int = 3
    persona: str = ""


class CouncilSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Several members draft, critique each other, revise; checks and judges rank them."""

    members: tuple[MemberSpec, ...]
    rounds: int = 1
    rubric: dict[str, CriterionSpec] = {}
    checks: tuple[CheckSpec, ...] = ()
    judges: tuple[MemberSpec, ...] = ()
    """Who scores (a judge named like a member never scores that member's proposal)."""
    architect: Literal["top_score"] | ArchitectSpec = "top_score"
    """``top_score``: the best ranked; or a provider that picks among the top ``top_k`` with a
    written rationale (an answer outside its schema: the top score stands)."""
    budget: BudgetSpec = BudgetSpec()
    call_timeout_s: float = 60.0

    def providers(self) -> set[str]:
        """Every provider it calls (members, judges, the architect)."""
        named = {m.provider for m in (*self.members, *self.judges)}
        if not isinstance(self.architect, str):
            named.add(self.architect.provider)
        return named

    baseline: bool = False
    """Run as its first member alone (its draft, the checks; no critique, no judges): what the
    council is measured against (``scripts/eval_councils.py``)."""


class PlanRoleSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What serves a plan's tasks of one role: an action of the catalog (a council's, external
    agents', or a handler's), and its payload, whose values may read ``{{ task.id }}``,
    ``{{ task.role }}``, ``{{ task.description }}`` and ``{{ task.priority }}``."""

    agent: str
    action: str
    payload: dict[str, Any] = {}


class PlanSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An action's answer is a plan (``produces = "plan"``): tasks by role with dependencies
    and priorities. Approved in review, it runs as a workflow run whose steps are its tasks."""

    roles: dict[str, PlanRoleSpec]
    max_tasks: int = 20


class LocalizedSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An action's words in another language (``[agents.x.actions.y.localized.es]``)."""

    description: str = ""
    examples: tuple[str, ...] = ()
    button: str | None = None
    reply: str | None = None
    """The ``ledger`` handler's answer in this language."""
    questions: dict[str, str] = {}
    """Per payload field, the question asked for it in this language."""


class ActionSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    description: str
    handler: str = ""
    """What runs it on a worker (with ``executor = "handler"``, the default)."""
    executor: Literal["handler", "agent", "council"] = "handler"
    """``agent``: an external agent claims it (over MCP or the tasks API) and hands work in;
    ``council``: several LLM members draft, critique, revise and are ranked (``council``)."""
    council: CouncilSpec | None = None
    produces: Literal["text", "plan"] = "text"
    """``plan``: the answer is a plan (see ``plan``), checked before review; approved, its
    tasks run as a workflow run."""
    plan: PlanSpec | None = None
    lease_s: float = 600.0
    """An agent's claim lasts this long after its last call on the task."""
    max_attempts: int = 3
    """Claims that may lapse before the task fails (and the requester is told)."""
    artifacts: tuple[str, ...] = ARTIFACT_TYPES
    """What an agent may hand in for it."""
    review: ReviewSpec | bool = True
    """A person reviews the agent's work before the requester gets it (``false``: no one)."""
    on_approve: FollowUpSpec | None = None
    """An action an approved task starts."""
    public: bool = False
    roles: tuple[str, ...] = ()
    timeout_s: float = 30.0
    priority: Priority = Priority.NORMAL
    payload: dict[str, FieldSpec] = {}
    examples: tuple[str, ...] = ()
    button: str | None = None
    """What a help menu's button for it sends (default: its first example). For an action that
    needs a detail, its bare words: the gateway then asks for what is missing."""
    localized: dict[str, LocalizedSpec] = {}
    """Per language (``es``): its description, examples and button there."""
    reply: str | None = None
    """For the ``ledger`` handler: the answer, filled from the payload's fields and
    ``{number}`` (``"Invoice INV-{number:04d} for {client}: {amount}"``)."""

    def reply_in(self, language: str | None) -> str | None:
        """The ``reply`` template in ``language``, else the default one."""
        local = self.localized.get(language or "")
        return (local.reply if local else None) or self.reply

    def question(self, field_name: str, language: str | None) -> str:
        """What is asked for a missing ``field_name``, in ``language``: its localized
        question, else its question (a ``"English / Español"`` one cut to the language)."""
        local = self.localized.get(language or "")
        if local is not None and field_name in local.questions:
            return local.questions[field_name]
        field = self.payload.get(field_name)
        asked = field.ask(field_name) if field else f"What is {field_name}?"
        return in_language(asked, language)

    def words(self, language: str | None) -> tuple[str, tuple[str, ...], str | None]:
        """(description, examples, button) in ``language``, falling back to the defaults."""
        local = self.localized.get(language or "")
        if local is None:
            return self.description, self.examples, self.button
        examples = local.examples or self.examples
        return (
            local.description or self.description,
            examples,
            local.button or (local.examples[0] if local.examples else self.button),
        )

    @property
    def by_agent(self) -> bool:
        return self.executor == "agent"

    @property
    def by_council(self) -> bool:
        return self.executor == "council"

    @property
    def reviewable(self) -> bool:
        """Its work goes through the tasks' review (an agent's or a council's)."""
        return self.executor in ("agent", "council")

    @property
    def reviewed(self) -> ReviewSpec | None:
        """Its review policy (None: none)."""
        if self.review is True:
            return ReviewSpec()
        return self.review or None

    http: HttpCallSpec | None = None
    templates: dict[str, dict[str, Any]] = {}
    """Per channel name, a provider-approved template sent instead of a free-form reply the
    channel may not send (WhatsApp outside its 24-hour window). Opaque here: each channel
    checks its own entry's shape when the gateway starts."""
    whatsapp_template: dict[str, Any] | None = None
    """The older spelling of ``templates.whatsapp`` (Twilio's Content template)."""
    approval: ApprovalSpec | None = None
    """Set: the action waits in ``awaiting_approval`` until approved."""
    internal: bool = False
    """Reached only through the gateway's own rules or logic: never offered to the LLM, never
    listed in help (clarifying questions, approval decisions)."""
    overtakes: bool = False
    """Runs at once, ahead of its conversation's earlier requests (the control intents: a
    user can cancel, ask about or decide on a request while another one runs)."""


class AgentSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    actions: dict[str, ActionSpec]
    description: str = ""


class RuleSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    agent: str
    action: str
    patterns: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()
    payload: dict[str, Any] = {}
    text_field: str | None = None
    """A payload field that receives the whole message (e.g. a ticket's summary)."""


class FallbackSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The action a message no rule understood becomes (it must reply something useful)."""

    agent: str
    action: str


class StepLocalizedSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A step's words in another language (``localized.es = { payload = { text = "..." } }``):
    these payload values replace the step's own when the run's requester writes in it."""

    payload: dict[str, Any] = {}


class StepSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One step of a workflow: an action of the catalog, run once its dependencies completed.

    ``payload`` values may be templates: ``"{{ input.customer }}"`` (a whole value keeps its
    type) or ``"Invoice for {{ input.customer }}: {{ steps.quote.result.text }}"`` (text), from
    the run's input and the results of the steps it depends on (directly or not)."""

    id: str
    agent: str
    action: str
    payload: dict[str, Any] = {}
    depends_on: tuple[str, ...] = ()
    priority: Priority | None = None
    """Default: the action's own."""
    on_failure: Literal["stop", "continue"] = "stop"
    """``stop``: its dependents are skipped and the run fails; ``continue``: they run anyway
    (a reference to its result then fails them) and its failure does not fail the run."""
    localized: dict[str, StepLocalizedSpec] = {}

    def payload_in(self, language: str | None) -> dict[str, Any]:
        """Its payload for a requester writing in ``language`` (its own words where the step
        has none in it)."""
        local = self.localized.get(language or "")
        return self.payload if local is None else {**self.payload, **local.payload}

    def payloads(self) -> list[tuple[str, dict[str, Any]]]:
        """Every payload it may run with: (where, payload), its own first."""
        return [
            ("payload", self.payload),
            *(
                (f"localized.{code}.payload", local.payload)
                for code, local in self.localized.items()
            ),
        ]


class WorkflowSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Steps with dependencies, started by name over the API or from chat (it is also the
    action ``workflows.<name>``, whose payload is ``input``: rules, the LLM, permissions,
    approval and clarifying questions apply to starting it as to any action)."""

    description: str
    steps: tuple[StepSpec, ...] = ()
    input: dict[str, FieldSpec] = {}
    public: bool = False
    roles: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()
    localized: dict[str, LocalizedSpec] = {}
    approval: ApprovalSpec | None = None
    """Set: starting a run waits for approval (its steps' own policies apply too)."""


class ProviderSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A named LLM: an OpenAI-compatible endpoint (llama.cpp, Ollama, vLLM, OpenAI...)."""

    base_url: str
    """``{base_url}/chat/completions`` and ``{base_url}/models`` are called."""
    model: str
    api_key_env: str | None = None
    """The environment variable holding its key (the key itself is never in the catalog)."""
    timeout_s: float = 30.0
    max_concurrency: int = 4
    """Calls in flight at once, per process."""


class CatalogFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    agents: dict[str, AgentSpec]
    fallback: FallbackSpec
    rules: tuple[RuleSpec, ...] = ()
    workflows: dict[str, WorkflowSpec] = {}
    providers: dict[str, ProviderSpec] = {}
    version: int = 1
