"""Text normalization for matching: case- and accent-insensitive, with a map back to the
original characters so captured slots keep what the user actually typed."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

__all__ = ["NormalizedText", "normalize", "strip_accents"]


@lru_cache(maxsize=4096)
def _fold_char(char: str) -> str:
    decomposed = unicodedata.normalize("NFKD", char)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower()


def strip_accents(text: str) -> str:
    """Remove accents only (for regex sources, whose escapes are case-sensitive)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def normalize(text: str) -> str:
    """Lowercase, strip accents, collapse runs of white space."""
    return NormalizedText(text).text


_SPACES = re.compile(r"\s+")


class NormalizedText:
    """``text`` folded for matching; :meth:`original` maps a span back to the input.

    The character map is built only when a span is asked for (most texts never are), and plain
    ASCII text is folded with two C-level passes instead of a Python loop.
    """

    __slots__ = ("_source", "_starts", "text")

    def __init__(self, source: str) -> None:
        self._source = source.strip()
        self._starts: list[int] | None = None
        if self._source.isascii():
            self.text = _SPACES.sub(" ", self._source).lower()
        else:
            self.text = "".join(self._fold())

    def _fold(self) -> list[str]:
        out: list[str] = []
        starts: list[int] = []
        pending_space = False
        for index, char in enumerate(self._source):
            if char.isspace():
                pending_space = True
                continue
            if pending_space:
                out.append(" ")
                starts.append(index - 1)
                pending_space = False
            folded = char.lower() if char.isascii() else _fold_char(char)
            out.append(folded)
            starts.extend([index] * len(folded))
        self._starts = starts
        return out

    def original(self, start: int, end: int) -> str:
        """The input characters behind ``text[start:end]``."""
        if start >= end:
            return ""
        if self._starts is None:
            self._fold()
        assert self._starts is not None
        return self._source[self._starts[start] : self._starts[end - 1] + 1]
