"""A provider's webhook, HTTP aside: the channel its path names verifies and reads it, and
everything it carries is stored (the gateway's hot path, behind one route)."""

from __future__ import annotations

from channels.base import RawRequest, Received, WebhookChannel
from channels.registry import ChannelRegistry
from dispatch.work.service import DispatchService

__all__ = ["Inbound"]


class Inbound:
    """The one service the webhook route depends on (a route with two dependencies has
    litestar start a task group per request to resolve them: a tenth of the gateway's time at
    saturation)."""

    def __init__(self, channels: ChannelRegistry, dispatcher: DispatchService) -> None:
        self._channels = channels
        self._dispatcher = dispatcher

    def channel(self, path: str) -> WebhookChannel:
        """The channel whose webhook ``path`` is (NotFoundError if none)."""
        return self._channels.webhook(path)

    async def receive(self, raw: RawRequest) -> tuple[WebhookChannel, Received]:
        """Verify and read a webhook, and store what it carries (provider retries dedupe);
        returns its channel and what was read, once stored."""
        channel = self._channels.webhook(raw.path)
        received = await channel.receive(raw)
        await self._dispatcher.ingest_all(channel.name, received.messages, received.statuses)
        return channel, received
