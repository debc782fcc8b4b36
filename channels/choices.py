"""Buttons for offered choices: short, opaque tokens signed for one conversation.

A reply that offers choices (help, a clarifying question, an approval request) is stored with
them; its buttons carry ``<message>.<choice>.<minute issued>.<signature>`` (base36 but the
signature). A tap is resolved against the stored message, so a token that is forged, replayed
in another conversation, expired, or names a choice that was never offered changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from channels.base import ChoiceLookup

__all__ = ["ChoiceTokens"]

_SIG_CHARS = 16
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _b36(number: int) -> str:
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = _DIGITS[rest] + out
        if number == 0:
            return out


class ChoiceTokens:
    def __init__(self, secret: bytes, *, ttl_s: float, lookup: ChoiceLookup) -> None:
        self._secret = secret
        self._ttl_s = ttl_s
        self._lookup = lookup

    def _sign(self, conversation_key: str, payload: str) -> str:
        mac = hmac.new(self._secret, f"{conversation_key}|{payload}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).decode()[:_SIG_CHARS]

    def issue(self, conversation_key: str, message_id: int, index: int) -> str:
        """The token of choice ``index`` of our message ``message_id`` (at most 40 chars)."""
        payload = f"{_b36(message_id)}.{_b36(index)}.{_b36(int(time.time() // 60))}"
        return f"{payload}.{self._sign(conversation_key, payload)}"

    async def resolve(self, token: str, conversation_key: str) -> str | None:
        """The chosen text, if the token is ours, for this conversation, fresh and on record."""
        parts = token.split(".")
        if len(parts) != 4:
            return None
        payload, signature = ".".join(parts[:3]), parts[3]
        expected = self._sign(conversation_key, payload)
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            return None
        try:
            message_id, index, minute = (int(p, 36) for p in parts[:3])
        except ValueError:
            return None
        if time.time() - minute * 60 > self._ttl_s:
            return None
        found = await self._lookup(message_id)
        if found is None or found[0] != conversation_key or index >= len(found[1]):
            return None
        return found[1][index].text
