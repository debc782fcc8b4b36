"""The gateway's own words in the user's language.

Every text Switchboard writes itself (help, status, cancelling, failures, approvals, takeover,
workflow news) is in ``messages/<code>.toml``, one file per language (English and Spanish ship;
a third language is a third file plus the catalog's ``localized.<code>`` entries). :func:`detect`
reads a language off a message (each file's marker words and letters; a message with no clue,
"12" or "ok", says nothing and the conversation's language decides), and :func:`say` picks the
text. Handlers' own answers (an echo, a service's reply) are theirs.
"""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from typing import Final

import msgspec

from dispatch.language.text import normalize

__all__ = [
    "DEFAULT",
    "LANGUAGES",
    "Messages",
    "detect",
    "in_language",
    "language_of",
    "say",
    "spoken",
    "status_word",
]

DEFAULT: Final = "en"


class Markers(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What shows a language in a message: marker words (folded), letters counted twice."""

    name: str
    words: frozenset[str] = frozenset()
    letters: str = ""


class Messages(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One language's file: its markers, its texts by key, its status words."""

    language: Markers
    texts: dict[str, str]
    statuses: dict[str, str] = {}


def _load() -> dict[str, Messages]:
    folder = resources.files("dispatch.language") / "messages"
    found = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            data = tomllib.loads(entry.read_text(encoding="utf-8"))
            found[entry.name.removesuffix(".toml")] = msgspec.convert(data, Messages)
    missing = {
        code: sorted(found[DEFAULT].texts.keys() - messages.texts.keys())
        for code, messages in found.items()
    }
    if any(missing.values()):  # checked once at import: a language lacking a text is a bug
        raise RuntimeError(f"texts missing from messages/<language>.toml: {missing}")
    return found


_MESSAGES: Final = _load()
LANGUAGES: Final = (DEFAULT, *sorted(code for code in _MESSAGES if code != DEFAULT))
"""The languages Switchboard speaks, the default first (the order of :func:`in_language`)."""
_WORDS = re.compile(r"[a-z]+")
_LETTERS: Final = {
    code: re.compile(f"[{re.escape(m.language.letters)}]", re.IGNORECASE)
    for code, m in _MESSAGES.items()
    if m.language.letters
}


def detect(text: str) -> str | None:
    """The language the text shows (most marker words, letters counting twice), else None."""
    words = _WORDS.findall(normalize(text))
    scores = {
        code: sum(word in m.language.words for word in words)
        + (2 * len(_LETTERS[code].findall(text)) if code in _LETTERS else 0)
        for code, m in _MESSAGES.items()
    }
    best = max(scores.values())
    leaders = [code for code, score in scores.items() if score == best]
    return leaders[0] if best > 0 and len(leaders) == 1 else None


def _messages(language: str | None) -> Messages:
    return _MESSAGES.get(language or DEFAULT) or _MESSAGES[DEFAULT]


def say(key: str, language: str | None, **values: object) -> str:
    """The text ``key`` in ``language`` (the default language's if it is not one we speak),
    filled with ``values``."""
    return _messages(language).texts[key].format(**values)


def status_word(status: str, language: str | None) -> str:
    """A status as people read it in ``language`` (English keeps the code: ``completed``)."""
    return _messages(language).statuses.get(status, status)


def spoken(text: str, raw: object, earlier: str | None = None) -> str | None:
    """The language of a message: what its text shows, else what its channel says of the
    sender (Telegram's ``language_code``), else ``earlier`` (the request it answers). A bot
    command ("/help") shows no language."""
    found = None if text.lstrip().startswith("/") else detect(text)
    if found is not None:
        return found
    if isinstance(raw, dict):
        sender = (
            (raw.get("message") or {}).get("from") if isinstance(raw.get("message"), dict) else None
        )
        code = sender.get("language_code") if isinstance(sender, dict) else None
        if isinstance(code, str) and code[:2].lower() in LANGUAGES:
            return code[:2].lower()
        hinted = raw.get("lang")
        if isinstance(hinted, str) and hinted[:2].lower() in LANGUAGES:
            return hinted[:2].lower()
    return earlier


def language_of(details: dict[str, object]) -> str | None:
    """The language an activity's request was written in (recorded with it)."""
    provenance = details.get("provenance")
    found = provenance.get("language") if isinstance(provenance, dict) else None
    return found if isinstance(found, str) else None


def in_language(text: str, language: str | None) -> str:
    """A text written in every language, ``"Which client? / ¿Qué cliente?"`` (in the order of
    :data:`LANGUAGES`), cut to ``language`` (the default one when it is not known), line by
    line; any other line as it is."""
    index = LANGUAGES.index(language) if language in LANGUAGES else 0
    lines = []
    for line in text.split("\n"):
        parts = line.split(" / ")
        lines.append(parts[index].strip() if len(parts) == len(LANGUAGES) else line)
    return "\n".join(lines)
