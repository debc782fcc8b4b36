"""Which channels exist, by name."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from channels.base import ChannelAdapter
from channels.text import split_text
from gateway.errors import NotFoundError

__all__ = ["ChannelRegistry"]

A = TypeVar("A", bound=ChannelAdapter)


class ChannelRegistry:
    def __init__(self, adapters: Iterable[ChannelAdapter]) -> None:
        self._adapters = {adapter.name: adapter for adapter in adapters}

    def get(self, name: str) -> ChannelAdapter:
        try:
            return self._adapters[name]
        except KeyError:
            raise NotFoundError(f"no channel named {name!r}") from None

    def of(self, kind: type[A]) -> A:
        """The configured adapter of class ``kind`` (NotFoundError when not configured)."""
        adapter = self.get(kind.name)
        assert isinstance(adapter, kind)
        return adapter

    def split(self, name: str, text: str) -> list[str]:
        """``text`` in the pieces channel ``name`` can send (one piece when it has no limit)."""
        limit = self._adapters[name].max_text_chars if name in self._adapters else None
        return [text] if limit is None else split_text(text, limit)

    def __contains__(self, name: object) -> bool:
        return name in self._adapters

    async def close(self) -> None:
        for adapter in self._adapters.values():
            await adapter.close()
