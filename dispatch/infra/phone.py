"""Phone numbers in E.164 (``+34600111222``), as WhatsApp identities are keyed, read by
``phonenumbers`` (Google's libphonenumber metadata): what a person typed in a region's own way
("612 345 678" in Spain) or a provider's international digits."""

from __future__ import annotations

import functools
import re

import phonenumbers

from dispatch.infra.errors import InvalidInput

__all__ = ["from_provider", "is_region", "to_e164"]

_WRITTEN = re.compile(r"\+?[\d\s().\-/]+")
"""How a number is written: digits and separators only (phonenumbers would also find one inside
other text, or spell out letters; neither is a number someone gave us)."""


def is_region(code: str) -> bool:
    """Whether ``code`` is a region phonenumbers knows (``ES``, ``US``...)."""
    return code in phonenumbers.SUPPORTED_REGIONS


@functools.lru_cache(maxsize=2**14)
def to_e164(raw: str, region: str | None = None) -> str:
    """``+34 600-111 222``, ``0034600111222`` or, with ``region`` ES, ``612 345 678`` as
    ``+34…``; refused (:class:`InvalidInput`) when it is no possible number, or has no country
    code and there is no region to read it in. Remembered for the last 16,384 numbers asked
    (a sender's every message is read by it; a refusal is not remembered)."""
    text = raw.strip()
    if not _WRITTEN.fullmatch(text):
        raise InvalidInput(f"not a phone number: {raw!r}")
    if text.startswith("00"):
        text = "+" + text[2:]
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        hint = "" if region or text.startswith("+") else " with its country code (+34...)"
        raise InvalidInput(f"not a phone number{hint}: {raw!r}") from None
    if not phonenumbers.is_possible_number(number):
        raise InvalidInput(f"not a possible phone number: {raw!r}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def from_provider(raw: str) -> str:
    """A provider's sender: international digits, with or without the ``+`` (Meta sends
    ``34600111222``, Twilio ``+34600111222``)."""
    text = raw.strip()
    return to_e164(text if text.startswith(("+", "00")) else "+" + text)
