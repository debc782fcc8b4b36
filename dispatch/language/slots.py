"""Typed slots: turning what a user typed ("120,50 €", "mañana", "#12") into payload values.

Used for regex captures, for an LLM's proposed arguments and for a clarifying answer alike, so
every path into a payload goes through the same checks.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Callable
from typing import Any

from dispatch.infra.errors import InvalidInput
from dispatch.infra.phone import to_e164
from dispatch.language.text import normalize

__all__ = ["SlotContext", "SlotError", "coerce", "parse_date", "parse_number"]


class SlotError(ValueError):
    """The value does not fit the slot's type; the message says why, for the user."""


@dataclasses.dataclass(frozen=True)
class SlotContext:
    """What reading a value may depend on: the day (for "tomorrow") and the region (for a
    phone number typed without its country code)."""

    today: dt.date
    region: str | None = None


_CURRENCIES = {
    "€": "EUR",
    "eur": "EUR",
    "euro": "EUR",
    "euros": "EUR",
    "$": "USD",
    "usd": "USD",
    "dolar": "USD",
    "dolares": "USD",
    "dollar": "USD",
    "dollars": "USD",
    "£": "GBP",
    "gbp": "GBP",
    "libras": "GBP",
    "pounds": "GBP",
    "mxn": "MXN",
    "pesos": "MXN",
}
_CURRENCY = "|".join(sorted((re.escape(c) for c in _CURRENCIES), key=len, reverse=True))
_NUMBER = r"\d{1,3}(?:[.,\s]\d{3})+(?:[.,]\d{1,2})?|\d+(?:[.,]\d+)?"
_AMOUNT = re.compile(
    rf"^(?:(?P<pre>{_CURRENCY})\s*)?(?P<number>{_NUMBER})(?:\s*(?P<post>{_CURRENCY}))?$"
)
_EMAIL = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
_WEEKDAYS = {
    "monday": 0,
    "lunes": 0,
    "tuesday": 1,
    "martes": 1,
    "wednesday": 2,
    "miercoles": 2,
    "thursday": 3,
    "jueves": 3,
    "friday": 4,
    "viernes": 4,
    "saturday": 5,
    "sabado": 5,
    "sunday": 6,
    "domingo": 6,
}
_RELATIVE = {
    "today": 0,
    "hoy": 0,
    "tomorrow": 1,
    "manana": 1,
    "day after tomorrow": 2,
    "pasado manana": 2,
    "yesterday": -1,
    "ayer": -1,
}


def parse_number(text: str) -> float:
    """``1.234,56``, ``1,234.56``, ``120,5`` and ``120.50`` all read as people mean them."""
    cleaned = text.strip().replace(" ", "")
    if not re.fullmatch(r"[\d.,]+", cleaned) or not re.search(r"\d", cleaned):
        raise SlotError(f"{text!r} is not a number")
    last_dot, last_comma = cleaned.rfind("."), cleaned.rfind(",")
    decimal = "," if last_comma > last_dot else "."
    head, _, tail = cleaned.rpartition(decimal)
    if head and len(tail) == 3 and decimal == "," and "." not in cleaned and head.isdigit():
        # "1,234" with no other separator: thousands, as in English.
        return float(head + tail)
    if head and len(tail) == 3 and decimal == "." and "," not in cleaned and head.isdigit():
        # "1.234": thousands in Spanish, and also unusual as a decimal with three places.
        return float(head + tail)
    if not head:
        return float(tail)
    return float(re.sub(r"[.,]", "", head) + "." + tail)


def parse_date(text: str, today: dt.date) -> str:
    words = normalize(text).strip(" .!?")
    words = re.sub(r"^(?:el|the|on|para|for|next|proximo|este|this)\s+", "", words)
    if words in _RELATIVE:
        return (today + dt.timedelta(days=_RELATIVE[words])).isoformat()
    if words in _WEEKDAYS:
        ahead = (_WEEKDAYS[words] - today.weekday()) % 7 or 7
        return (today + dt.timedelta(days=ahead)).isoformat()
    if match := re.fullmatch(r"(\d{4})-(\d{1,2})-(\d{1,2})", words):
        year, month, day = (int(g) for g in match.groups())
    elif match := re.fullmatch(r"(\d{1,2})[/.-](\d{1,2})(?:[/.-](\d{2,4}))?", words):
        day, month = int(match[1]), int(match[2])
        year = int(match[3]) if match[3] else today.year
        year = year + 2000 if year < 100 else year
    else:
        raise SlotError(f"{text!r} is not a date I understand (try 'tomorrow' or 2026-11-30)")
    try:
        return dt.date(year, month, day).isoformat()
    except ValueError:
        raise SlotError(f"{text!r} is not a real date") from None


def _integer(text: str, _context: SlotContext) -> int:
    try:
        return int(parse_number(text)) if re.fullmatch(r"[\d.,\s]+", text) else int(text)
    except ValueError:
        raise SlotError(f"{text!r} is not a whole number") from None


def _id(text: str, _context: SlotContext) -> int:
    digits = text.lstrip("#nNº°o. ")
    if not digits.isdigit():
        raise SlotError(f"{text!r} is not a request number like #12")
    return int(digits)


def _amount(text: str, _context: SlotContext) -> dict[str, Any]:
    match = _AMOUNT.fullmatch(normalize(text).replace("€ ", "€"))
    if match is None:
        raise SlotError(f"{text!r} is not an amount like 120.50 €")
    code = match["pre"] or match["post"]
    return {"value": parse_number(match["number"]), "currency": _CURRENCIES[code] if code else None}


def _phone(text: str, context: SlotContext) -> str:
    try:
        return to_e164(text, context.region)
    except InvalidInput as exc:
        raise SlotError(exc.detail) from None


def _email(text: str, _context: SlotContext) -> str:
    if not _EMAIL.fullmatch(text):
        raise SlotError(f"{text!r} is not an email address")
    return text.lower()


def _boolean(text: str, _context: SlotContext) -> bool:
    lowered = normalize(text)
    if lowered in {"yes", "si", "true", "1", "y", "s"}:
        return True
    if lowered in {"no", "false", "0", "n"}:
        return False
    raise SlotError(f"{text!r} is not yes or no")


_COERCERS: dict[str, Callable[[str, SlotContext], Any]] = {
    "string": lambda text, _context: text,
    "integer": _integer,
    "id": _id,
    "number": lambda text, _context: parse_number(text),
    "amount": _amount,
    "date": lambda text, context: parse_date(text, context.today),
    "phone": _phone,
    "email": _email,
    "boolean": _boolean,
}


def coerce(
    slot_type: str, value: Any, *, today: dt.date | None = None, region: str | None = None
) -> Any:
    """``value`` (usually text) as ``slot_type``; raises :class:`SlotError`. Relative dates are
    read from ``today``, phone numbers without a country code in ``region`` (``ES``...)."""
    if not isinstance(value, str):
        return value  # already typed (an LLM's JSON number, say): the schema checks it
    coercer = _COERCERS.get(slot_type)
    if coercer is None:
        raise SlotError(f"unknown slot type {slot_type!r}")
    return coercer(value.strip(), SlotContext(today or dt.datetime.now(dt.UTC).date(), region))
