"""Evaluation: precision and recall per action, for the rules alone and for rules + LLM.

Runs the labelled messages of ``tests/data/intent_eval.jsonl`` through Switchboard's own
:class:`~dispatch.understanding.interpret.Interpreter` against ``tests/data/eval_catalog.toml``.

Each line holds what a scripted model answers for that message (a tool call, no call, malformed
arguments, an unknown tool, a time-out or a 500). By default those answers are replayed by a
local OpenAI-compatible server started here, so the figures show what our validation makes of
them; ``--llm-base-url`` (with ``--llm-model`` and ``--llm-api-key``) evaluates a real model.

A prediction is the action a message becomes. A message matching several actions (which the
gateway answers with "which one?") predicts none; one lacking a required detail predicts its
action (the gateway asks for the detail). ``expect: null`` lines are negatives: any action for
them is a false positive.

    python scripts/eval_intents.py [--data F] [--catalog F] [--role admin] [--llm-base-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from dispatch.infra.metrics import Counters  # noqa: E402
from dispatch.policy.catalog import load_catalog  # noqa: E402
from dispatch.understanding.intents import Intent, IntentParser  # noqa: E402
from dispatch.understanding.interpret import Interpreter  # noqa: E402
from dispatch.understanding.llm import LlmClient, LlmSettings  # noqa: E402
from workers.handlers import BUILTIN_HANDLER_NAMES  # noqa: E402

DATA = ROOT / "tests" / "data" / "intent_eval.jsonl"
CATALOG = ROOT / "tests" / "data" / "eval_catalog.toml"
SLOW_S = 1.0
TIMEOUT_S = 0.3


@dataclass(frozen=True)
class Case:
    text: str
    expect: str | None
    llm: Any
    note: str = ""


@dataclass
class Scores:
    """Confusion counts of one pass (rules, or rules + LLM)."""

    true_positive: Counter[str] = field(default_factory=Counter)
    false_positive: Counter[str] = field(default_factory=Counter)
    support: Counter[str] = field(default_factory=Counter)
    asked_which: int = 0
    negatives_acted_on: int = 0

    def add(self, expect: str | None, predicted: str | None) -> None:
        if expect is not None:
            self.support[expect] += 1
        if predicted is None:
            return
        if predicted == expect:
            self.true_positive[predicted] += 1
        else:
            self.false_positive[predicted] += 1
            if expect is None:
                self.negatives_acted_on += 1

    def precision(self, action: str | None = None) -> float:
        tp = self._sum(self.true_positive, action)
        predicted = tp + self._sum(self.false_positive, action)
        return tp / predicted if predicted else 1.0

    def recall(self, action: str | None = None) -> float:
        support = self._sum(self.support, action)
        return self._sum(self.true_positive, action) / support if support else 1.0

    @staticmethod
    def _sum(counts: Counter[str], action: str | None) -> int:
        return counts[action] if action is not None else sum(counts.values())


@dataclass
class Report:
    cases: int
    negatives: int
    rules: Scores
    combined: Scores
    llm_outcomes: Counter[str]
    actions: list[str]
    rows: list[tuple[Case, str | None, str | None]]
    """Per message: (case, prediction by the rules, prediction by rules + LLM)."""


def load_cases(path: Path = DATA) -> list[Case]:
    cases = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            raw = json.loads(line)
            try:
                cases.append(Case(raw["text"], raw["expect"], raw["llm"], raw.get("note", "")))
            except KeyError as exc:
                raise SystemExit(f"{path}:{number}: missing key {exc}") from None
    return cases


def predicted(intent: Intent) -> str | None:
    if not intent.matched or intent.alternatives:
        return None
    return f"{intent.agent}.{intent.action_type}"


def replay_scenario(cases: list[Case]) -> Any:
    """An LLM server scenario answering each message with its line's scripted answer."""
    from tests.support.llm_api import text_only, tool_call

    answers = {case.text: case for case in cases}

    def scenario(body: dict[str, Any]) -> tuple[int, Any, float]:
        case = answers.get(body["messages"][-1]["content"])
        answer = case.llm if case is not None else "none"
        if isinstance(answer, dict):
            return tool_call(answer["tool"], answer.get("arguments", {}))
        if answer == "malformed":
            guess = (case.expect if case and case.expect else "crm.find_client").replace(".", "__")
            return tool_call(guess, '{"query": "Acme", "confidence": 0.9')
        if answer == "unknown":
            return tool_call("admin__delete_everything", {"confidence": 0.99})
        if answer == "slow":
            return (*text_only("thinking...")[:2], SLOW_S)
        if answer == "error":
            return 500, {"error": {"message": "internal error", "type": "server_error"}}, 0.0
        return text_only("Sorry, I can't help with that.")

    return scenario


