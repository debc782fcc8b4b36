"""Splitting long replies for channels with a length limit, on line or word boundaries."""

from __future__ import annotations

__all__ = ["split_text"]


def split_text(text: str, limit: int) -> list[str]:
    """Cut ``text`` into pieces of at most ``limit`` characters, in order.

    Prefers the last line break within the limit, then the last space, and cuts a word only
    when a single word is longer than the limit. Joining the pieces with the removed boundary
    characters gives back the text.
    """
    if limit < 1:
        raise ValueError("limit must be positive")
    pieces: list[str] = []
    rest = text
    while len(rest) > limit:
        window = rest[: limit + 1]
        cut = window.rfind("\n")
        if cut <= 0:
            cut = window.rfind(" ")
        if cut <= 0:
            pieces.append(rest[:limit])
            rest = rest[limit:]
            continue
        pieces.append(rest[:cut])
        rest = rest[cut + 1 :]
    if rest or not pieces:
        pieces.append(rest)
    return pieces
