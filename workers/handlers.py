"""The built-in handlers: help, echo, status and http_call."""

from __future__ import annotations

import functools
import json
from typing import Any, ClassVar

import httpx
import msgspec

from dispatch.infra.retry import RetryPolicy
from dispatch.language.i18n import in_language, say, status_word
from dispatch.policy.permissions import may_request
from dispatch.policy.plans import plan_problem, plan_prompt
from dispatch.policy.workflows import START_HANDLER
from dispatch.record.activities import ActivityView
from dispatch.record.artifacts import check_artifact
from dispatch.record.messages import Choice, Media
from dispatch.record.outbox import failure_reason, payload_text
from dispatch.work.approvals import Decision
from dispatch.work.councils import CouncilRunner
from dispatch.work.runs import run_of
from workers.registry import COUNCIL, Handler, HandlerContext, HandlerResult

__all__ = [
    "BUILTIN_HANDLERS",
    "BUILTIN_HANDLER_NAMES",
    "CancelHandler",
    "ClarifyHandler",
    "CouncilEmpty",
    "CouncilHandler",
    "DecideHandler",
    "EchoHandler",
    "HelpHandler",
    "HttpCallHandler",
    "HumanHandler",
    "LedgerHandler",
    "RunHandler",
    "StartWorkflowHandler",
    "StatusHandler",
]

MAX_REPLY_CHARS = 4000
MAX_ANSWER_BYTES = 1024 * 1024
"""A service's answer longer than this fails the call: it is not a reply to a chat."""
MAX_KEPT_BYTES = 16 * 1024
"""Up to this much of a service's JSON answer is kept on the activity; beyond, its size."""
MAX_CHOICES = 6


class HelpHandler(Handler):
    """What this sender may ask, from the catalog; also the answer to text nobody understood."""

    name: ClassVar[str] = "help"

    async def run(self, ctx: HandlerContext) -> HandlerResult:
        """On a channel with buttons, a short sentence and a button per action; elsewhere a
        line per action with an example to type."""
        lines: list[str] = []
        choices: list[Choice] = []
        language = ctx.language
        for _agent, _action, spec in ctx.catalog.actions():
            if spec.internal or not may_request(ctx.role, True, spec):
                continue
            description, examples, button = spec.words(language)
            example = say("help.example", language, example=examples[0]) if examples else ""
            lines.append(f"• {description}{example}")
            button = button or (examples[0] if examples else None)
            if button and len(choices) < MAX_CHOICES:
                # Never a literal example id ("status 12"): its bare words, asked back.
                choices.append(Choice(label=button, text=button))
        unknown = ctx.activity.details.get("provenance", {}).get("matched") is False
        if ctx.buttons and choices:
            text = say("help.short_unknown" if unknown else "help.short", language)
        else:
            text = "\n".join([say("help.unknown" if unknown else "help.intro", language), *lines])
        return HandlerResult(text=text, choices=tuple(choices), data={"actions": len(lines)})


class ClarifyHandler(Handler):
    """Puts a question back to the user (a missing detail, which of several actions)."""

    name: ClassVar[str] = "clarify"

    async def run(self, ctx: HandlerContext) -> HandlerResult:
        asked = ctx.activity.details.get("provenance", {}).get("clarify", {})
        choices = msgspec.convert(asked.get("choices", []), tuple[Choice, ...])
        return HandlerResult(
            text=in_language(str(ctx.payload["question"]), ctx.language), choices=choices
        )


class EchoHandler(Handler):
    """Replies the payload's ``text``; an action without one gets its payload read back
    (``create_invoice: client=Acme, amount=120 EUR``), which makes any catalog demo-able."""

    name: ClassVar[str] = "echo"

    async def run(self, ctx: HandlerContext) -> HandlerResult:
        if "text" in ctx.payload:
            text = str(ctx.payload["text"])
        else:
            fields = payload_text(ctx.payload)
            text = f"{ctx.activity.action_type}: {fields}" if fields else ctx.activity.action_type
        return HandlerResult(text=text, data={"chars": len(text)})


async def _own_activity(ctx: HandlerContext) -> ActivityView | HandlerResult:
    """The payload's activity if the sender owns it; else the "not found" answer (one answer
    for missing and for someone else's, so ids reveal nothing)."""
    wanted = int(ctx.payload["activity_id"])
    found = await ctx.activities.get(wanted)
    if found is None or found.actor_user_id != ctx.activity.actor_user_id:
        return HandlerResult(text=say("not_found", ctx.language, id=wanted), data={"found": False})
    return found


