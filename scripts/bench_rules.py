"""Benchmark: rule parsing of short messages against a 100-rule catalog.

Prints microseconds per message for Switchboard's parser (normalization, the ordered rules,
slot coercion and schema check) and for a baseline measured in the same run: a plain
``re.search`` loop over the same 100 patterns on the raw text. The ratio is the figure to
watch; the absolute number depends on the machine.

    python scripts/bench_rules.py [--messages N] [--repeat R]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dispatch.policy.catalog import decode_catalog
from dispatch.policy.control import CONTROL_RULES
from dispatch.understanding.intents import IntentParser
from workers.handlers import BUILTIN_HANDLER_NAMES

TOPICS = [
    ("invoice", "factura"),
    ("order", "pedido"),
    ("meeting", "reunion"),
    ("ticket", "incidencia"),
    ("payment", "pago"),
    ("contract", "contrato"),
    ("report", "informe"),
    ("quote", "presupuesto"),
    ("delivery", "entrega"),
    ("refund", "reembolso"),
]
VERBS = [
    ("create", "crear"),
    ("cancel", "anular"),
    ("show", "ver"),
    ("send", "enviar"),
    ("update", "actualizar"),
]


def catalog_text() -> str:
    lines = [
        '[fallback]\nagent = "a"\naction = "help"\n',
        '[agents.a.actions.help]\ndescription = "help"\nhandler = "help"\npublic = true\n',
    ]
    rules = []
    for topic_en, topic_es in TOPICS:
        for verb_en, verb_es in VERBS:
            name = f"{verb_en}_{topic_en}"
            lines.append(
                f'[agents.a.actions.{name}]\ndescription = "{verb_en} {topic_en}"\n'
                f'handler = "echo"\npublic = true\n'
                f"[agents.a.actions.{name}.payload]\n"
                f'ref = {{ type = "id", required = false }}\n'
                f'amount = {{ type = "amount", required = false }}\n'
            )
            rules.append(
                f'[[rules]]\nid = "{name}"\nagent = "a"\naction = "{name}"\n'
                f"patterns = ['^(?:{verb_en}|{verb_es})\\s+(?:the\\s+|el\\s+|la\\s+)?"
                f"(?:{topic_en}|{topic_es})\\s*(?:#(?P<ref>\\d+))?"
                f"(?:\\s+(?:for|por|de)\\s+(?P<amount>[\\d.,]+\\s*(?:€|eur|usd|\\$)?))?\\s*$']\n"
            )
            if len(rules) == 50:
                break
    for n in range(100 - len(rules)):
        topic_en, topic_es = TOPICS[n % len(TOPICS)]
        name = f"kw_{n}"
        lines.append(
            f'[agents.a.actions.{name}]\ndescription = "kw {n}"\nhandler = "echo"\npublic = true\n'
        )
        rules.append(
            f'[[rules]]\nid = "{name}"\nagent = "a"\naction = "{name}"\n'
            f'keywords = ["{topic_en} help {n}", "ayuda con {topic_es} {n}", "word{n}"]\n'
        )
    return "\n".join(lines + rules)


MESSAGES = [
    "crear factura #123 por 120,50 €",
    "Cancel the order #77",
    "ver el informe",
    "necesito ayuda con entrega 33 por favor",
    "hola, ¿qué tal?",
    "send quote #9 for 300 usd",
    "ACTUALIZAR contrato #5",
    "something nobody understands at all",
    "word97",
    "reembolso",
]


def per_message_us(fn, messages: list[str], repeat: int) -> float:  # type: ignore[no-untyped-def]
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        for text in messages:
            fn(text)
        runs.append((time.perf_counter() - started) / len(messages) * 1e6)
    return statistics.median(runs)


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_argument("--messages", type=int, default=2000)
    cli.add_argument("--repeat", type=int, default=7)
    args = cli.parse_args()
    catalog = decode_catalog(catalog_text().encode(), "bench.toml", BUILTIN_HANDLER_NAMES)
    assert len(catalog.rules) == 100 + len(CONTROL_RULES), len(catalog.rules)  # + built-ins
    parser = IntentParser(catalog)
    messages = (MESSAGES * (args.messages // len(MESSAGES) + 1))[: args.messages]
    patterns = [p for rule in catalog.rules for p in rule.patterns] + [
        rule.keywords for rule in catalog.rules if rule.keywords is not None
    ]

    def baseline(text: str) -> None:
        for pattern in patterns:
            if pattern.search(text):
                return

    matched = sum(parser.parse(t).matched for t in MESSAGES)
    ours = per_message_us(parser.parse, messages, args.repeat)
    base = per_message_us(baseline, messages, args.repeat)
    print(
        f"catalog: {len(catalog.rules)} rules; messages: {len(messages)} "
        f"({matched}/{len(MESSAGES)} of the sample match a rule)"
    )
    print(f"baseline  re.search loop over the same patterns: {base:8.2f} µs/message")
    print(f"switchboard IntentParser.parse:                   {ours:8.2f} µs/message")
    print(
        f"ratio (parser / baseline): {ours / base:.2f}x; budget 50 µs: "
        f"{'within' if ours < 50 else 'OVER'}"
    )


if __name__ == "__main__":
    main()
