"""What LLM calls cost: each call to a named provider, with the tokens its answer's ``usage``
reported (none invented where it reported none), and totals per provider."""

from __future__ import annotations

from typing import Any

import msgspec
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dispatch.record.models import LlmCall

__all__ = ["CallRecord", "UsageLog", "UsageTotals"]


class CallRecord(msgspec.Struct, frozen=True, kw_only=True):
    provider: str
    model: str
    purpose: str
    ok: bool
    latency_ms: float
    usage: dict[str, Any] | None = None
    """The answer's ``usage`` object, as the endpoint sent it."""
    error: str | None = None
    activity_id: int | None = None


class UsageTotals(msgspec.Struct, frozen=True, kw_only=True):
    calls: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


def _tokens(usage: dict[str, Any] | None, name: str) -> int | None:
    value = (usage or {}).get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class UsageLog:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def record(self, call: CallRecord) -> None:
        async with self._sessions.begin() as session:
            session.add(
                LlmCall(
                    provider=call.provider,
                    model=call.model[:200],
                    purpose=call.purpose,
                    activity_id=call.activity_id,
                    ok=call.ok,
                    error=call.error[:500] if call.error else None,
                    prompt_tokens=_tokens(call.usage, "prompt_tokens"),
                    completion_tokens=_tokens(call.usage, "completion_tokens"),
                    total_tokens=_tokens(call.usage, "total_tokens"),
                    latency_ms=call.latency_ms,
                )
            )

    async def totals(self) -> dict[str, UsageTotals]:
        """Calls and tokens so far, per provider."""
        async with self._sessions() as session:
            rows = await session.execute(
                select(
                    LlmCall.provider,
                    func.count(),
                    func.count().filter(LlmCall.ok.is_(False)),
                    func.coalesce(func.sum(LlmCall.prompt_tokens), 0),
                    func.coalesce(func.sum(LlmCall.completion_tokens), 0),
                ).group_by(LlmCall.provider)
            )
            return {
                str(row[0]): UsageTotals(
                    calls=int(row[1] or 0),
                    failed=int(row[2] or 0),
                    prompt_tokens=int(row[3] or 0),
                    completion_tokens=int(row[4] or 0),
                )
                for row in rows
            }
