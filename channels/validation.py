"""Shared checks for what channels receive: decoding with clear errors, and text rules."""

from __future__ import annotations

import itertools
import re
from typing import Any, TypeVar

import msgspec

from dispatch.infra.clean import MAX_JSON_DEPTH, VISIBLE
from dispatch.infra.errors import InvalidInput

__all__ = [
    "NOT_UTF8",
    "TOO_DEEP",
    "decode_body",
    "decode_json",
    "refuse_nul",
    "require_depth",
    "require_text",
    "require_utf8",
]

T = TypeVar("T")

NOT_UTF8 = "the body is not valid UTF-8"


def require_utf8(body: bytes) -> None:
    """Refuse a body that is not UTF-8, by our own check before any decoder sees it: how a
    decoder reports it is its own business (msgspec 0.22 raised ``UnicodeDecodeError`` from
    inside a string, 0.23 a ``DecodeError`` worded its own way)."""
    if body.isascii():
        return
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(NOT_UTF8) from None


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_VISIBLE = re.compile(VISIBLE)
TOO_DEEP = f"the body nests arrays or objects deeper than {MAX_JSON_DEPTH} levels"


def require_depth(body: bytes) -> None:
    """Refuse JSON that nests deeper than :data:`MAX_JSON_DEPTH`, by a scan of the bytes that
    recurses nowhere, before any decoder (or anything else that walks it) does. Brackets inside
    strings do not count; what is not JSON at all is left for the decoder to say so."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return  # the common case, in two passes of C
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS).translate(_STEP)
    steps = (1 if step == 1 else -1 for step in brackets)
    if max(itertools.accumulate(steps), default=0) > MAX_JSON_DEPTH:
        raise InvalidInput(TOO_DEEP, extra={"limit": MAX_JSON_DEPTH})


def decode_json(body: bytes) -> Any:
    """Decode a JSON document of any shape; ``InvalidInput`` if it is not UTF-8, nests too
    deep, or is not JSON."""
    require_utf8(body)
    require_depth(body)
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None


def decode_body(body: bytes, type_: type[T]) -> T:
    """Decode JSON into ``type_``; a problem becomes ``InvalidInput`` naming the field."""
    if not body.strip():
        raise InvalidInput("the request body is empty; expected a JSON object")
    require_utf8(body)
    require_depth(body)
    try:
        decoded = msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        # A NUL fails a field's pattern: say so in our words, naming the field, if it is one.
        refuse_nul(msgspec.json.decode(body))
        raise InvalidInput(f"invalid field: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    refuse_nul(decoded)
    return decoded


def refuse_nul(value: Any, field: str = "") -> None:
    """Refuse a NUL character anywhere in what a client sent (the database cannot keep one),
    naming the field it is in."""
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidInput(
                f"{field or 'the body'} contains a NUL character", extra={"field": field}
            )
    elif isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            refuse_nul(getattr(value, name), f"{field}.{name}" if field else name)
    elif isinstance(value, dict):
        for key, item in value.items():
            refuse_nul(key, field)
            refuse_nul(item, f"{field}.{key}" if field else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            refuse_nul(item, f"{field}[{index}]")


def require_text(text: str, max_chars: int, *, has_media: bool = False) -> str:
    """``text`` stripped; refused if it has nothing visible (unless media carries the message),
    is longer than ``max_chars`` as sent, or holds a NUL: exactly what the API's schema says
    (``dispatch.infra.clean.VISIBLE``, ``maxLength``), whichever regex engine reads it."""
    if "\x00" in text:
        raise InvalidInput("text contains a NUL character", extra={"field": "text"})
    if len(text) > max_chars:
        raise InvalidInput(
            f"text is {len(text)} characters; the limit is {max_chars}", extra={"field": "text"}
        )
    if _VISIBLE.search(text) is None and not has_media:
        raise InvalidInput("text is empty", extra={"field": "text"})
    return text.strip()
