"""Typed settings: one frozen dataclass per concern, declared beside its owner, read once.

A group is a frozen dataclass whose fields are declared with :func:`setting`, each read from a
``SWITCHBOARD_*`` variable of the process environment or of a ``.env`` file in the working
directory (the environment wins). Groups live next to what they configure (the database in
``dispatch.record.db``, each channel in its own module, the HTTP edge in ``gateway.settings``); a
process reads the groups it needs through :func:`read_group`. A bad value raises
:class:`~dispatch.infra.errors.SettingsError` naming the variable, so a misconfigured process
fails at start and not on its first request.

:class:`CoreSettings` holds what belongs to no single part: the catalog, logging, the limits on
what a message may be, and the public URL providers call.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import msgspec
from dotenv import dotenv_values

from dispatch.infra.errors import SettingsError
from dispatch.infra.phone import is_region

__all__ = [
    "AT_LEAST_ONE",
    "NOT_NEGATIVE",
    "POSITIVE",
    "PREFIX",
    "AtLeast",
    "Check",
    "CoreSettings",
    "Environment",
    "Group",
    "HttpUrl",
    "Matches",
    "OneOf",
    "SettingView",
    "Source",
    "Within",
    "describe_group",
    "read_dotenv",
    "read_group",
    "setting",
]

PREFIX = "SWITCHBOARD_"
MASK = "********"

T = TypeVar("T")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


class Check:
    """What a setting's value must be; :meth:`problem` says what is wrong with one, or None."""

    def problem(self, value: Any) -> str | None:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class AtLeast(Check):
    """A number at least ``low`` (``open``: strictly above it)."""

    low: float
    open: bool = False

    def problem(self, value: Any) -> str | None:
        if value > self.low or (value == self.low and not self.open):
            return None
        if self.open and self.low == 0:
            return "must be positive"
        return f"must be {'above' if self.open else 'at least'} {_number(self.low)}"


@dataclasses.dataclass(frozen=True)
class Within(Check):
    """A number in ``[low, high]`` (``open_low``: strictly above ``low``)."""

    low: float
    high: float
    open_low: bool = False

    def problem(self, value: Any) -> str | None:
        above = value > self.low if self.open_low else value >= self.low
        if above and value <= self.high:
            return None
        low, high = _number(self.low), _number(self.high)
        return f"must be in {'(' if self.open_low else '['}{low}, {high}]"


@dataclasses.dataclass(frozen=True)
class Matches(Check):
    """Text matching ``pattern`` whole; ``what`` says what that is, for the message."""

    pattern: str
    what: str

    def problem(self, value: Any) -> str | None:
        return None if re.fullmatch(self.pattern, str(value)) else f"must be {self.what}"


@dataclasses.dataclass(frozen=True)
class OneOf(Check):
    """One of ``choices`` (compared without case)."""

    choices: tuple[str, ...]

    def problem(self, value: Any) -> str | None:
        if str(value).upper() in {c.upper() for c in self.choices}:
            return None
        return "must be one of " + ", ".join(self.choices)


@dataclasses.dataclass(frozen=True)
class HttpUrl(Check):
    """An ``http(s)://host...`` URL (``base``: no query either)."""

    base: bool = False

    def problem(self, value: Any) -> str | None:
        parsed = urlparse(str(value))
        if (
            parsed.scheme in {"http", "https"}
            and parsed.netloc
            and not (self.base and parsed.query)
        ):
            return None
        return (
            "must be an http(s) base URL such as https://host"
            if self.base
            else ("must be an http(s) URL")
        )


POSITIVE = AtLeast(0, open=True)
NOT_NEGATIVE = AtLeast(0)
AT_LEAST_ONE = AtLeast(1)


def setting(
    default: Any, env: str, doc: str, *, secret: bool = False, check: Check | None = None
) -> Any:
    """A settings field read from ``SWITCHBOARD_<env>``; secrets stay out of ``repr()``; a value
    (not None) that ``check`` finds a problem with is refused naming the variable."""
    return dataclasses.field(
        default=default,
        repr=not secret,
        metadata={"env": env, "doc": doc, "secret": secret, "check": check},
    )


class Group:
    """A settings group's base: each field's ``check`` runs when the group is built, and a
    group's own rules between fields in :meth:`validate`; every refusal names one variable."""

    def __post_init__(self) -> None:
        for f in _fields(type(self)):
            check: Check | None = f.metadata["check"]
            value = getattr(self, f.name)
            if check is not None and value is not None:
                problem = check.problem(value)
                if problem is not None:
                    raise SettingsError(PREFIX + f.metadata["env"], problem)
        self.validate()

    def validate(self) -> None:
        """Rules between fields (override); refuse with :class:`SettingsError`."""


class Source(enum.StrEnum):
    """Where a setting's value came from."""

    DEFAULT = "default"
    ENV = "env"
    DOTENV = ".env"


@dataclasses.dataclass(frozen=True)
class Environment:
    """The variables settings are read from, remembering which came from ``.env``."""

    values: Mapping[str, str] = dataclasses.field(default_factory=dict)
    from_dotenv: frozenset[str] = frozenset()

    @classmethod
    def read(
        cls, environ: Mapping[str, str] | None = None, dotenv: Path = Path(".env")
    ) -> Environment:
        """``.env`` overlaid by the process environment (or ``environ``)."""
        file = read_dotenv(dotenv)
        real = os.environ if environ is None else environ
        return cls({**file, **real}, frozenset(k for k in file if k not in real))

    def source(self, variable: str) -> Source:
        if variable not in self.values:
            return Source.DEFAULT
        return Source.DOTENV if variable in self.from_dotenv else Source.ENV


