"""Shared checks for what channels receive: decoding with clear errors, and text rules."""

from __future__ import annotations

from typing import TypeVar

import msgspec

from gateway.errors import InvalidInput

__all__ = ["decode_body", "require_text"]

T = TypeVar("T")


def decode_body(body: bytes, type_: type[T]) -> T:
    """Decode JSON into ``type_``; a problem becomes ``InvalidInput`` naming the field."""
    if not body.strip():
        raise InvalidInput("the request body is empty; expected a JSON object")
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"invalid field: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None


def require_text(text: str, max_chars: int, *, has_media: bool = False) -> str:
    """Strip ``text``; refuse it empty (unless media carries the message) or too long."""
    stripped = text.strip()
    if not stripped and not has_media:
        raise InvalidInput("text is empty", extra={"field": "text"})
    if len(stripped) > max_chars:
        raise InvalidInput(
            f"text is {len(stripped)} characters; the limit is {max_chars}",
            extra={"field": "text"},
        )
    if "\x00" in stripped:
        raise InvalidInput("text contains a NUL character", extra={"field": "text"})
    return stripped
