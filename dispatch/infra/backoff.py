"""The one retry delay: exponential, with jitter so retries from many workers spread out."""

from __future__ import annotations

import asyncio
import random

__all__ = ["backoff"]


async def backoff(retry: int, first_s: float) -> None:
    """Sleep before retry number ``retry`` (0 for the first): ``first_s * 2**retry``, ±50 %."""
    await asyncio.sleep(first_s * 2**retry * (0.5 + random.random()))  # noqa: S311 - jitter
