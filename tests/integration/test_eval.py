"""The labelled evaluation set and what the rules and the LLM path make of it.

``scripts/eval_intents.py`` prints the full table (CI runs it after the tests); here the set's
shape is checked and the properties that must hold whatever the figures are asserted.
"""

from __future__ import annotations

from collections import Counter

from dispatch.understanding.llm import LlmSettings
from scripts.eval_intents import TIMEOUT_S, Report, evaluate, load_cases, local_llm

FAILURES = {"malformed", "unknown", "slow", "error", "none"}


async def run_eval() -> Report:
    cases = load_cases()
    with local_llm(cases) as base_url:
        settings = LlmSettings(
            base_url=base_url, timeout_s=TIMEOUT_S, max_retries=0, breaker_failures=10**6
        )
        return await evaluate(cases, llm=settings)


async def test_the_set_is_large_bilingual_and_covers_every_action() -> None:
    cases = load_cases()
    assert len(cases) >= 200
    assert len({c.text for c in cases}) == len(cases)
    per_action = Counter(c.expect for c in cases)
    assert per_action[None] >= 40
    report = await run_eval()
    for action in report.actions:
        if not action.startswith("system."):
            assert per_action[action] >= 10, action
    tags = Counter(tag for c in cases for tag in c.note.split())
    assert tags["es"] >= 80
    assert tags["en"] >= 80
    assert tags["typo"] >= 10


async def test_rules_are_precise_and_the_llm_adds_recall_without_trusting_failures() -> None:
    report = await run_eval()
    assert report.rules.precision() >= 0.9
    assert report.combined.recall() > report.rules.recall() + 0.1
    assert report.combined.precision() >= 0.85
    for case, by_rules, combined in report.rows:
        if by_rules is not None:
            assert combined == by_rules, case.text  # rules first: the LLM is not asked
        elif isinstance(case.llm, str) and case.llm in FAILURES:
            assert combined is None, case.text  # a failed or empty answer is never an action
        elif isinstance(case.llm, dict) and case.llm["arguments"].get("confidence", 0) < 0.6:
            assert combined is None, case.text  # below the confidence floor
    assert report.llm_outcomes["llm_unavailable_total"] >= 6  # slow and 500 answers


async def test_the_council_evaluation_runs_both_ways_and_prints_its_table() -> None:
    """``scripts/eval_councils.py --scripted`` (CI prints the whole table): the same questions
    through one member alone and through the council, each step a real provider call."""
    from scripts.eval_councils import evaluate as evaluate_councils
    from scripts.eval_councils import load_questions, scripted_server, table

    questions = load_questions()
    assert len(questions) == 30
    assert len({q.question for q in questions}) == 30
    few = questions[:6]
    with scripted_server(few) as base_url:
        rows = await evaluate_councils(
            few, base_url=base_url, model="m", api_key_env=None, timeout_s=10
        )
    for index, (question, alone, council) in enumerate(rows):
        assert (alone.calls, council.calls) == (1, 12)  # 3 drafts, critiques, revisions, scores
        assert 0 < alone.tokens < council.tokens
        assert alone.correct == (index % 3 != 0), question  # the scripted member errs there
        assert council.correct, question  # the critique caught it, the revision mended it
    printed = table(rows, source="scripted")
    assert "alone    accuracy 4/6 = 66.7%" in printed
    assert "council  accuracy 6/6 = 100.0%" in printed
