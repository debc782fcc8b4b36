"""The catalog: agents, their action types, payload schemas and ordered intent rules.

A TOML (or YAML) file decoded with msgspec into typed Structs and validated once at start-up;
any problem raises :class:`~dispatch.infra.errors.CatalogError` naming the bad entry.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import msgspec

from dispatch.infra.errors import CatalogError
from dispatch.language.slots import SlotError, coerce
from dispatch.language.text import normalize, strip_accents
from dispatch.policy.control import CONTROL_RULES, SYSTEM_AGENT, system_agent
from dispatch.policy.plans import check_role
from dispatch.policy.specs import (
    ARTIFACT_TYPES,
    ActionSpec,
    AgentSpec,
    ApprovalSpec,
    CatalogFile,
    CheckSpec,
    FallbackSpec,
    FieldSpec,
    ProviderSpec,
    RuleSpec,
    WorkflowSpec,
)
from dispatch.policy.workflows import (
    MAX_STEPS,
    WORKFLOWS_AGENT,
    Workflow,
    compile_workflows,
    workflows_agent,
)
from dispatch.record.models import Role

__all__ = [
    "DEFAULT_PROVIDER",
    "WORD",
    "Amount",
    "Catalog",
    "CompiledRule",
    "PayloadError",
    "decode_catalog",
    "load_catalog",
]


class Amount(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    value: float
    currency: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")] | None = None


_PY_TYPES: dict[str, Any] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "amount": Amount,
    "date": Annotated[str, msgspec.Meta(pattern=r"^\d{4}-\d{2}-\d{2}$")],
    "phone": Annotated[str, msgspec.Meta(pattern=r"^\+[1-9]\d{6,14}$")],
    "email": Annotated[str, msgspec.Meta(pattern=r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")],
    "id": Annotated[int, msgspec.Meta(ge=1)],
}


_MSGSPEC_FIELD = re.compile(r"(?:at `\$\.|missing required field `)(\w+)")
"""The field a msgspec validation error names (``... - at `$.text```)."""


class PayloadError(ValueError):
    """A payload does not fit its action's schema; ``field`` names the culprit if known."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


DEFAULT_PROVIDER = "default"
"""The provider SWITCHBOARD_LLM_* define (the intent parser's)."""
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


@dataclass(frozen=True, slots=True)
class CompiledRule:
    id: str
    agent: str
    action: str
    patterns: tuple[re.Pattern[str], ...]
    keywords: re.Pattern[str] | None
    payload: dict[str, Any]
    text_field: str | None = None
    keyword_heads: frozenset[str] | None = None
    """The first word of each keyword: a text lacking all of them cannot match any keyword
    (None: some keyword does not start with a word character, so no such shortcut)."""


