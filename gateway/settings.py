"""Typed settings, one frozen dataclass per concern, read once at start-up.

Every field is read from a ``SWITCHBOARD_*`` environment variable (or a ``.env`` file in the
working directory; the real environment wins). A bad value raises :class:`SettingsError` naming
the variable, so a misconfigured gateway fails at start and not on its first request.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from gateway.errors import SettingsError

__all__ = [
    "DatabaseSettings",
    "HttpSettings",
    "LlmSettings",
    "QueueSettings",
    "Settings",
    "TelegramSettings",
    "TwilioSettings",
    "WorkerSettings",
    "get_settings",
    "read_dotenv",
]

PREFIX = "SWITCHBOARD_"
DEFAULT_SQLITE_URL = "sqlite+aiosqlite:///./switchboard.db"

T = TypeVar("T")


def _field(default: Any, env: str, doc: str, *, secret: bool = False) -> Any:
    # Secrets stay out of repr(), so printing or logging settings never shows them.
    return dataclasses.field(
        default=default, repr=not secret, metadata={"env": env, "doc": doc, "secret": secret}
    )


@dataclasses.dataclass(frozen=True)
class DatabaseSettings:
    """Where the record lives."""

    url: str = _field(
        DEFAULT_SQLITE_URL,
        "DATABASE_URL",
        "SQLAlchemy URL: postgresql+asyncpg://... in production; default: SQLite file in the "
        "working directory (embedded mode).",
    )
    auto_migrate: bool | None = _field(
        None,
        "AUTO_MIGRATE",
        "Apply migrations when the gateway starts. Default: yes on SQLite, no on PostgreSQL "
        "(run `switchboard migrate`).",
    )
    pool_size: int = _field(10, "DATABASE_POOL_SIZE", "Connections per process (PostgreSQL).")
    echo: bool = _field(False, "DATABASE_ECHO", "Log every SQL statement.")

    def __post_init__(self) -> None:
        scheme = urlparse(self.url).scheme
        if scheme not in {"sqlite+aiosqlite", "postgresql+asyncpg"}:
            raise SettingsError(
                "SWITCHBOARD_DATABASE_URL",
                f"scheme {scheme!r} is not supported; use sqlite+aiosqlite:/// or "
                "postgresql+asyncpg://",
            )
        if self.pool_size < 1:
            raise SettingsError("SWITCHBOARD_DATABASE_POOL_SIZE", "must be at least 1")

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    @property
    def should_auto_migrate(self) -> bool:
        return self.is_sqlite if self.auto_migrate is None else self.auto_migrate


@dataclasses.dataclass(frozen=True)
class QueueSettings:
    """The job transport. Redis is only a transport: the database is the record."""

    redis_url: str | None = _field(
        None, "REDIS_URL", "redis://host:port/db. Unset: jobs run in-process (embedded mode)."
    )
    prefix: str = _field(
        "switchboard",
        "REDIS_PREFIX",
        "Prefix of the queue name, job ids and pub/sub channels, so several gateways can share "
        "one Redis.",
    )

    def __post_init__(self) -> None:
        if self.redis_url is not None and urlparse(self.redis_url).scheme not in {
            "redis",
            "rediss",
            "unix",
        }:
            raise SettingsError("SWITCHBOARD_REDIS_URL", "must start with redis:// or rediss://")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.prefix):
            raise SettingsError(
                "SWITCHBOARD_REDIS_PREFIX", "1-64 characters of letters, digits, _ . -"
            )


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """How jobs run, in the arq worker or in-process."""

    max_jobs: int = _field(32, "WORKER_MAX_JOBS", "Jobs one worker runs at a time.")
    poll_delay_s: float = _field(
        0.05,
        "WORKER_POLL_DELAY_S",
        "Seconds between queue polls (arq's default of 0.5 s adds up to half a second per hop).",
    )
    lease_grace_s: float = _field(
        30.0,
        "WORKER_LEASE_GRACE_S",
        "Seconds past an action's timeout after which an in-progress activity is presumed "
        "abandoned (its worker died) and is run again.",
    )
    recover_every_s: float = _field(
        10.0,
        "WORKER_RECOVER_EVERY_S",
        "How often stored-but-unfinished messages and activities are re-driven from the database.",
    )
    recover_after_s: float = _field(
        5.0,
        "WORKER_RECOVER_AFTER_S",
        "Age a stored message or queued activity must reach before recovery re-drives it.",
    )

    def __post_init__(self) -> None:
        if self.max_jobs < 1:
            raise SettingsError("SWITCHBOARD_WORKER_MAX_JOBS", "must be at least 1")
        if not 0 < self.poll_delay_s <= 10:
            raise SettingsError("SWITCHBOARD_WORKER_POLL_DELAY_S", "must be in (0, 10]")
        for name, value in (
            ("WORKER_LEASE_GRACE_S", self.lease_grace_s),
            ("WORKER_RECOVER_EVERY_S", self.recover_every_s),
            ("WORKER_RECOVER_AFTER_S", self.recover_after_s),
        ):
            if value <= 0:
                raise SettingsError(PREFIX + name, "must be positive")


@dataclasses.dataclass(frozen=True)
class HttpSettings:
    """The HTTP edge."""

    host: str = _field("127.0.0.1", "HOST", "Interface `switchboard serve` binds.")
    port: int = _field(8000, "PORT", "Port `switchboard serve` binds.")
    max_body_bytes: int = _field(
        65536, "MAX_BODY_BYTES", "Largest accepted request body or WebSocket frame, in bytes."
    )
    max_text_chars: int = _field(4096, "MAX_TEXT_CHARS", "Longest accepted message text.")
    public_url: str | None = _field(
        None,
        "PUBLIC_URL",
        "The gateway's public base URL as providers call it (e.g. https://bot.example.com). "
        "Webhook signatures are checked against it, so they hold behind a TLS-terminating proxy.",
    )
    admin_token: str | None = _field(
        None,
        "ADMIN_TOKEN",
        "An admin bearer token for the HTTP API from the environment, to bootstrap real ones "
        "(`switchboard tokens create`). At least 24 characters.",
        secret=True,
    )

    def __post_init__(self) -> None:
        if self.admin_token is not None and len(self.admin_token) < 24:
            raise SettingsError("SWITCHBOARD_ADMIN_TOKEN", "must be at least 24 characters")
        if self.public_url is not None:
            parsed = urlparse(self.public_url)
            if parsed.scheme not in {"http", "https"} or not parsed.netloc or parsed.query:
                raise SettingsError(
                    "SWITCHBOARD_PUBLIC_URL", "must be an http(s) base URL such as https://host"
                )
        if not 0 < self.port < 65536:
            raise SettingsError("SWITCHBOARD_PORT", "must be 1-65535")
        if not 256 <= self.max_body_bytes <= 100 * 1024 * 1024:
            raise SettingsError("SWITCHBOARD_MAX_BODY_BYTES", "must be between 256 and 104857600")
        if self.max_text_chars < 1:
            raise SettingsError("SWITCHBOARD_MAX_TEXT_CHARS", "must be at least 1")


E164 = re.compile(r"\+[1-9]\d{6,14}")


@dataclasses.dataclass(frozen=True)
class TwilioSettings:
    """WhatsApp through Twilio. Enabled when the account SID is set."""

    account_sid: str | None = _field(None, "TWILIO_ACCOUNT_SID", "Twilio account SID (AC...).")
    auth_token: str | None = _field(
        None,
        "TWILIO_AUTH_TOKEN",
        "Twilio auth token: signs webhooks, authenticates API calls.",
        secret=True,
    )
    whatsapp_from: str | None = _field(
        None,
        "TWILIO_WHATSAPP_FROM",
        "Sender for replies, whatsapp:+E164 (e.g. the sandbox number).",
    )
    messaging_service_sid: str | None = _field(
        None,
        "TWILIO_MESSAGING_SERVICE_SID",
        "Send replies through this Messaging Service (MG...) instead of a single sender.",
    )
    api_url: str = _field(
        "https://api.twilio.com",
        "TWILIO_API_URL",
        "Base URL of Twilio's REST API; calls go to {url}/2010-04-01/Accounts/...",
    )
    rate_per_s: float = _field(
        10.0, "TWILIO_RATE_PER_S", "Most messages per second sent from one sender (all workers)."
    )
    max_retries: int = _field(
        4, "TWILIO_MAX_RETRIES", "Retries of a send refused with 429 or 5xx (4xx is final)."
    )
    backoff_s: float = _field(
        0.5, "TWILIO_BACKOFF_S", "First retry delay; doubles each retry, with jitter."
    )
    timeout_s: float = _field(10.0, "TWILIO_TIMEOUT_S", "Timeout of one API call.")

    @property
    def enabled(self) -> bool:
        return self.account_sid is not None

    def __post_init__(self) -> None:
        if not self.enabled:
            return
        if not re.fullmatch(r"AC[0-9a-fA-F]{32}", self.account_sid or ""):
            raise SettingsError("SWITCHBOARD_TWILIO_ACCOUNT_SID", "must be AC followed by 32 hex")
        if not self.auth_token:
            raise SettingsError("SWITCHBOARD_TWILIO_AUTH_TOKEN", "is required with an account SID")
        if self.whatsapp_from is None and self.messaging_service_sid is None:
            raise SettingsError(
                "SWITCHBOARD_TWILIO_WHATSAPP_FROM",
                "set it (or SWITCHBOARD_TWILIO_MESSAGING_SERVICE_SID) to send replies",
            )
        if self.whatsapp_from is not None and not (
            self.whatsapp_from.startswith("whatsapp:")
            and E164.fullmatch(self.whatsapp_from.removeprefix("whatsapp:"))
        ):
            raise SettingsError("SWITCHBOARD_TWILIO_WHATSAPP_FROM", "must be whatsapp:+E164")
        if self.messaging_service_sid is not None and not re.fullmatch(
            r"MG[0-9a-fA-F]{32}", self.messaging_service_sid
        ):
            raise SettingsError(
                "SWITCHBOARD_TWILIO_MESSAGING_SERVICE_SID", "must be MG followed by 32 hex"
            )
        if urlparse(self.api_url).scheme not in {"http", "https"}:
            raise SettingsError("SWITCHBOARD_TWILIO_API_URL", "must be an http(s) URL")
        if self.rate_per_s <= 0:
            raise SettingsError("SWITCHBOARD_TWILIO_RATE_PER_S", "must be positive")
        if self.max_retries < 0 or self.backoff_s < 0 or self.timeout_s <= 0:
            raise SettingsError("SWITCHBOARD_TWILIO_MAX_RETRIES", "retries, backoff, timeout >= 0")


@dataclasses.dataclass(frozen=True)
class TelegramSettings:
    """Telegram Bot API. Enabled when the bot token is set."""

    bot_token: str | None = _field(
        None, "TELEGRAM_BOT_TOKEN", "Bot token from @BotFather.", secret=True
    )
    secret_token: str | None = _field(
        None,
        "TELEGRAM_SECRET_TOKEN",
        "Secret Telegram sends in X-Telegram-Bot-Api-Secret-Token (1-256 of A-Z a-z 0-9 _ -). "
        "Unset: derived from the bot token, so set-webhook and the gateway always agree on one.",
        secret=True,
    )
    api_url: str = _field(
        "https://api.telegram.org",
        "TELEGRAM_API_URL",
        "Base URL of the Bot API; calls go to {url}/bot<token>/<method>.",
    )
    chat_rate_per_s: float = _field(
        1.0, "TELEGRAM_CHAT_RATE_PER_S", "Most messages per second to one chat."
    )
    global_rate_per_s: float = _field(
        30.0, "TELEGRAM_GLOBAL_RATE_PER_S", "Most messages per second overall (all workers)."
    )
    max_retries: int = _field(
        3, "TELEGRAM_MAX_RETRIES", "Retries of a send refused with 429 (after retry_after) or 5xx."
    )
    max_retry_after_s: float = _field(
        60.0, "TELEGRAM_MAX_RETRY_AFTER_S", "Longest retry_after the sender waits before giving up."
    )
    callback_ttl_s: float = _field(
        86400.0, "TELEGRAM_CALLBACK_TTL_S", "How long an inline button stays valid."
    )

    @property
    def enabled(self) -> bool:
        return self.bot_token is not None

    @property
    def webhook_secret(self) -> str:
        """The configured secret, or one derived from the bot token (stable, URL-safe)."""
        if self.secret_token is not None:
            return self.secret_token
        assert self.bot_token is not None
        digest = hmac.new(self.bot_token.encode(), b"switchboard-webhook", hashlib.sha256)
        return base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")

    def __post_init__(self) -> None:
        if self.secret_token is not None and not re.fullmatch(
            r"[A-Za-z0-9_-]{1,256}", self.secret_token
        ):
            raise SettingsError(
                "SWITCHBOARD_TELEGRAM_SECRET_TOKEN",
                "Telegram accepts 1-256 characters of A-Z a-z 0-9 _ - only",
            )
        if not self.enabled:
            return
        if not re.fullmatch(r"\d+:[A-Za-z0-9_-]{30,}", self.bot_token or ""):
            raise SettingsError(
                "SWITCHBOARD_TELEGRAM_BOT_TOKEN", "does not look like a bot token (123456:ABC...)"
            )
        if urlparse(self.api_url).scheme not in {"http", "https"}:
            raise SettingsError("SWITCHBOARD_TELEGRAM_API_URL", "must be an http(s) URL")
        if self.chat_rate_per_s <= 0 or self.global_rate_per_s <= 0:
            raise SettingsError("SWITCHBOARD_TELEGRAM_CHAT_RATE_PER_S", "rates must be positive")
        if self.max_retries < 0 or self.max_retry_after_s < 0 or self.callback_ttl_s <= 0:
            raise SettingsError("SWITCHBOARD_TELEGRAM_MAX_RETRIES", "must not be negative")


@dataclasses.dataclass(frozen=True)
class LlmSettings:
    """The LLM fallback for text no rule understood. Enabled when the base URL is set."""

    base_url: str | None = _field(
        None,
        "LLM_BASE_URL",
        "OpenAI-compatible base URL (https://api.openai.com/v1, http://localhost:11434/v1 for "
        "Ollama, ...); requests go to {base}/chat/completions.",
    )
    model: str = _field("gpt-4o-mini", "LLM_MODEL", "Model name sent with each request.")
    api_key: str | None = _field(
        None, "LLM_API_KEY", "Bearer token, if the server wants one.", secret=True
    )
    timeout_s: float = _field(8.0, "LLM_TIMEOUT_S", "Timeout of one LLM request.")
    max_retries: int = _field(1, "LLM_MAX_RETRIES", "Retries after a timeout, 429 or 5xx.")
    confidence_floor: float = _field(
        0.6, "LLM_CONFIDENCE_FLOOR", "Proposals the model rates below this are not acted on."
    )
    history_turns: int = _field(
        6, "LLM_HISTORY_TURNS", "Earlier messages of the conversation sent for context."
    )
    breaker_failures: int = _field(
        3, "LLM_BREAKER_FAILURES", "Consecutive failures that open the circuit breaker."
    )
    breaker_cooldown_s: float = _field(
        30.0, "LLM_BREAKER_COOLDOWN_S", "How long an open breaker skips the LLM entirely."
    )

    @property
    def enabled(self) -> bool:
        return self.base_url is not None

    def __post_init__(self) -> None:
        if self.base_url is not None and urlparse(self.base_url).scheme not in {"http", "https"}:
            raise SettingsError("SWITCHBOARD_LLM_BASE_URL", "must be an http(s) URL")
        if self.timeout_s <= 0 or self.max_retries < 0 or self.history_turns < 0:
            raise SettingsError("SWITCHBOARD_LLM_TIMEOUT_S", "timeouts positive, counts >= 0")
        if not 0 <= self.confidence_floor <= 1:
            raise SettingsError("SWITCHBOARD_LLM_CONFIDENCE_FLOOR", "must be between 0 and 1")
        if self.breaker_failures < 1 or self.breaker_cooldown_s <= 0:
            raise SettingsError("SWITCHBOARD_LLM_BREAKER_FAILURES", "must be positive")


@dataclasses.dataclass(frozen=True)
class Settings:
    """All settings; build with :meth:`from_env` or :func:`get_settings`."""

    database: DatabaseSettings = dataclasses.field(default_factory=DatabaseSettings)
    queue: QueueSettings = dataclasses.field(default_factory=QueueSettings)
    worker: WorkerSettings = dataclasses.field(default_factory=WorkerSettings)
    http: HttpSettings = dataclasses.field(default_factory=HttpSettings)
    twilio: TwilioSettings = dataclasses.field(default_factory=TwilioSettings)
    telegram: TelegramSettings = dataclasses.field(default_factory=TelegramSettings)
    llm: LlmSettings = dataclasses.field(default_factory=LlmSettings)
    catalog_path: Path | None = _field(
        None, "CATALOG", "Path of the catalog file (TOML or YAML). Default: the bundled catalog."
    )
    log_level: str = _field("INFO", "LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR.")
    clarify_timeout_s: float = _field(
        600.0,
        "CLARIFY_TIMEOUT_S",
        "How long a question the gateway asked (a missing detail, which of two actions was "
        "meant) waits for its answer in the conversation.",
    )

    def __post_init__(self) -> None:
        if self.clarify_timeout_s <= 0:
            raise SettingsError("SWITCHBOARD_CLARIFY_TIMEOUT_S", "must be positive")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise SettingsError("SWITCHBOARD_LOG_LEVEL", "must be DEBUG, INFO, WARNING or ERROR")
        if self.twilio.enabled and self.http.public_url is None:
            raise SettingsError(
                "SWITCHBOARD_PUBLIC_URL",
                "is required with Twilio: webhook signatures are checked against it",
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (default: ``.env`` overlaid by ``os.environ``)."""
        if env is None:
            env = {**read_dotenv(Path(".env")), **os.environ}
        groups = {name: _build(klass, env) for name, klass in _GROUPS.items()}
        top = _read_fields(cls, env, skip=set(_GROUPS))
        return cls(**groups, **top)

    def describe(self) -> list[tuple[str, str, str]]:
        """(variable, default, doc) for every setting, for the README and ``--help``."""
        rows: list[tuple[str, str, str]] = []
        for klass in (*_GROUPS.values(), Settings):
            for f in dataclasses.fields(klass):
                if "env" in f.metadata:
                    rows.append((PREFIX + f.metadata["env"], repr(f.default), f.metadata["doc"]))
        return rows


_GROUPS: dict[str, type[Any]] = {
    "database": DatabaseSettings,
    "queue": QueueSettings,
    "worker": WorkerSettings,
    "http": HttpSettings,
    "twilio": TwilioSettings,
    "telegram": TelegramSettings,
    "llm": LlmSettings,
}


def _convert(raw: str, annotation: str, var: str) -> Any:  # noqa: PLR0911 - one per type
    text = raw.strip()
    optional = "None" in annotation
    if optional and text == "":
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


def _read_fields(klass: type[Any], env: Mapping[str, str], skip: set[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for f in dataclasses.fields(klass):
        if f.name in skip or "env" not in f.metadata:
            continue
        var = PREFIX + f.metadata["env"]
        if var in env:
            values[f.name] = _convert(env[var], str(f.type), var)
    return values


def _build(klass: type[T], env: Mapping[str, str]) -> T:
    return klass(**_read_fields(klass, env, skip=set()))


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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings.from_env()