class StatusHandler(Handler):
    """The state of one of the sender's own activities; anyone else's reads as not found."""

    name: ClassVar[str] = "status"

    async def run(self, ctx: HandlerContext) -> HandlerResult:
        found = await _own_activity(ctx)
        if isinstance(found, HandlerResult):
            return found
        language = ctx.language
        action = ctx.catalog.action(found.agent_name, found.action_type)
        what = (
            action.words(language)[0] if action else found.action_description
        ) or found.action_type
        status = status_word(found.status, language)
        text = say("status.line", language, id=found.id, what=what, status=status)
        action = ctx.catalog.action(found.agent_name, found.action_type)
        starts_run = run_of(found.agent_name, found.id, None, action) is not None
        run = await ctx.workflows.get(found.id) if starts_run else None
        if run is not None:
            steps = ", ".join(
                f"{step.id} {status_word(step.status, language)}" for step in run.steps
            )
            text = say(
                "status.run",
                language,
                id=run.id,
                workflow=run.workflow,
                status=status_word(run.status, language),
                steps=steps,
            )
            return HandlerResult(
                text=text, data={"found": True, "activity_id": found.id, "status": run.status}
            )
        if found.status == "failed":
            text += f" ({failure_reason(found.details.get('error'), language)})"
        return HandlerResult(
            text=text, data={"found": True, "activity_id": found.id, "status": found.status}
        )


class CancelHandler(Handler):
    """Withdraw one of the sender's own requests that has not started."""

    name: ClassVar[str] = "cancel"

    async def run(self, ctx: HandlerContext) -> HandlerResult:
        found = await _own_activity(ctx)
        if isinstance(found, HandlerResult):
            return found
        wanted = found.id
        actor = f"user:{ctx.activity.actor_user_id}"
        language = ctx.language
        if await ctx.activities.cancel(wanted, actor=actor):
            text = say("cancel.done", language, id=wanted)
            return HandlerResult(text=text, data={"cancelled": True})
        return HandlerResult(
            text=say(
                "cancel.late", language, id=wanted, status=status_word(found.status, language)
            ),
            data={"cancelled": False, "status": found.status},
        )


class DecideHandler(Handler):
    """A decision ("YES 123" / "NO 123", or a bare "YES"/"NO") on a request awaiting approval.

    Who decides is the verified sender of this message; the approval service checks that they
    may, and counts each approver once.
    """

    name: ClassVar[str] = "decide"

    async def run(self, ctx: HandlerContext) -> HandlerResult:
        decision = Decision(ctx.activity.action_type)
        user_id = ctx.activity.actor_user_id
        code = ctx.payload.get("code")
        if code is None:
            waiting = await ctx.approvals.pending_for(user_id) if user_id is not None else []
            if len(waiting) != 1:
                return _waiting_list(waiting, decision, ctx.language)
            code = waiting[0]
        outcome = await ctx.approvals.decide(
            user_id=user_id,
            code=int(code),
            decision=decision,
            channel=ctx.activity.source_channel or "unknown",
            language=ctx.language,
        )
        return HandlerResult(
            text=outcome.text,
            data={
                "decision": decision.value,
                "code": int(code),
                "applied": outcome.applied,
                "status": outcome.status,
            },
        )


def _waiting_list(codes: list[int], decision: Decision, language: str | None) -> HandlerResult:
    if not codes:
        return HandlerResult(
            text=say("decision.none_waiting", language),
            data={"decision": decision.value, "applied": False, "waiting": []},
        )
    word = "YES" if decision == Decision.APPROVE else "NO"
    listed = ", ".join(f"#{c}" for c in codes)
    return HandlerResult(
        text=say("decision.several", language, listed=listed, word=word, first=codes[0]),
        choices=tuple(
            Choice(label=f"{word} #{c}", text=f"{word} {c}") for c in codes[:MAX_CHOICES]
        ),
        data={"decision": decision.value, "applied": False, "waiting": codes},
    )