@dataclass(frozen=True)
class Catalog:
    """The validated catalog, with compiled rules and a payload Struct per action."""

    agents: dict[str, AgentSpec]
    rules: tuple[CompiledRule, ...]
    fallback: FallbackSpec
    payload_types: dict[tuple[str, str], type[msgspec.Struct]]
    partial_types: dict[tuple[str, str], type[msgspec.Struct]]
    """The same schemas with every field optional, for requests still being completed."""
    source: str
    workflows: dict[str, Workflow] = field(default_factory=dict)
    providers: dict[str, ProviderSpec] = field(default_factory=dict)
    """Named LLMs (``default`` is the settings' ``SWITCHBOARD_LLM_*``, never the catalog's)."""
    region: str | None = None
    """Where a phone number typed without its country code is read (``DEFAULT_REGION``)."""

    def action(self, agent: str, action_type: str) -> ActionSpec | None:
        spec = self.agents.get(agent)
        return None if spec is None else spec.actions.get(action_type)

    def known(self, agent: str, action_type: str, where: str) -> ActionSpec:
        """The action, or :class:`CatalogError` naming ``where`` (a :data:`Lookup`)."""
        found = self.action(agent, action_type)
        if found is None:
            raise CatalogError(where, f"no action {agent}.{action_type} in the catalog")
        return found

    def actions(self) -> Iterator[tuple[str, str, ActionSpec]]:
        for agent_name, agent in self.agents.items():
            for action_name, action in agent.actions.items():
                yield agent_name, action_name, action

    def validate_payload(
        self,
        agent: str,
        action_type: str,
        payload: Any,
        *,
        today: dt.date | None = None,
        partial: bool = False,
    ) -> dict[str, Any]:
        """Coerce typed slots and decode ``payload`` against the action's schema.

        Raises :class:`PayloadError`. The result is plain JSON-able data. With ``partial``,
        required fields may be missing (see :meth:`missing_fields`); what is there must fit.
        """
        spec = self.action(agent, action_type)
        if spec is None:
            raise PayloadError(f"no action {agent}.{action_type}")
        if not isinstance(payload, dict):
            raise PayloadError("the payload must be an object")
        coerced: dict[str, Any] = {}
        for name, value in payload.items():
            field = spec.payload.get(name)
            if field is None:
                raise PayloadError(f"unknown field {name!r}", name)
            try:
                coerced[name] = coerce(field.type, value, today=today, region=self.region)
            except SlotError as exc:
                raise PayloadError(str(exc), name) from None
        try:
            types = self.partial_types if partial else self.payload_types
            value = msgspec.convert(coerced, types[(agent, action_type)], strict=False)
        except msgspec.ValidationError as exc:
            named = _MSGSPEC_FIELD.search(str(exc))
            raise PayloadError(str(exc), named.group(1) if named else None) from None
        built: dict[str, Any] = msgspec.to_builtins(value)
        return {k: v for k, v in built.items() if v is not None}

    def missing_fields(self, agent: str, action_type: str, payload: dict[str, Any]) -> list[str]:
        """Required fields of the action that ``payload`` lacks, in schema order."""
        spec = self.action(agent, action_type)
        if spec is None:
            return []
        return [n for n, f in spec.payload.items() if f.required and payload.get(n) in (None, "")]


def _payload_struct(
    agent: str, action: str, fields: dict[str, FieldSpec], *, partial: bool = False
) -> type[msgspec.Struct]:
    required: list[tuple[str, Any]] = []
    optional: list[tuple[str, Any, Any]] = []
    for name, spec in fields.items():
        base: Any = _PY_TYPES[spec.type]
        if spec.type == "string":
            base = Annotated[str, msgspec.Meta(min_length=1, max_length=spec.max_length)]
        if spec.required and not partial:
            required.append((name, base))
        else:
            optional.append((name, base | None, None))
    return msgspec.defstruct(
        f"{agent}_{action}_{'partial' if partial else 'payload'}",
        [*required, *optional],
        forbid_unknown_fields=True,
        kw_only=True,
    )


WORD = re.compile(r"\w+")


def _keyword_set(keywords: Collection[str]) -> list[str]:
    return sorted({normalize(k).strip() for k in keywords if k.strip()}, key=len, reverse=True)


def _compile_keywords(keywords: Collection[str]) -> re.Pattern[str] | None:
    words = _keyword_set(keywords)
    if not words:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w) for w in words) + r")(?!\w)")


def _keyword_heads(keywords: Collection[str]) -> frozenset[str] | None:
    heads: set[str] = set()
    for keyword in _keyword_set(keywords):
        head = WORD.match(keyword)
        if head is None:
            return None
        heads.add(head.group())
    return frozenset(heads) or None


Schemas = dict[tuple[str, str], type[msgspec.Struct]]


def _validate_actions(
    file: CatalogFile, handlers: Collection[str], source: str
) -> tuple[Schemas, Schemas]:
    payload_types: Schemas = {}
    partial_types: Schemas = {}
    for agent_name, agent in file.agents.items():
        where = f"{source}: agents.{agent_name}"
        if not _NAME.fullmatch(agent_name):
            raise CatalogError(where, "agent names are lowercase letters, digits and _")
        if not agent.actions:
            raise CatalogError(where, "an agent needs at least one action")
        for action_name, action in agent.actions.items():
            at = f"{where}.actions.{action_name}"
            _validate_action(action_name, action, handlers, at)
            payload_types[(agent_name, action_name)] = _payload_struct(
                agent_name, action_name, action.payload
            )
            partial_types[(agent_name, action_name)] = _payload_struct(
                agent_name, action_name, action.payload, partial=True
            )
            _validate_plan(file, action, at)
            follow = action.on_approve
            if follow is not None and follow.action not in (
                file.agents.get(follow.agent, AgentSpec(actions={})).actions
            ):
                raise CatalogError(
                    at + ".on_approve",
                    f"no action {follow.agent}.{follow.action} in the catalog",
                )
    return payload_types, partial_types


