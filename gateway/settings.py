"""The HTTP edge's settings, and :class:`Settings`: everything ``switchboard`` reads at start-up.

Each group is declared beside its owner (``dispatch.infra.config``, ``dispatch.record.db``,
``dispatch.infra.queue``, ``dispatch.understanding.llm``, ``workers.runtime``, each channel's
module); this one adds the HTTP edge's.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from functools import lru_cache
from typing import Any, ClassVar

from dispatch.infra.config import PREFIX, Group, Matches, Within, setting
from dispatch.infra.errors import SettingsError
from workers.runtime import RuntimeSettings

__all__ = ["HttpSettings", "Settings", "get_settings"]


@dataclasses.dataclass(frozen=True)
class HttpSettings(Group):
    """The HTTP edge."""

    host: str = setting("127.0.0.1", "HOST", "Interface `switchboard serve` binds.")
    port: int = setting(8000, "PORT", "Port `switchboard serve` binds.", check=Within(1, 65535))
    admin_token: str | None = setting(
        None,
        "ADMIN_TOKEN",
        "An admin bearer token for the HTTP API from the environment, to bootstrap real ones "
        "(`switchboard tokens create`). At least 24 characters.",
        secret=True,
        check=Matches("(?s).{24,}", "at least 24 characters"),
    )

    trusted_proxies: str = setting(
        "",
        "TRUSTED_PROXIES",
        "Comma-separated addresses or networks (`10.0.0.0/8`) of reverse proxies whose "
        "`X-Forwarded-For` and `X-Forwarded-Proto` are believed; a client's address (for the "
        "portal's login lockout and per-address limits) is then the one they forwarded. Empty "
        "(the default): no proxy is trusted, the address is the TCP peer's.",
    )

    request_timeout_s: float = setting(
        4.0,
        "REQUEST_TIMEOUT_S",
        "Longest an HTTP request is worked on before it is answered 503 (`unavailable` if the "
        "database or Redis was just seen down, else `overloaded`), whatever it waits on; a "
        "synchronous execution waits its own `timeout_s` on top. A second under the 5 s a "
        "client or provider should wait for an answer: the clock starts once the request is "
        "routed, and a burst queues before that and for its answers (200 requests at once on "
        "two busy cores: up to 0.7 s).",
        check=Within(0.5, 60),
    )

    @property
    def proxies(self) -> list[str]:
        """``trusted_proxies`` as a list (empty: none)."""
        return [item.strip() for item in self.trusted_proxies.split(",") if item.strip()]

    def validate(self) -> None:
        for proxy in self.proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise SettingsError(
                    PREFIX + "TRUSTED_PROXIES", f"{proxy!r} is not an address or network"
                ) from None


@dataclasses.dataclass(frozen=True)
class Settings(RuntimeSettings):
    """What the gateway, and every ``switchboard`` command, reads once at start-up."""

    GROUPS: ClassVar[dict[str, type[Any]]] = {**RuntimeSettings.GROUPS, "http": HttpSettings}

    http: HttpSettings = dataclasses.field(default_factory=HttpSettings)

    @property
    def base_url(self) -> str:
        """Where people reach this gateway: ``SWITCHBOARD_PUBLIC_URL``, else the address
        ``switchboard serve`` binds (an any-address bind read as this machine)."""
        if self.core.public_url is not None:
            return self.core.public_url.rstrip("/")
        host = "127.0.0.1" if self.http.host in {"0.0.0.0", "::", ""} else self.http.host  # noqa: S104
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.http.port}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings.from_env()