class RunHandler(Handler):
    """ "RUN 123": run an approved request that waits for it (``auto_run = false``)."""

    name: ClassVar[str] = "run"

    async def run(self, ctx: HandlerContext) -> HandlerResult:
        code = int(ctx.payload["code"])
        outcome = await ctx.approvals.run(
            user_id=ctx.activity.actor_user_id,
            code=code,
            channel=ctx.activity.source_channel or "unknown",
            language=ctx.language,
        )
        return HandlerResult(
            text=outcome.text,
            data={"code": code, "applied": outcome.applied, "status": outcome.status},
        )


class HttpCallError(RuntimeError):
    pass


class _Transient(Exception):
    """An attempt the service may answer next time (no connection, a timeout, 429, 5xx)."""


class HttpCallHandler(Handler):
    """POST the payload as JSON to the action's URL and reply with the answer.

    Retries connection errors, timeouts, 429 and 5xx with exponential backoff and jitter; a 4xx
    is the service's final word and fails at once.
    """

    name: ClassVar[str] = "http_call"

    async def run(self, ctx: HandlerContext) -> HandlerResult:
        spec = ctx.action.http
        if spec is None:  # validated at start-up; kept for type narrowing
            raise HttpCallError("action has no http configuration")
        body = {
            "activity_id": ctx.activity.id,
            "agent": ctx.activity.agent_name,
            "action_type": ctx.activity.action_type,
            "payload": ctx.payload,
        }
        headers = {"Idempotency-Key": f"switchboard-activity-{ctx.activity.id}", **spec.headers}
        policy = RetryPolicy(spec.retries, spec.backoff_s)
        try:
            async for attempt in policy.attempts(lambda exc: isinstance(exc, _Transient)):
                with attempt:
                    response = await self._post(ctx, spec.url, body, headers, spec.timeout_s)
                    return self._result(
                        response, spec.reply_field, attempt.retry_state.attempt_number
                    )
        except _Transient as last:
            raise HttpCallError(f"gave up after {spec.retries + 1} attempts: {last}") from None
        raise AssertionError("the retry loop ended without an outcome")  # pragma: no cover

    @staticmethod
    async def _post(
        ctx: HandlerContext, url: str, body: Any, headers: dict[str, str], timeout_s: float
    ) -> httpx.Response:
        """One attempt: the answer, :class:`_Transient` to try again, or a final error."""
        try:
            response = await ctx.http.post(url, json=body, headers=headers, timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
        if response.status_code == 429 or response.status_code >= 500:
            raise _Transient(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            raise HttpCallError(f"HTTP {response.status_code}: {response.text[:200]}")
        if len(response.content) > MAX_ANSWER_BYTES:
            raise HttpCallError(f"the answer is {len(response.content)} bytes; too large")
        return response

    @staticmethod
    def _result(response: httpx.Response, reply_field: str | None, attempts: int) -> HandlerResult:
        data: dict[str, Any] = {"status_code": response.status_code, "attempts": attempts}
        media: tuple[Media, ...] = ()
        try:
            answer: Any = response.json()
        except ValueError:
            text = response.text
        else:
            if isinstance(answer, dict) and "media" in answer:
                try:
                    media = msgspec.convert(answer["media"], tuple[Media, ...])
                except msgspec.ValidationError as exc:
                    raise HttpCallError(f"bad media in the answer: {exc}") from None
            kept = len(response.content) <= MAX_KEPT_BYTES
            data["response"] = answer if kept else {"omitted_bytes": len(response.content)}
            if reply_field and isinstance(answer, dict) and reply_field in answer:
                text = str(answer[reply_field])
            elif isinstance(answer, dict) and isinstance(answer.get("reply"), str):
                text = answer["reply"]
            elif isinstance(answer, str):
                text = answer
            else:
                text = json.dumps(answer, ensure_ascii=False)
        return HandlerResult(
            text=text[:MAX_REPLY_CHARS] or ("" if media else "(empty answer)"),
            media=media,
            data=data,
        )


class _Filled(dict[str, object]):
    def __missing__(self, key: str) -> str:
        return ""  # an optional field not given reads as nothing


class LedgerHandler(Handler):
    """A demo that does something visible: every request of its action is an entry, numbered
    in the record (the activities that completed before it), answered with the action's
    ``reply`` template filled from the payload (``{number}``, ``{client}``, ...)."""

    name: ClassVar[str] = "ledger"

    async def run(self, ctx: HandlerContext) -> HandlerResult:
        activity = ctx.activity
        number = await ctx.activities.count_completed(activity.agent_name, activity.action_type)
        values = _Filled(
            {k: payload_text({k: v}).partition("=")[2] for k, v in ctx.payload.items()}
        )
        values["number"] = number + 1
        template = ctx.action.reply_in(ctx.language) or "{action} #{number}: {payload}"
        values.setdefault("action", ctx.action.description)
        values.setdefault("payload", payload_text(ctx.payload))
        text = template.format_map(values).strip().rstrip(":,- ")
        return HandlerResult(text=text, data={"number": number + 1, **ctx.payload})


class HumanHandler(Handler):
    """The user asks for a person: supervisors and admins are told where (to take the
    conversation over in the portal), and the user that they were."""

    name: ClassVar[str] = "human"

    async def run(self, ctx: HandlerContext) -> HandlerResult:
        activity = ctx.activity

        def text(language: str | None, who: str | None) -> str:
            return say(
                "human.call",
                language,
                who=who or say("someone", language),
                conversation=activity.conversation_id or "-",
                channel=activity.source_channel or say("the_api", language),
            )

        told = await ctx.approvals.call_people(
            activity.id, roles=("supervisor", "admin"), text=text
        )
        key = "human.asked" if told else "human.nobody"
        return HandlerResult(text=say(key, ctx.language), data={"told": told})


class StartWorkflowHandler(Handler):
    """Opens the run of a catalog workflow (``workflows.<name>``; the payload is its input).
    Its steps are created once this request has ended, its answer sent first."""

    name: ClassVar[str] = START_HANDLER

    async def run(self, ctx: HandlerContext) -> HandlerResult:
        flow = ctx.catalog.workflows[ctx.activity.action_type]
        run_id = ctx.activity.id
        await ctx.workflows.open(run_id, flow.name, ctx.payload)
        text = say(
            "workflow.started",
            ctx.language,
            workflow=flow.name,
            id=run_id,
            count=len(flow.order),
            steps=", ".join(flow.order),
        )
        return HandlerResult(text=text, data={"run_id": run_id, "steps": list(flow.order)})


BUILTIN_HANDLERS: tuple[Handler, ...] = (
    HelpHandler(),
    ClarifyHandler(),
    EchoHandler(),
    StatusHandler(),
    CancelHandler(),
    DecideHandler(),
    RunHandler(),
    HttpCallHandler(),
    StartWorkflowHandler(),
    HumanHandler(),
    LedgerHandler(),
)
BUILTIN_HANDLER_NAMES = frozenset(handler.name for handler in BUILTIN_HANDLERS)


class CouncilHandler(Handler):
    """A council's run (``executor = "council"``): its members draft, critique, revise and are
    ranked (see :mod:`dispatch.work.councils`); the chosen proposal is the answer, which goes
    to review where the action says so. Resumed, it asks no member again for a step it
    answered."""

    name: ClassVar[str] = COUNCIL

    def __init__(self, councils: CouncilRunner) -> None:
        self._councils = councils

    async def run(self, ctx: HandlerContext) -> HandlerResult:
        council = ctx.action.council
        assert council is not None  # checked when the catalog loaded
        described = ", ".join(f"{k}: {v}" for k, v in ctx.payload.items())
        request = f"{ctx.action.description}. {described}" if described else ctx.action.description
        if ctx.language is not None:  # the requester gets the answer in their language
            request += "\n\n" + say("task.council_language", ctx.language)
        shape = None
        if ctx.action.produces == "plan":
            plan = ctx.action.plan
            assert plan is not None  # checked when the catalog loaded
            request += "\n\n" + plan_prompt(plan)
            catalog = ctx.catalog
            shape = (
                "plan",
                functools.partial(plan_problem, plan, catalog.known, catalog.validate_payload),
            )
        outcome = await self._councils.run(ctx.activity.id, request, council, shape=shape)
        if outcome.chosen is not None:
            check_artifact("text", outcome.text, ("text",))  # what review will store: fits it
        data = msgspec.to_builtins(msgspec.structs.replace(outcome, text=""))
        if outcome.chosen is None:
            raise CouncilEmpty(say("task.council_empty", ctx.language, id=ctx.activity.id))
        return HandlerResult(text=outcome.text, data={"council": data})


class CouncilEmpty(Exception):
    """No proposal survived the council (every member failed, or every check)."""