def _validate_action(name: str, action: ActionSpec, handlers: Collection[str], at: str) -> None:
    if not _NAME.fullmatch(name):
        raise CatalogError(at, "action names are lowercase letters, digits and _")
    if action.by_council:
        _validate_council(action, at)
    elif action.by_agent:
        _validate_agent_served(action, at)
    elif action.handler not in handlers:
        raise CatalogError(
            at + ".handler",
            f"unknown handler {action.handler!r}; known: {', '.join(sorted(handlers))}",
        )
    if action.handler == "http_call" and action.http is None:
        raise CatalogError(at, "handler 'http_call' needs an [http] table with a url")
    if action.http is not None and not re.match(r"https?://", action.http.url):
        raise CatalogError(at + ".http.url", "must be an http:// or https:// URL")
    if not 0 < action.timeout_s <= 3600:
        raise CatalogError(at + ".timeout_s", "must be in (0, 3600]")
    roles = {r.value for r in Role}
    unknown_roles = sorted(set(action.roles) - roles)
    if unknown_roles:
        raise CatalogError(at + ".roles", f"unknown roles {unknown_roles}; known: {sorted(roles)}")
    if action.approval is not None:
        _validate_approval(action.approval, roles, at + ".approval")
    for field_name in action.payload:
        if not _NAME.fullmatch(field_name):
            raise CatalogError(at + f".payload.{field_name}", "bad field name")


def _validate_council(action: ActionSpec, at: str) -> None:
    """A council: members with distinct names, a rubric to score by, sane limits."""
    council = action.council
    if council is None:
        raise CatalogError(at, 'executor = "council" needs a [council] table')
    if action.handler:
        raise CatalogError(at + ".handler", 'an action with executor = "council" has no handler')
    names = [m.name for m in council.members]
    if not names or len(set(names)) != len(names):
        raise CatalogError(at + ".council.members", "one or more members, with distinct names")
    for member in (*council.members, *council.judges):
        if not _NAME.fullmatch(member.name) or not _NAME.fullmatch(member.provider):
            raise CatalogError(at + ".council", f"member {member.name!r}: a name and a provider")
    if council.judges and not council.rubric:
        raise CatalogError(at + ".council.rubric", "judges score by a rubric: give one")
    if any(c.weight <= 0 for c in council.rubric.values()):
        raise CatalogError(at + ".council.rubric", "weights are positive")
    if not 1 <= council.rounds <= 5:
        raise CatalogError(at + ".council.rounds", "must be between 1 and 5")
    for index, check in enumerate(council.checks):
        _validate_check(check, f"{at}.council.checks[{index}]")
    if council.budget.calls < 1 or council.budget.tokens < 1:
        raise CatalogError(at + ".council.budget", "calls and tokens are positive")
    architect = council.architect
    if not isinstance(architect, str) and (
        architect.top_k < 2 or not _NAME.fullmatch(architect.provider)
    ):
        raise CatalogError(at + ".council.architect", "a provider, and top_k of 2 or more")
    phases = 2 + 2 * council.rounds  # draft, critique and revise per round, score
    if action.timeout_s < council.call_timeout_s * phases:
        raise CatalogError(
            at + ".timeout_s",
            f"the whole council's time: at least call_timeout_s x {phases} "
            f"({council.call_timeout_s * phases:g} s)",
        )


