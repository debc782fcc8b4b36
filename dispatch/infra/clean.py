"""Making what a verified provider sent storable as it is, as nearly as the database allows.

PostgreSQL refuses NUL in text and JSONB and lone UTF-16 surrogates anywhere; columns have
widths. A provider's message is kept anyway (refusing it would only make the provider retry it
for a day): NULs are dropped, surrogates replaced, and a key longer than its column keeps its
head and a digest of the whole, so two long keys still differ.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

__all__ = [
    "MAX_JSON_DEPTH",
    "NO_NUL",
    "VISIBLE",
    "clean_json",
    "clean_text",
    "fit",
    "storable_json",
]

_DIGEST_CHARS = 40
MAX_JSON_DEPTH = 64
"""How deep arrays and objects may nest in anything a client or provider sends (checked on the
bytes, before any decoder: see ``channels.validation.require_depth``). Nothing we accept comes
near it; anything that walks such data may recurse this far and no further."""
_TOO_DEEP = f"(nested deeper than {MAX_JSON_DEPTH} levels: dropped)"
VISIBLE = (
    r"[^\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f"
    r"\u3000\ufeff\x00]"
)
"""One character that is neither white space nor NUL, written the same way for Python's ``re``
and for the JSON Schemas of the API (ECMAScript), whose ``\\s`` differ: a text or name needs one."""
NO_NUL = r"^[^\x00]*$"
"""A string without NUL (the database refuses it), for both regex engines."""


def clean_text(value: str) -> str:
    """``value`` without NUL characters or unpaired surrogates."""
    value = value.replace("\x00", "")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def clean_json(value: Any, _depth: int = 0) -> Any:
    """``value`` (decoded JSON) with every string, keys included, cleaned, and numbers JSON
    cannot carry (NaN, infinities) as null. What nests deeper than :data:`MAX_JSON_DEPTH`
    (which nothing checked at the edge can) is replaced by a note: the walk is bounded."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict | list | tuple) and _depth >= MAX_JSON_DEPTH:
        return _TOO_DEEP
    if isinstance(value, dict):
        return {clean_text(str(k)): clean_json(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v, _depth + 1) for v in value]
    return value


def fit(value: str, limit: int) -> str:
    """``value`` cleaned and, if longer than ``limit``, its head and a digest of it all."""
    value = clean_text(value)
    if len(value) <= limit:
        return value
    digest = hashlib.sha256(value.encode("utf-8")).hexdigest()[:_DIGEST_CHARS]
    return f"{value[: limit - _DIGEST_CHARS - 1]}~{digest}"


def storable_json(value: Any) -> str:
    """The JSON the database is given for every JSON column (the engine's serializer): the last
    line of defence, so no value that reaches a column can make a write fail."""
    return json.dumps(clean_json(value), ensure_ascii=False, allow_nan=False, default=str)
