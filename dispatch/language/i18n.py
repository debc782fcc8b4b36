"""The gateway's own words in the user's language: English and Spanish.

What Switchboard writes itself (help, status, cancelling, failures, workflow news) is said in
the language the user writes in: :func:`detect` reads it off a message (a few marker words and
Spanish letters; a message with no clue, "12" or "ok", says nothing and the conversation's
earlier messages decide), and :func:`say` picks the text. Handlers' own answers (an echo, a
service's reply) are theirs.
"""

from __future__ import annotations

import re
from typing import Final

from dispatch.language.text import normalize

__all__ = [
    "DEFAULT",
    "LANGUAGES",
    "detect",
    "in_language",
    "language_of",
    "say",
    "say_each",
    "spoken",
    "status_word",
]

LANGUAGES: Final = ("en", "es")
DEFAULT: Final = "en"

_SPANISH_LETTERS = re.compile(r"[ñ¿¡áéíóú]", re.IGNORECASE)
_WORDS = re.compile(r"[a-z]+")
_ES = frozenset(
    [
        "hola",
        "ayuda",
        "ayudame",
        "quiero",
        "quisiera",
        "necesito",
        "puedes",
        "puedo",
        "gracias",
        "favor",
        "estado",
        "cancelar",
        "cancela",
        "anula",
        "solicitud",
        "solicitudes",
        "pedido",
        "factura",
        "facturas",
        "que",
        "como",
        "cual",
        "cuando",
        "donde",
        "mi",
        "mis",
        "tu",
        "tus",
        "el",
        "la",
        "los",
        "las",
        "una",
        "unos",
        "del",
        "para",
        "con",
        "esta",
        "este",
        "buenos",
        "buenas",
        "dias",
        "tardes",
        "noches",
        "repite",
        "repetir",
        "dime",
        "alta",
        "humano",
        "persona",
        "reembolso",
        "crear",
        "crea",
        "haz",
        "hacer",
        "ver",
        "cliente",
        "clientes",
        "hasta",
        "luego",
        "adios",
        "vale",
        "claro",
    ]
)
_EN = frozenset(
    [
        "hello",
        "hi",
        "hey",
        "help",
        "please",
        "thanks",
        "thank",
        "status",
        "cancel",
        "request",
        "requests",
        "invoice",
        "invoices",
        "what",
        "how",
        "which",
        "when",
        "where",
        "my",
        "your",
        "the",
        "an",
        "want",
        "need",
        "can",
        "could",
        "would",
        "create",
        "make",
        "show",
        "repeat",
        "say",
        "echo",
        "onboard",
        "customer",
        "refund",
        "ticket",
        "yes",
        "good",
        "morning",
        "evening",
        "bye",
        "of",
        "for",
        "with",
        "is",
        "are",
    ]
)


def detect(text: str) -> str | None:
    """``es`` or ``en`` when the text shows it, else None."""
    folded = normalize(text)
    words = _WORDS.findall(folded)
    spanish = sum(word in _ES for word in words) + 2 * len(_SPANISH_LETTERS.findall(text))
    english = sum(word in _EN for word in words)
    if spanish > english:
        return "es"
    if english > spanish:
        return "en"
    return None