def _validate_plan(file: CatalogFile, action: ActionSpec, at: str) -> None:
    """``produces = "plan"``: an agent's or a council's answer, reviewed (a plan runs once a
    person approved it), with a ``[plan]`` whose roles are actions a step may run."""
    if action.produces != "plan":
        if action.plan is not None:
            raise CatalogError(at + ".plan", 'a [plan] goes with produces = "plan"')
        return
    if not action.reviewable or action.reviewed is None:
        raise CatalogError(
            at + ".produces",
            "a plan is an agent's or a council's answer, and a person approves it before it runs",
        )
    if action.by_agent and "text" not in action.artifacts:
        raise CatalogError(at + ".artifacts", 'a plan is handed in as text: include "text"')
    if action.plan is None or not action.plan.roles:
        raise CatalogError(at + ".plan", "name the action that serves each role: [plan.roles]")
    if not 1 <= action.plan.max_tasks <= MAX_STEPS:
        raise CatalogError(at + ".plan.max_tasks", f"must be between 1 and {MAX_STEPS}")
    for role, target in action.plan.roles.items():
        where = f"{at}.plan.roles.{role}"
        if target.agent == WORKFLOWS_AGENT:
            raise CatalogError(where, "a task runs an action, not a workflow")
        check_role(role, target, lambda a, b, w: _known(file, a, b, w), where)


def _validate_providers_named(file: CatalogFile, source: str) -> None:
    """Every council's members, judges and architect use a provider the catalog declares
    (or ``default``)."""
    known = {DEFAULT_PROVIDER, *file.providers}
    for agent_name, action_name, action in (
        (agent_name, action_name, action)
        for agent_name, agent in file.agents.items()
        for action_name, action in agent.actions.items()
    ):
        council = action.council
        if council is None:
            continue
        at = f"{source}: agents.{agent_name}.actions.{action_name}.council"
        architect = council.architect
        named = [(m.name, m.provider) for m in (*council.members, *council.judges)]
        if not isinstance(architect, str):
            named.append(("architect", architect.provider))
        for who, provider in named:
            if provider not in known:
                raise CatalogError(
                    at,
                    f"{who!r} uses provider {provider!r}, which is not declared "
                    f"(known: {', '.join(sorted(known))})",
                )


def _validate_check(check: CheckSpec, where: str) -> None:
    if check.kind == "json_schema" and not check.schema:
        raise CatalogError(where, "a json_schema check needs its schema")
    if check.kind == "max_chars" and not (check.max_chars or 0) > 0:
        raise CatalogError(where, "a max_chars check needs max_chars")
    for pattern in check.patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise CatalogError(where, f"pattern {pattern!r}: {exc}") from None


def _validate_agent_served(action: ActionSpec, at: str) -> None:
    """An action external agents serve: no handler, sane leases, known artifact types and
    reviewer roles."""
    if action.handler:
        raise CatalogError(at + ".handler", 'an action with executor = "agent" has no handler')
    if not 10 <= action.lease_s <= 86_400:
        raise CatalogError(at + ".lease_s", "must be between 10 and 86400 seconds")
    if not 1 <= action.max_attempts <= 100:
        raise CatalogError(at + ".max_attempts", "must be between 1 and 100")
    unknown = sorted(set(action.artifacts) - set(ARTIFACT_TYPES))
    if unknown or not action.artifacts:
        raise CatalogError(
            at + ".artifacts", f"one or more of {list(ARTIFACT_TYPES)}; unknown: {unknown}"
        )
    review = action.reviewed
    if review is not None:
        roles = {r.value for r in Role}
        if not review.reviewers or set(review.reviewers) - roles:
            raise CatalogError(at + ".review.reviewers", f"roles among {sorted(roles)}")
        if review.quorum < 1:
            raise CatalogError(at + ".review.quorum", "must be at least 1")
        if review.ttl_s <= 0:
            raise CatalogError(at + ".review.ttl_s", "must be positive")


def _validate_approval(approval: ApprovalSpec, roles: set[str], at: str) -> None:
    if not approval.approvers:
        raise CatalogError(at + ".approvers", "name at least one role that may approve")
    unknown = sorted(set(approval.approvers) - roles)
    if unknown:
        raise CatalogError(at + ".approvers", f"unknown roles {unknown}; known: {sorted(roles)}")
    if not 1 <= approval.quorum <= 10:
        raise CatalogError(at + ".quorum", "must be between 1 and 10")
    if not 0 < approval.ttl_s <= 30 * 86400:
        raise CatalogError(at + ".ttl_s", "must be in (0, 30 days]")


