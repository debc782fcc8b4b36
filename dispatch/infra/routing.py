"""What the core needs to know of the configured channels, without knowing any of them.

The channel registry (``channels.registry``) implements :class:`ChannelRouting`; the core asks
it how a channel cuts long text and which channels reach an address of a given identity kind
(both WhatsApp providers reach a ``whatsapp`` number).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["ChannelRouting", "reaching"]


class ChannelRouting(Protocol):
    def channels(self) -> tuple[str, ...]:
        """The configured channels, in order of preference."""
        ...

    def identity_kind(self, channel: str) -> str:
        """The kind of address channel ``channel`` keys its senders by."""
        ...

    def split(self, channel: str, text: str) -> list[str]:
        """``text`` in the pieces channel ``channel`` can send, in order."""
        ...

    def buttons(self, channel: str) -> bool:
        """Whether channel ``channel`` shows offered choices as buttons."""
        ...


def reaching(routing: ChannelRouting, kind: str) -> tuple[str, ...]:
    """The configured channels that reach addresses of ``kind``, preferred first."""
    return tuple(c for c in routing.channels() if routing.identity_kind(c) == kind)