_TEXTS: Final[dict[str, dict[str, str]]] = {
    "help.intro": {"en": "You can ask:", "es": "Puedes pedir:"},
    "help.unknown": {
        "en": "I didn't understand that. You can ask:",
        "es": "No lo he entendido. Puedes pedir:",
    },
    "help.example": {"en": ' (e.g. "{example}")', "es": ' (p. ej. "{example}")'},
    "status.line": {
        "en": "Request #{id} ({what}): {status}",
        "es": "Solicitud #{id} ({what}): {status}",
    },
    "status.run": {
        "en": "Run #{id} of {workflow}: {status} ({steps})",
        "es": "Ejecución #{id} de {workflow}: {status} ({steps})",
    },
    "not_found": {
        "en": "I can't find a request #{id} of yours.",
        "es": "No encuentro ninguna solicitud #{id} tuya.",
    },
    "cancel.done": {"en": "Request #{id} cancelled.", "es": "Solicitud #{id} cancelada."},
    "cancel.late": {
        "en": "Request #{id} is {status}; only a request that has not started can be cancelled.",
        "es": "La solicitud #{id} está {status}; solo se puede cancelar una que no haya empezado.",
    },
    "cancel.operator": {
        "en": "Request #{id} was cancelled by an operator.",
        "es": "Un operador canceló la solicitud #{id}.",
    },
    "done": {"en": "Request #{id} done.", "es": "Solicitud #{id} hecha."},
    "failed.forbidden": {
        "en": "Sorry, you are not allowed to do that (request #{id}).",
        "es": "Lo siento, no puedes hacer eso (solicitud #{id}).",
    },
    "failed.timeout": {
        "en": "Sorry, request #{id} took too long and was stopped.",
        "es": "Lo siento, la solicitud #{id} tardó demasiado y se detuvo.",
    },
    "failed.no_approver": {
        "en": "Sorry, request #{id} needs an approval that no one can give right now.",
        "es": "Lo siento, la solicitud #{id} necesita una aprobación que ahora nadie puede dar.",
    },
    "failed.dispatch_failed": {
        "en": "Sorry, I could not make sense of your message (request #{id}).",
        "es": "Lo siento, no he podido entender tu mensaje (solicitud #{id}).",
    },
    "failed": {
        "en": "Sorry, request #{id} could not be completed.",
        "es": "Lo siento, la solicitud #{id} no se pudo completar.",
    },
    "reason.forbidden": {"en": "not allowed", "es": "no permitida"},
    "reason.timeout": {"en": "took too long", "es": "tardó demasiado"},
    "reason.no_approver": {"en": "no approver", "es": "sin aprobador"},
    "reason.dispatch_failed": {"en": "not understood", "es": "no entendida"},
    "reason": {"en": "could not be completed", "es": "no se pudo completar"},
    "workflow.started": {
        "en": "Started {workflow} as run #{id}: {count} steps ({steps}). I'll tell you when it "
        'ends; "status {id}" shows how it goes.',
        "es": "Empezada {workflow} como ejecución #{id}: {count} pasos ({steps}). Te aviso "
        'cuando termine; "estado {id}" muestra cómo va.',
    },
    "human.asked": {
        "en": "I've asked a person to join; they will answer here.",
        "es": "He pedido que te atienda una persona; te contestará aquí.",
    },
    "human.nobody": {
        "en": "No one can join right now; I'm still here to help.",
        "es": "Ahora no puede atenderte nadie; sigo aquí para ayudarte.",
    },
    "human.call": {
        "en": "{who} asks for a person in conversation #{conversation} ({channel}). "
        "Take it over in the portal: /portal",
        "es": "{who} pide hablar con una persona en la conversación #{conversation} "
        "({channel}). Atiéndela desde el portal: /portal",
    },
    "approval.asked": {
        "en": "Request #{id} ({what}) needs approval{needed}; I've asked. You'll hear back here.",
        "es": "La solicitud #{id} ({what}) necesita aprobación{needed}; ya la he pedido. Te "
        "aviso aquí.",
    },
    "approval.quorum": {"en": " ({quorum} approvals needed)", "es": " (hacen falta {quorum})"},
    "approval.rejected": {
        "en": "Request #{id} was rejected by {who}.",
        "es": "{who} rechazó la solicitud #{id}.",
    },
    "approval.approved": {
        "en": "Request #{id} was approved by {who}; {then}",
        "es": "{who} aprobó la solicitud #{id}; {then}",
    },
    "approval.runs": {"en": "running it now.", "es": "se ejecuta ahora."},
    "approval.waits_run": {
        "en": "it runs once someone sends RUN {id}.",
        "es": "se ejecutará cuando alguien envíe RUN {id}.",
    },
    "approval.expired": {
        "en": "Request #{id} expired: no decision was made in time, so nothing was done.",
        "es": "La solicitud #{id} caducó: nadie decidió a tiempo, así que no se hizo nada.",
    },
    "slow_down": {
        "en": "You're sending messages faster than I can read them; I'll take the next ones in "
        "a moment.",
        "es": "Vas demasiado rápido; leeré los siguientes mensajes en un momento.",
    },
    "takeover.start": {
        "en": "A person is taking over this conversation.",
        "es": "Una persona atiende ahora esta conversación.",
    },
    "takeover.end": {
        "en": "You are talking to the assistant again.",
        "es": "Vuelves a hablar con el asistente.",
    },
    "workflow.ended": {
        "en": "Run #{id} of {workflow} {status}",
        "es": "Ejecución #{id} de {workflow}: {status}",
    },
    "workflow.at_step": {"en": " at step {step}: {message}", "es": " en el paso {step}: {message}"},
}

_STATUSES: Final[dict[str, str]] = {
    "pending": "pendiente",
    "awaiting_approval": "esperando aprobación",
    "queued": "en cola",
    "in_progress": "en curso",
    "running": "en curso",
    "completed": "completada",
    "failed": "fallida",
    "cancelled": "cancelada",
    "rejected": "rechazada",
    "expired": "caducada",
    "waiting": "esperando",
    "skipped": "omitida",
}


def say(key: str, language: str | None, **values: object) -> str:
    """The text ``key`` in ``language`` (English if it has none), filled with ``values``."""
    texts = _TEXTS[key]
    return texts.get(language or DEFAULT, texts[DEFAULT]).format(**values)


def say_each(key: str, language: str | None = None, **values: object) -> str:
    """``key`` in ``language``, or in every language (``"… / …"``) when it is not known."""
    if language is not None:
        return say(key, language, **values)
    return " / ".join(say(key, each, **values) for each in LANGUAGES)


def status_word(status: str, language: str | None) -> str:
    """A status as people read it (English keeps the code: ``completed``)."""
    return _STATUSES.get(status, status) if language == "es" else status


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
    """A catalog text written in both languages, ``"Which client? / ¿Qué cliente?"`` (in the
    order of :data:`LANGUAGES`), cut to the one asked for, line by line; any other line as it
    is."""
    if language not in LANGUAGES:
        return text
    index = LANGUAGES.index(language)
    lines = []
    for line in text.split("\n"):
        parts = line.split(" / ")
        lines.append(parts[index].strip() if len(parts) == len(LANGUAGES) else line)
    return "\n".join(lines)