def _known(file: CatalogFile, agent: str, action: str, where: str) -> ActionSpec:
    spec = file.agents.get(agent)
    if spec is None:
        raise CatalogError(where, f"unknown agent {agent!r}")
    action_spec = spec.actions.get(action)
    if action_spec is None:
        raise CatalogError(where, f"agent {agent!r} has no action {action!r}")
    return action_spec


def _compile_rule(file: CatalogFile, rule: RuleSpec, where: str) -> CompiledRule:
    action = _known(file, rule.agent, rule.action, where)
    if not rule.patterns and not rule.keywords:
        raise CatalogError(where, "a rule needs patterns or keywords")
    compiled: list[re.Pattern[str]] = []
    for pattern in rule.patterns:
        try:
            regex = re.compile(strip_accents(pattern), re.IGNORECASE)
        except re.error as exc:
            raise CatalogError(where, f"bad regex {pattern!r}: {exc}") from None
        unknown = set(regex.groupindex) - set(action.payload)
        if unknown:
            raise CatalogError(
                where,
                f"named groups {sorted(unknown)} are not payload fields of "
                f"{rule.agent}.{rule.action}",
            )
        compiled.append(regex)
    unknown_fixed = set(rule.payload) - set(action.payload)
    if unknown_fixed:
        raise CatalogError(where, f"payload fields {sorted(unknown_fixed)} are not in the schema")
    if rule.text_field is not None and rule.text_field not in action.payload:
        raise CatalogError(where, f"text_field {rule.text_field!r} is not in the schema")
    return CompiledRule(
        id=rule.id,
        agent=rule.agent,
        action=rule.action,
        patterns=tuple(compiled),
        keywords=_compile_keywords(rule.keywords),
        payload=dict(rule.payload),
        text_field=rule.text_field,
        keyword_heads=_keyword_heads(rule.keywords),
    )


def _with_templates(action: ActionSpec, at: str) -> ActionSpec:
    """``whatsapp_template`` folded into ``templates`` (the older spelling of its entry)."""
    if action.whatsapp_template is None:
        return action
    if "whatsapp" in action.templates:
        raise CatalogError(
            at, "give the WhatsApp template once: templates.whatsapp or whatsapp_template"
        )
    return msgspec.structs.replace(
        action,
        templates={**action.templates, "whatsapp": action.whatsapp_template},
        whatsapp_template=None,
    )


def _validate(file: CatalogFile, handlers: Collection[str], source: str) -> Catalog:
    if SYSTEM_AGENT in file.agents:
        raise CatalogError(
            f"{source}: agents.{SYSTEM_AGENT}", "is built in (help, status, cancel); rename yours"
        )
    if WORKFLOWS_AGENT in file.agents:
        raise CatalogError(
            f"{source}: agents.{WORKFLOWS_AGENT}",
            "is built in (it starts the [workflows] of the catalog); rename yours",
        )
    agents = {
        name: msgspec.structs.replace(
            agent,
            actions={
                action_name: _with_templates(
                    action, f"{source}: agents.{name}.actions.{action_name}"
                )
                for action_name, action in agent.actions.items()
            },
        )
        for name, agent in file.agents.items()
    }
    file = msgspec.structs.replace(
        file,
        agents={SYSTEM_AGENT: system_agent(), **agents},
        rules=(*CONTROL_RULES, *file.rules),
    )
    workflows = compile_workflows(
        file.workflows, lambda agent, action, where: _known(file, agent, action, where), source
    )
    if workflows:
        file = msgspec.structs.replace(
            file, agents={**file.agents, WORKFLOWS_AGENT: workflows_agent(workflows)}
        )
    payload_types, partial_types = _validate_actions(file, handlers, source)
    _validate_providers_named(file, source)
    _known(file, file.fallback.agent, file.fallback.action, f"{source}: fallback")
    rules: list[CompiledRule] = []
    seen: set[str] = set()
    for index, rule in enumerate(file.rules, start=-len(CONTROL_RULES)):
        where = f"{source}: rules[{index}] (id {rule.id!r})"
        if rule.id in seen:
            raise CatalogError(where, "duplicate rule id")
        seen.add(rule.id)
        rules.append(_compile_rule(file, rule, where))
    return Catalog(
        agents=dict(file.agents),
        rules=tuple(rules),
        fallback=file.fallback,
        payload_types=payload_types,
        partial_types=partial_types,
        source=source,
        workflows=workflows,
        providers=_providers(file.providers, source),
    )


