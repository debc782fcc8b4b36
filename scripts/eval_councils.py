"""Evaluation: one member alone (``baseline = true``) against a council, on questions with
checkable answers.

Runs each question of ``tests/data/council_eval.jsonl`` (30 short arithmetic and logic
questions) through Switchboard's own :class:`~dispatch.work.councils.CouncilRunner` twice: as
the first member alone, then as a council of three personas of the same model (draft,
critique, revise, each judging the others' proposals by correctness). Every member is asked to
end with ``ANSWER: <answer>``; the chosen proposal's answer is compared with the expected one.
Prints, per question and in total, the accuracy, the calls, the tokens and the time of both.

Any OpenAI-compatible endpoint (llama.cpp server, Ollama, vLLM, OpenAI...)::

    python scripts/eval_councils.py --base-url http://127.0.0.1:8080/v1 --model qwen2.5-7b \\
        [--api-key-env OPENAI_API_KEY] [--limit 10] [--timeout-s 120]

``--scripted`` runs against a local server started here instead, whose members err on some
questions and mend them when a critique says so, and whose judges score by the expected
answer: its figures check the machinery (the steps, their counts, the table), not a model.
The steps are stored in a throwaway SQLite database, as a deployment stores them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import msgspec  # noqa: E402

from dispatch.policy.specs import CouncilSpec, ProviderSpec  # noqa: E402
from dispatch.record.activities import ActivityLog, Opening  # noqa: E402
from dispatch.record.db import DatabaseSettings, create_engine, create_sessionmaker  # noqa: E402
from dispatch.record.models import ActivityStatus  # noqa: E402
from dispatch.record.usage import UsageLog  # noqa: E402
from dispatch.understanding.llm import LlmSettings  # noqa: E402
from dispatch.understanding.providers import Providers  # noqa: E402
from dispatch.work.councils import CouncilOutcome, CouncilRunner  # noqa: E402
from migrations import upgrade  # noqa: E402

DATA = ROOT / "tests" / "data" / "council_eval.jsonl"
PROVIDER = "eval"
ASK = (
    "Answer the question. Think it through briefly, then end with one last line "
    "`ANSWER: <answer>` (a number, a word, or yes/no; nothing else on that line)."
)
PERSONAS = {
    "careful": "You are careful: you compute each step twice before you answer.",
    "stepwise": "You are methodical: you write the steps out, one per line, then answer.",
    "checker": "You are a checker: you test your answer against the question before you give it.",
}
_ANSWER = re.compile(r"ANSWER:\s*(.+)", re.IGNORECASE)


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answer: str


@dataclass(frozen=True)
class Result:
    answer: str | None
    correct: bool
    calls: int
    tokens: int
    seconds: float


def load_questions(path: Path = DATA) -> list[Question]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [Question(**json.loads(line)) for line in lines if line.strip()]


def normal(answer: str) -> str:
    """An answer as compared: lower case, no surrounding punctuation, ``30.0`` as ``30``."""
    said = answer.strip().strip("`*").strip().rstrip(".").strip().lower()
    said = said.removesuffix(" cents").removesuffix(" euros").removesuffix(" km")
    try:
        number = float(said.replace(",", ""))
    except ValueError:
        return said
    return str(int(number)) if number.is_integer() else str(number)


def answer_of(text: str) -> str | None:
    found = _ANSWER.findall(text)
    return normal(found[-1]) if found else None


def council(*, baseline: bool, timeout_s: float) -> CouncilSpec:
    members = [{"name": n, "provider": PROVIDER, "persona": p} for n, p in PERSONAS.items()]
    return msgspec.convert(
        {
            "members": members,
            "judges": [{"name": n, "provider": PROVIDER} for n in PERSONAS],
            "rubric": {"correctness": {"description": "the final ANSWER line is right"}},
            "checks": [{"kind": "max_chars", "max_chars": 6000}],
            "rounds": 1,
            "call_timeout_s": timeout_s,
            "budget": {"calls": 40, "tokens": 400_000},
            "baseline": baseline,
        },
        CouncilSpec,
    )


async def evaluate(
    questions: list[Question],
    *,
    base_url: str,
    model: str,
    api_key_env: str | None,
    timeout_s: float,
) -> list[tuple[Question, Result, Result]]:
    with tempfile.TemporaryDirectory() as folder:
        engine = create_engine(DatabaseSettings(url=f"sqlite+aiosqlite:///{folder}/eval.db"))
        await upgrade(engine)
        sessions = create_sessionmaker(engine)
        spec = ProviderSpec(
            base_url=base_url,
            model=model,
            api_key_env=api_key_env,
            timeout_s=timeout_s,
            max_concurrency=4,
        )
        rows = []
        try:
            async with httpx.AsyncClient() as http:
                providers = Providers.build(
                    {PROVIDER: spec}, LlmSettings(), os.environ, http, UsageLog(sessions)
                )
                runner = CouncilRunner(sessions, providers)
                alone = council(baseline=True, timeout_s=timeout_s)
                together = council(baseline=False, timeout_s=timeout_s)
                for q in questions:
                    one = await _one(runner, sessions, q, alone)
                    many = await _one(runner, sessions, q, together)
                    rows.append((q, one, many))
        finally:
            await engine.dispose()
    return rows


async def _one(runner: CouncilRunner, sessions: Any, q: Question, spec: CouncilSpec) -> Result:
    async with sessions.begin() as session:
        opened = await ActivityLog.open(
            session,
            Opening(
                agent="eval",
                action_type="baseline" if spec.baseline else "council",
                description=q.id,
                details={"payload": {"question": q.question}},
                status=ActivityStatus.IN_PROGRESS,
            ),
        )
    started = time.perf_counter()
    outcome: CouncilOutcome = await runner.run(opened.id, f"{q.question}\n\n{ASK}", spec)
    seconds = time.perf_counter() - started
    said = answer_of(outcome.text) if outcome.chosen else None
    return Result(
        answer=said,
        correct=said == normal(q.answer),
        calls=outcome.calls,
        tokens=outcome.tokens,
        seconds=seconds,
    )


def table(rows: list[tuple[Question, Result, Result]], *, source: str) -> str:
    lines = [
        f"Council evaluation: {len(rows)} questions, {source}",
        "",
        f"{'':<5} {'expected':>9} | {'alone':>9} {'calls':>5} {'tokens':>7} {'s':>6} |"
        f" {'council':>9} {'calls':>5} {'tokens':>7} {'s':>6}",
    ]
    for q, one, many in rows:
        lines.append(
            f"{q.id:<5} {q.answer[:9]:>9} | {_mark(one):>9} {one.calls:>5} {one.tokens:>7}"
            f" {one.seconds:>6.2f} | {_mark(many):>9} {many.calls:>5} {many.tokens:>7}"
            f" {many.seconds:>6.2f}"
        )
    n = len(rows) or 1
    for name, index in (("alone", 1), ("council", 2)):
        results: list[Result] = [row[index] for row in rows]  # type: ignore[misc]
        right = sum(r.correct for r in results)
        lines.append(
            f"{name:<8} accuracy {right}/{len(rows)} = {right / n:.1%}; per question: "
            f"{sum(r.calls for r in results) / n:.1f} calls, "
            f"{sum(r.tokens for r in results) / n:.0f} tokens, "
            f"{sum(r.seconds for r in results) / n:.2f} s"
        )
    return "\n".join(lines[:3] + lines[3:-2] + [""] + lines[-2:])


def _mark(result: Result) -> str:
    shown = (result.answer or "-")[:7]
    return f"{shown} {'✓' if result.correct else '✗'}"


# ---- the scripted server ---------------------------------------------------------------

_REQUEST = re.compile(r"<<<REQUEST>>>\n(.*?)\n\n", re.DOTALL)
_PROPOSAL = re.compile(r"<<<PROPOSAL>>>\n(.*?)\n<<<END PROPOSAL>>>", re.DOTALL)


def scripted(questions: list[Question]) -> Any:
    """A stand-in model: member ``careful`` errs on every third question, ``stepwise`` on
    others, ``checker`` never; a critique says whether the answer it reads is right, and a
    revision after "wrong" mends it; judges score by the expected answer."""
    from tests.support.llm_api import completion

    truth = {q.question: q for q in questions}
    index = {q.question: i for i, q in enumerate(questions)}
    erring = {"careful": 0, "stepwise": 1}

    def say(text: str) -> tuple[int, Any, float]:
        body = completion({"role": "assistant", "content": text})
        body["usage"] = {"prompt_tokens": 60, "completion_tokens": len(text) // 4 + 1}
        body["usage"]["total_tokens"] = sum(body["usage"].values())
        return 200, body, 0.0

    def wrong(q: Question) -> str:
        if q.answer.isdigit():
            return str(int(q.answer) + 1)
        return {"yes": "no", "no": "yes"}.get(q.answer, "unknown")

    def scenario(body: dict[str, Any]) -> tuple[int, Any, float]:
        system, asked = body["messages"][0]["content"], body["messages"][-1]["content"]
        found = _REQUEST.search(asked)
        q = truth.get(found.group(1).strip()) if found else None
        if q is None:
            return 400, {"error": {"message": "no question", "type": "invalid_request"}}, 0.0
        if body.get("response_format"):
            labels = re.findall(r"<<<(P\d+)>>>\n(.*?)\n<<<END P\d+>>>", asked, re.DOTALL)
            return say(
                json.dumps(
                    {
                        label: {"correctness": 9 if answer_of(text) == normal(q.answer) else 2}
                        for label, text in labels
                    }
                )
            )
        if asked.startswith("Critique this proposal"):
            proposal = _PROPOSAL.search(asked)
            right = proposal is not None and answer_of(proposal.group(1)) == normal(q.answer)
            return say("Checked: right." if right else "Checked: the answer is wrong; redo it.")
        member = next((n for n, p in PERSONAS.items() if p == system), "checker")
        if "Your proposal:" in asked and "is wrong" not in asked:
            kept = _PROPOSAL.search(asked)
            return say(kept.group(1) if kept else f"ANSWER: {q.answer}")
        errs = member in erring and index[q.question] % 3 == erring[member]
        if errs and "is wrong" not in asked:
            return say(f"Quick sum.\nANSWER: {wrong(q)}")
        return say(f"Worked it through.\nANSWER: {q.answer}")

    return scenario


@contextmanager
def scripted_server(questions: list[Question]) -> Iterator[str]:
    from tests.support.llm_api import LlmApi

    with LlmApi(scenario=scripted(questions)) as server:
        yield server.base_url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--base-url", help="an OpenAI-compatible endpoint (…/v1)")
    where.add_argument("--scripted", action="store_true", help="a local scripted server")
    parser.add_argument("--model", default="default", help="the model to ask")
    parser.add_argument("--api-key-env", help="the environment variable holding its key")
    parser.add_argument("--limit", type=int, help="only the first N questions")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="per call")
    args = parser.parse_args()
    questions = load_questions()[: args.limit]

    async def run(base_url: str) -> list[tuple[Question, Result, Result]]:
        return await evaluate(
            questions,
            base_url=base_url,
            model=args.model,
            api_key_env=args.api_key_env,
            timeout_s=args.timeout_s,
        )

    if args.scripted:
        with scripted_server(questions) as base_url:
            rows = asyncio.run(run(base_url))
        source = "scripted local server (checks the machinery, not a model)"
    else:
        rows = asyncio.run(run(args.base_url))
        source = f"{args.model} at {args.base_url}"
    print(table(rows, source=source))
    answered = sum(r.answer is not None for _, one, many in rows for r in (one, many))
    sys.exit(0 if answered else 1)


if __name__ == "__main__":
    main()