@contextmanager
def local_llm(cases: list[Case]) -> Iterator[str]:
    from tests.support.llm_api import LlmApi

    with LlmApi(scenario=replay_scenario(cases)) as server:
        yield server.base_url


async def evaluate(
    cases: list[Case],
    *,
    catalog_path: Path = CATALOG,
    role: str = "admin",
    llm: LlmSettings,
) -> Report:
    catalog = load_catalog(catalog_path, BUILTIN_HANDLER_NAMES)
    parser = IntentParser(catalog)
    counters = Counters()
    rules, combined = Scores(), Scores()
    rows: list[tuple[Case, str | None, str | None]] = []
    async with httpx.AsyncClient() as http:
        interpreter = Interpreter(
            catalog=catalog,
            parser=parser,
            llm=LlmClient(llm, http),
            counters=counters,
            confidence_floor=llm.confidence_floor,
        )

        async def no_history() -> list[tuple[str, str]]:
            return []

        for case in cases:
            by_rules = parser.parse(case.text)
            rules.add(case.expect, predicted(by_rules))
            rules.asked_which += bool(by_rules.alternatives)
            intent = await interpreter.interpret(
                case.text, role=role, active=True, history=no_history
            )
            combined.add(case.expect, predicted(intent))
            combined.asked_which += bool(intent.alternatives)
            rows.append((case, predicted(by_rules), predicted(intent)))
    outcomes = Counter({k: v for k, v in (await counters.snapshot()).items()})
    actions = sorted(
        f"{agent}.{action}" for agent, action, spec in catalog.actions() if not spec.internal
    )
    return Report(
        cases=len(cases),
        negatives=sum(c.expect is None for c in cases),
        rules=rules,
        combined=combined,
        llm_outcomes=outcomes,
        actions=actions,
        rows=rows,
    )


def format_report(report: Report, *, llm_label: str) -> str:
    width = max(len(a) for a in report.actions)
    lines = [
        f"intent evaluation: {report.cases} labelled messages "
        f"({report.negatives} negatives), LLM: {llm_label}",
        "",
        f"{'action':<{width}}  {'n':>3}   {'rules P':>7} {'rules R':>7}   "
        f"{'+LLM P':>7} {'+LLM R':>7}",
    ]
    for action in report.actions:
        n = report.rules.support[action]
        fp_any = report.rules.false_positive[action] + report.combined.false_positive[action]
        if not n and not fp_any:
            continue
        lines.append(
            f"{action:<{width}}  {n:>3}   {report.rules.precision(action):>7.2f} "
            f"{report.rules.recall(action):>7.2f}   {report.combined.precision(action):>7.2f} "
            f"{report.combined.recall(action):>7.2f}"
        )
    lines += [
        f"{'all actions (micro)':<{width}}  {sum(report.rules.support.values()):>3}   "
        f"{report.rules.precision():>7.2f} {report.rules.recall():>7.2f}   "
        f"{report.combined.precision():>7.2f} {report.combined.recall():>7.2f}",
        "",
        f"negatives acted on: rules {report.rules.negatives_acted_on}/{report.negatives}, "
        f"rules+LLM {report.combined.negatives_acted_on}/{report.negatives}",
        f"asked 'which one?' (ambiguous keywords): rules {report.rules.asked_which}, "
        f"rules+LLM {report.combined.asked_which}",
        "LLM answers (rejected includes 'no tool called'): "
        + ", ".join(
            f"{name.removeprefix('llm_').removesuffix('_total')} {count}"
            for name, count in sorted(report.llm_outcomes.items())
        ),
    ]
    return "\n".join(lines)


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_argument("--data", type=Path, default=DATA)
    cli.add_argument("--catalog", type=Path, default=CATALOG)
    cli.add_argument("--role", default="admin", help="role of the sender (what may be offered)")
    cli.add_argument("--llm-base-url", help="a real OpenAI-compatible endpoint instead")
    cli.add_argument("--llm-model", default="gpt-4o-mini")
    cli.add_argument("--llm-api-key")
    cli.add_argument("--llm-timeout-s", type=float, default=None)
    args = cli.parse_args()
    logging.basicConfig(level=logging.ERROR)
    cases = load_cases(args.data)
    server = nullcontext(args.llm_base_url) if args.llm_base_url else local_llm(cases)
    with server as base_url:
        settings = LlmSettings(
            base_url=base_url,
            model=args.llm_model,
            api_key=args.llm_api_key,
            timeout_s=args.llm_timeout_s or (8.0 if args.llm_base_url else TIMEOUT_S),
            max_retries=0,
            breaker_failures=1_000_000,  # measure every message, not the breaker
        )
        report = asyncio.run(
            evaluate(cases, catalog_path=args.catalog, role=args.role, llm=settings)
        )
    label = args.llm_model if args.llm_base_url else "scripted answers replayed by a local server"
    print(format_report(report, llm_label=label))


if __name__ == "__main__":
    main()