_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,99}")


def _providers(found: dict[str, ProviderSpec], source: str) -> dict[str, ProviderSpec]:
    """Named LLM endpoints, checked: a name, an http(s) URL, sane limits, a key's variable."""
    for name, spec in found.items():
        at = f"{source}: providers.{name}"
        if not _NAME.fullmatch(name):
            raise CatalogError(at, "provider names are lowercase letters, digits and _")
        if name == DEFAULT_PROVIDER:
            raise CatalogError(
                at, "'default' is SWITCHBOARD_LLM_BASE_URL/_MODEL/_API_KEY's; name yours otherwise"
            )
        if not re.match(r"https?://[^\s/]+", spec.base_url):
            raise CatalogError(at + ".base_url", "must be an http:// or https:// URL")
        if not spec.model.strip():
            raise CatalogError(at + ".model", "must name a model")
        if spec.api_key_env is not None and not _ENV_NAME.fullmatch(spec.api_key_env):
            raise CatalogError(at + ".api_key_env", "an environment variable's name (A-Z, 0-9, _)")
        if not 0 < spec.timeout_s <= 600:
            raise CatalogError(at + ".timeout_s", "must be in (0, 600]")
        if not 1 <= spec.max_concurrency <= 256:
            raise CatalogError(at + ".max_concurrency", "must be between 1 and 256")
    return dict(found)


def decode_catalog(content: bytes, source: str, handlers: Collection[str]) -> Catalog:
    """Decode and validate catalog text; ``source`` names it in errors (its path)."""
    try:
        if source.endswith((".yaml", ".yml")):
            raw = msgspec.yaml.decode(content)
        else:
            raw = msgspec.toml.decode(content)
    except msgspec.DecodeError as exc:
        raise CatalogError(source, f"not valid {Path(source).suffix or 'TOML'}: {exc}") from None
    try:
        file = msgspec.convert(raw, CatalogFile)
    except msgspec.ValidationError as exc:
        raise CatalogError(*_locate(raw, source, exc)) from None
    return _validate(file, handlers, source)


def _locate(raw: Any, source: str, error: msgspec.ValidationError) -> tuple[str, str]:
    """Name the agent/action or workflow behind a type error (msgspec elides mapping keys as
    [...])."""
    workflows = raw.get("workflows") if isinstance(raw, dict) else None
    if isinstance(workflows, dict):
        for name, workflow in workflows.items():
            try:
                msgspec.convert(workflow, WorkflowSpec)
            except msgspec.ValidationError as exc:
                return f"{source}: workflows.{name}", str(exc).replace("$.", "")
    agents = raw.get("agents") if isinstance(raw, dict) else None
    if isinstance(agents, dict):
        for agent_name, agent in agents.items():
            actions = agent.get("actions") if isinstance(agent, dict) else None
            for action_name, action in (actions or {}).items():
                try:
                    msgspec.convert(action, ActionSpec)
                except msgspec.ValidationError as exc:
                    where = f"{source}: agents.{agent_name}.actions.{action_name}"
                    return where, str(exc).replace("$.", "")
            try:
                msgspec.convert(agent, AgentSpec)
            except msgspec.ValidationError as exc:
                return f"{source}: agents.{agent_name}", str(exc).replace("$.", "")
    return source, str(error)


def load_catalog(
    path: Path | None, handlers: Collection[str], *, region: str | None = None
) -> Catalog:
    """Load the catalog at ``path``, or the bundled default catalog when ``path`` is None;
    phone numbers typed without a country code are read in ``region``."""
    if path is None:
        ref = resources.files("dispatch.policy").joinpath("default_catalog.toml")
        content, source = ref.read_bytes(), "default_catalog.toml"
    else:
        try:
            content, source = path.read_bytes(), str(path)
        except OSError as exc:
            raise CatalogError(str(path), f"cannot read: {exc.strerror}") from None
    return replace(decode_catalog(content, source, handlers), region=region)
