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
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import msgspec

from dispatch.infra.errors import SettingsError

__all__ = [
    "PREFIX",
    "CoreSettings",
    "Environment",
    "SettingView",
    "Source",
    "describe_group",
    "read_dotenv",
    "read_group",
    "setting",
]

PREFIX = "SWITCHBOARD_"
MASK = "********"

T = TypeVar("T")


def setting(default: Any, env: str, doc: str, *, secret: bool = False) -> Any:
    """A settings field read from ``SWITCHBOARD_<env>``; secrets stay out of ``repr()``."""
    return dataclasses.field(
        default=default, repr=not secret, metadata={"env": env, "doc": doc, "secret": secret}
    )


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
    """Parse a ``KEY=VALUE`` file (comments, blank lines, optional quotes); missing file → {}."""
    if not path.is_file():
        return {}
    values: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.removeprefix("export ").partition("=")
        if not sep:
            raise SettingsError(str(path), f"line {lineno}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


@dataclasses.dataclass(frozen=True)
class CoreSettings:
    """What belongs to no single part: the catalog, logs, message limits, the public URL."""

    catalog_path: Path | None = setting(
        None,
        "CATALOG",
        "Path of the catalog file (TOML or YAML). Default: the bundled catalog.",
    )
    log_level: str = setting("INFO", "LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR.")
    clarify_timeout_s: float = setting(
        600.0,
        "CLARIFY_TIMEOUT_S",
        "How long a question the gateway asked (a missing detail, which of two actions was "
        "meant) waits for its answer in the conversation.",
    )
    public_url: str | None = setting(
        None,
        "PUBLIC_URL",
        "The gateway's public base URL as providers call it (e.g. https://bot.example.com). "
        "Webhook signatures are checked against it, so they hold behind a TLS-terminating proxy.",
    )
    max_body_bytes: int = setting(
        65536, "MAX_BODY_BYTES", "Largest accepted request body or WebSocket frame, in bytes."
    )
    max_text_chars: int = setting(4096, "MAX_TEXT_CHARS", "Longest accepted message text.")

    def __post_init__(self) -> None:
        if self.clarify_timeout_s <= 0:
            raise SettingsError(PREFIX + "CLARIFY_TIMEOUT_S", "must be positive")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise SettingsError(PREFIX + "LOG_LEVEL", "must be DEBUG, INFO, WARNING or ERROR")
        if self.public_url is not None:
            parsed = urlparse(self.public_url)
            if parsed.scheme not in {"http", "https"} or not parsed.netloc or parsed.query:
                raise SettingsError(
                    PREFIX + "PUBLIC_URL", "must be an http(s) base URL such as https://host"
                )
        if not 256 <= self.max_body_bytes <= 100 * 1024 * 1024:
            raise SettingsError(PREFIX + "MAX_BODY_BYTES", "must be between 256 and 104857600")
        if self.max_text_chars < 1:
            raise SettingsError(PREFIX + "MAX_TEXT_CHARS", "must be at least 1")
