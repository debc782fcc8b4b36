from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from channels.registry import settings_types
from channels.telegram import TelegramSettings
from channels.twilio import TwilioSettings
from dispatch.infra.config import (
    PREFIX,
    AtLeast,
    Check,
    Environment,
    HttpUrl,
    Matches,
    OneOf,
    Within,
    read_dotenv,
)
from dispatch.infra.errors import SettingsError
from dispatch.record.db import DEFAULT_SQLITE_URL
from gateway.settings import Settings


def test_defaults_are_the_embedded_mode() -> None:
    settings = Settings.from_env({})
    assert settings.database.url == DEFAULT_SQLITE_URL
    assert settings.database.should_auto_migrate
    assert settings.queue.redis_url is None
    assert settings.core.max_body_bytes == 65536
    assert settings.core.catalog_path is None


def test_values_are_typed() -> None:
    settings = Settings.from_env(
        {
            "SWITCHBOARD_DATABASE_URL": "postgresql+asyncpg://u@h/db",
            "SWITCHBOARD_REDIS_URL": "redis://127.0.0.1:6379/3",
            "SWITCHBOARD_MAX_BODY_BYTES": "1024",
            "SWITCHBOARD_WORKER_POLL_DELAY_S": "0.2",
            "SWITCHBOARD_AUTO_MIGRATE": "yes",
            "SWITCHBOARD_CATALOG": "/tmp/c.toml",
        }
    )
    assert settings.core.max_body_bytes == 1024
    assert settings.worker.poll_delay_s == 0.2
    assert settings.database.should_auto_migrate is True
    assert settings.core.catalog_path == Path("/tmp/c.toml")
    assert not settings.database.is_sqlite


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SWITCHBOARD_MAX_BODY_BYTES", "lots", "invalid literal"),
        ("SWITCHBOARD_MAX_BODY_BYTES", "10", "[256, 104857600]"),
        ("SWITCHBOARD_DATABASE_URL", "mysql://x/y", "not supported"),
        ("SWITCHBOARD_REDIS_URL", "http://x", "redis://"),
        ("SWITCHBOARD_AUTO_MIGRATE", "maybe", "boolean"),
        ("SWITCHBOARD_WORKER_MAX_JOBS", "0", "at least 1"),
        ("SWITCHBOARD_REDIS_PREFIX", "a b", "letters"),
        ("SWITCHBOARD_LOG_LEVEL", "LOUD", "DEBUG"),
        ("SWITCHBOARD_TELEGRAM_SECRET_TOKEN", "has spaces", "1-256 characters"),
        ("SWITCHBOARD_TELEGRAM_SECRET_TOKEN", "x" * 257, "1-256 characters"),
        ("SWITCHBOARD_TELEGRAM_BOT_TOKEN", "nonsense", "bot token"),
        ("SWITCHBOARD_TWILIO_ACCOUNT_SID", "AC123", "AC followed by 32 hex"),
        ("SWITCHBOARD_PUBLIC_URL", "bot.example.com", "http(s) base URL"),
        ("SWITCHBOARD_DEFAULT_REGION", "Spain", "region code"),
    ],
)
def test_bad_values_fail_at_start_naming_the_variable(
    variable: str, value: str, message: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({variable: value})
    assert caught.value.variable == variable
    assert message in str(caught.value)


def _bad(check: Check) -> str:
    """A value ``check`` refuses."""
    match check:
        case AtLeast(low=low, open=open_):
            return f"{low:g}" if open_ else f"{low - 1:g}"
        case Within(high=high):
            return f"{high + 1:g}" if high < 1e6 else str(int(high) + 1)
        case Matches():
            return "not this !"
        case OneOf():
            return "NONE_OF_THESE"
        case HttpUrl():
            return "ftp://example.com/"
    raise AssertionError(f"no bad value for {check!r}")


CHECKED = sorted(
    (PREFIX + field.metadata["env"], _bad(field.metadata["check"]))
    for group in [*Settings.GROUPS.values(), *settings_types()]
    for field in dataclasses.fields(group)
    if field.metadata.get("check") is not None
)


def test_every_group_and_channel_declares_its_checks() -> None:
    checked = {variable for variable, _ in CHECKED}
    for group in [*Settings.GROUPS.values(), *settings_types()]:
        assert any(PREFIX + f.metadata.get("env", "") in checked for f in dataclasses.fields(group))


@pytest.mark.parametrize(("variable", "value"), CHECKED)
def test_a_bad_value_is_refused_naming_exactly_its_variable(variable: str, value: str) -> None:
    """Each checked setting of every group and channel, given a value its check refuses: the
    error names that variable and no other (a bad timeout is not reported as a rate)."""
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({variable: value})
    assert caught.value.variable == variable


def test_dotenv_is_read_and_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# comment\nSWITCHBOARD_PORT=9000  # the usual one\n"
        "export SWITCHBOARD_HOST=\"0.0.0.0\"\nSWITCHBOARD_LLM_MODEL='a # b'\n"
    )
    values = read_dotenv(env_file)
    assert values == {
        "SWITCHBOARD_PORT": "9000",
        "SWITCHBOARD_HOST": "0.0.0.0",
        "SWITCHBOARD_LLM_MODEL": "a # b",
    }
    settings = Settings.from_env({**values, "SWITCHBOARD_PORT": "9100"})
    assert settings.http.port == 9100
    assert settings.http.host == "0.0.0.0"


