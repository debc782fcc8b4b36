"""One LLM endpoint as it is called: a named provider (see :mod:`.providers`)."""

from __future__ import annotations

import dataclasses

__all__ = ["Provider"]


@dataclasses.dataclass(frozen=True)
class Provider:
    name: str
    base_url: str
    model: str
    timeout_s: float
    max_concurrency: int
    key_from: str | None
    """The variable its key is read from (shown); the key itself never is."""
    api_key: str | None = dataclasses.field(default=None, repr=False)
    source: str = "catalog"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
