"""Phone numbers in E.164 (``+34600111222``), as WhatsApp identities are keyed."""

from __future__ import annotations

import re

from dispatch.infra.errors import InvalidInput

__all__ = ["to_e164"]

_E164 = re.compile(r"\+[1-9]\d{6,14}")
_SEPARATORS = re.compile(r"[\s().\-]")


def to_e164(raw: str) -> str:
    """Normalize ``+34 600-111 222`` or ``0034600111222`` to ``+34600111222``."""
    number = _SEPARATORS.sub("", raw.strip())
    if number.startswith("00"):
        number = "+" + number[2:]
    if not number.startswith("+"):
        number = "+" + number
    if not _E164.fullmatch(number):
        raise InvalidInput(f"not an E.164 phone number: {raw!r}")
    return number