def test_a_dotenv_key_without_a_value_is_refused_naming_the_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("SWITCHBOARD_PORT\n")
    with pytest.raises(SettingsError) as caught:
        read_dotenv(env_file)
    assert caught.value.variable == str(env_file)
    assert "SWITCHBOARD_PORT" in str(caught.value)


def test_every_setting_is_documented() -> None:
    rows = Settings().describe()
    names = {row.variable for row in rows}
    assert {
        "SWITCHBOARD_DATABASE_URL",
        "SWITCHBOARD_REDIS_URL",
        "SWITCHBOARD_CATALOG",
        "SWITCHBOARD_MAX_BODY_BYTES",
    } <= names
    assert all(row.doc for row in rows)
    assert len(names) == len(rows)


def test_twilio_needs_its_credentials_and_the_public_url() -> None:
    base = {"SWITCHBOARD_TWILIO_ACCOUNT_SID": "AC" + "a" * 32}
    with pytest.raises(SettingsError, match="AUTH_TOKEN"):
        Settings.from_env(base)
    with pytest.raises(SettingsError, match="WHATSAPP_FROM"):
        Settings.from_env({**base, "SWITCHBOARD_TWILIO_AUTH_TOKEN": "t"})
    full = {
        **base,
        "SWITCHBOARD_TWILIO_AUTH_TOKEN": "t0k3n",
        "SWITCHBOARD_TWILIO_WHATSAPP_FROM": "whatsapp:+14155238886",
    }
    with pytest.raises(SettingsError, match="SWITCHBOARD_PUBLIC_URL"):
        Settings.from_env(full)
    settings = Settings.from_env({**full, "SWITCHBOARD_PUBLIC_URL": "https://bot.example.com"})
    assert "t0k3n" not in repr(settings)


def test_telegram_secret_is_derived_from_the_token_when_unset() -> None:
    token = "123456:" + "A" * 35
    settings = Settings.from_env({"SWITCHBOARD_TELEGRAM_BOT_TOKEN": token})
    secret = settings.channel(TelegramSettings).webhook_secret
    assert (
        secret
        == Settings.from_env({"SWITCHBOARD_TELEGRAM_BOT_TOKEN": token})
        .channel(TelegramSettings)
        .webhook_secret
    )
    assert 1 <= len(secret) <= 256
    assert all(c.isalnum() or c in "_-" for c in secret)
    assert token not in repr(settings)


def test_settings_show_their_value_and_where_it_came_from(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "SWITCHBOARD_PORT=9000\nSWITCHBOARD_LLM_MODEL=from-file\n"
        "SWITCHBOARD_TWILIO_AUTH_TOKEN=file-secret-0123456789\n"
    )
    settings = Settings.from_env(Environment.read({"SWITCHBOARD_LLM_MODEL": "from-env"}, dotenv))
    rows = {row.variable: row for row in settings.describe()}
    assert (rows["SWITCHBOARD_PORT"].value, rows["SWITCHBOARD_PORT"].source) == ("9000", ".env")
    assert (rows["SWITCHBOARD_LLM_MODEL"].value, rows["SWITCHBOARD_LLM_MODEL"].source) == (
        "from-env",
        "env",
    )
    assert (rows["SWITCHBOARD_HOST"].value, rows["SWITCHBOARD_HOST"].source) == (
        "127.0.0.1",
        "default",
    )
    assert rows["SWITCHBOARD_TWILIO_ACCOUNT_SID"].value is None
    secret = rows["SWITCHBOARD_TWILIO_AUTH_TOKEN"]
    assert (secret.value, secret.source, secret.secret, secret.default) == (
        "********",
        ".env",
        True,
        None,
    )
    assert "file-secret" not in repr(rows)


def test_each_channel_declares_its_own_settings_with_the_same_names() -> None:
    settings = Settings.from_env(
        {
            "SWITCHBOARD_TELEGRAM_BOT_TOKEN": "123456:" + "A" * 35,
            "SWITCHBOARD_TELEGRAM_CHAT_RATE_PER_S": "2.5",
        }
    )
    assert settings.channel(TelegramSettings).chat_rate_per_s == 2.5
    assert settings.channel(TelegramSettings).enabled
    assert not settings.channel(TwilioSettings).enabled
    owners = {row.variable: row for row in settings.describe()}
    assert owners["SWITCHBOARD_TELEGRAM_CHAT_RATE_PER_S"].value == "2.5"


def test_passwords_inside_urls_are_masked() -> None:
    settings = Settings.from_env(
        {
            "SWITCHBOARD_DATABASE_URL": "postgresql+asyncpg://app:s3cr3t@db:5432/switchboard",
            "SWITCHBOARD_REDIS_URL": "redis://:r3d1s@cache:6379/0",
        }
    )
    rows = {row.variable: row.value for row in settings.describe()}
    assert rows["SWITCHBOARD_DATABASE_URL"] == (
        "postgresql+asyncpg://app:********@db:5432/switchboard"
    )
    assert rows["SWITCHBOARD_REDIS_URL"] == "redis://:********@cache:6379/0"
    assert "s3cr3t" not in repr(rows)
    assert "r3d1s" not in repr(rows)
