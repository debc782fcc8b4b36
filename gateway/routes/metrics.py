"""Counters in Prometheus text format."""

from __future__ import annotations

from litestar import MediaType, get
from litestar.di import NamedDependency

from dispatch.metrics import Counters
from gateway.auth import ApiRole, require

__all__ = ["metrics"]


@get("/metrics", media_type=MediaType.TEXT, tags=["health"], guards=[require(ApiRole.ACTIONS)])
async def metrics(counters: NamedDependency[Counters]) -> str:
    values = await counters.snapshot()
    lines = []
    for name in sorted(values):
        lines.append(f"# TYPE switchboard_{name} counter")
        lines.append(f"switchboard_{name} {values[name]}")
    return "\n".join(lines) + "\n"
