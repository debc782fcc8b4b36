"""The channel adapter base: verify the sender, parse into :class:`InboundMessage`, send.

Adding a channel is one new module with a short subclass, and one line in
``channels.registry``.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar
from urllib.parse import parse_qs

import msgspec

from channels.messages import Delivered, InboundMessage, OutboundMessage

__all__ = ["ChannelAdapter", "RawRequest"]


class RawRequest(msgspec.Struct, frozen=True, kw_only=True):
    """An HTTP request as a webhook adapter needs it, independent of the web framework."""

    path: str
    query: str
    headers: dict[str, str]
    """Lower-cased names."""
    body: bytes

    def form(self) -> dict[str, list[str]]:
        """The urlencoded body, keeping blank values (providers sign them too)."""
        return parse_qs(self.body.decode("utf-8"), keep_blank_values=True)


class ChannelAdapter(abc.ABC):
    name: ClassVar[str]
    max_text_chars: ClassVar[int | None] = None
    """Longest text one provider message may carry; longer replies are split."""

    async def verify(self, request: Any) -> None:  # noqa: B027 - optional hook
        """Raise :class:`gateway.errors.ForbiddenError` unless the provider really sent this."""

    @abc.abstractmethod
    async def parse(self, request: Any) -> InboundMessage:
        """Normalize what the provider sent; raise ``InvalidInput`` naming the problem."""

    @abc.abstractmethod
    async def send(self, message: OutboundMessage) -> Delivered:
        """Deliver a reply; report the delivery state (never raise for a provider refusal)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients."""