class SettingView(msgspec.Struct, frozen=True, kw_only=True):
    """One setting as ``switchboard settings`` and the admin API show it."""

    variable: str
    value: str | None
    """The value in effect (``None``: unset); a secret that is set shows as ``********``."""
    source: str
    """``default``, ``env`` or ``.env``."""
    default: str | None
    doc: str
    secret: bool = False


def _convert(raw: str, annotation: str, var: str) -> Any:  # noqa: PLR0911 - one per type
    text = raw.strip()
    if "None" in annotation and text == "":
        return None
    try:
        if annotation.startswith("bool"):
            lowered = text.lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(f"expected a boolean (true/false), got {raw!r}")
        if annotation.startswith("int"):
            return int(text)
        if annotation.startswith("float"):
            return float(text)
        if annotation.startswith("Path"):
            return Path(text).expanduser()
    except ValueError as exc:
        raise SettingsError(var, str(exc)) from None
    return text


def _fields(klass: type[Any]) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(klass) if "env" in f.metadata]


def read_group(klass: type[T], env: Environment) -> T:
    """Build settings group ``klass`` from ``env``; its own checks run in ``__post_init__``."""
    values: dict[str, Any] = {}
    for f in _fields(klass):
        var = PREFIX + f.metadata["env"]
        if var in env.values:
            values[f.name] = _convert(env.values[var], str(f.type), var)
    return klass(**values)


def _shown(value: Any) -> str | None:
    """The value as shown: a password inside a URL (``redis://:pw@host``) is masked."""
    if value is None:
        return None
    text = str(value)
    if "://" in text:
        parsed = urlparse(text)
        if parsed.password:
            host = parsed.netloc.rpartition("@")[2]
            user = parsed.username or ""
            return parsed._replace(netloc=f"{user}:{MASK}@{host}").geturl()
    return text


def describe_group(group: Any, env: Environment) -> list[SettingView]:
    """A view of every setting of ``group`` (an instance), secrets masked."""
    rows: list[SettingView] = []
    for f in _fields(type(group)):
        var = PREFIX + f.metadata["env"]
        value = getattr(group, f.name)
        secret = bool(f.metadata["secret"])
        rows.append(
            SettingView(
                variable=var,
                value=(MASK if value is not None else None) if secret else _shown(value),
                source=env.source(var).value,
                default=None if secret else _shown(f.default),
                doc=f.metadata["doc"],
                secret=secret,
            )
        )
    return rows


def read_dotenv(path: Path) -> dict[str, str]:
    """A ``.env`` file's ``KEY=VALUE`` pairs, read by python-dotenv (comments, quotes, ``export``,
    ``A=1 # note``); missing file → {}. A key without a value is refused, naming the file."""
    if not path.is_file():
        return {}
    values = dotenv_values(path, interpolate=False)
    empty = sorted(key for key, value in values.items() if value is None)
    if empty:
        raise SettingsError(str(path), f"{', '.join(empty)}: expected KEY=VALUE")
    return {key: value for key, value in values.items() if value is not None}


@dataclasses.dataclass(frozen=True)
class CoreSettings(Group):
    """What belongs to no single part: the catalog, logs, message limits, the public URL."""

    catalog_path: Path | None = setting(
        None,
        "CATALOG",
        "Path of the catalog file (TOML or YAML). Default: the bundled catalog.",
    )
    log_level: str = setting(
        "INFO",
        "LOG_LEVEL",
        "DEBUG, INFO, WARNING or ERROR.",
        check=OneOf(("DEBUG", "INFO", "WARNING", "ERROR")),
    )
    log_format: str = setting(
        "console",
        "LOG_FORMAT",
        "console: readable lines; json: one JSON object a line (for a log collector).",
        check=OneOf(("console", "json")),
    )
    clarify_timeout_s: float = setting(
        600.0,
        "CLARIFY_TIMEOUT_S",
        "How long a question the gateway asked (a missing detail, which of two actions was "
        "meant) waits for its answer in the conversation.",
        check=POSITIVE,
    )
    public_url: str | None = setting(
        None,
        "PUBLIC_URL",
        "The gateway's public base URL as providers call it (e.g. https://bot.example.com). "
        "Webhook signatures are checked against it, so they hold behind a TLS-terminating proxy.",
        check=HttpUrl(base=True),
    )
    max_body_bytes: int = setting(
        65536,
        "MAX_BODY_BYTES",
        "Largest accepted request body or WebSocket frame, in bytes.",
        check=Within(256, 100 * 1024 * 1024),
    )
    max_text_chars: int = setting(
        4096, "MAX_TEXT_CHARS", "Longest accepted message text.", check=AT_LEAST_ONE
    )
    default_region: str | None = setting(
        None,
        "DEFAULT_REGION",
        "Region (ES, US, MX...) a phone number typed without its country code is read in, as "
        'in a catalog\'s phone slots ("612 345 678" with ES is +34612345678). Unset: such a '
        "number is refused and its country code asked for.",
    )

    def validate(self) -> None:
        if self.default_region is not None and not is_region(self.default_region):
            raise SettingsError(PREFIX + "DEFAULT_REGION", "must be a region code such as ES")
