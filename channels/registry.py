"""Every channel Switchboard has, one line each, in order of preference.

The order is how a person is reached when nothing else decides it (an approver with a WhatsApp
number and a Telegram id, who wrote from neither lately, is asked on WhatsApp). Everything that
needs the list of channels (settings, the webhook route, the CLI's identity options, approvals,
replies, catalog templates) takes it from here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from channels.base import Channel, ChannelContext, ChannelSettings, WebhookChannel
from channels.rest import RestChannel
from channels.telegram import TelegramChannel
from channels.twilio import TwilioChannel
from channels.webchat import WebChatChannel
from channels.whatsapp_cloud import WhatsAppCloudChannel
from dispatch.infra.errors import CatalogError, NotFoundError
from dispatch.policy.catalog import Catalog
from dispatch.record.users import IdentityKind

__all__ = [
    "CHANNEL_TYPES",
    "ChannelRegistry",
    "channel_type",
    "check_templates",
    "identity_kinds",
    "settings_types",
]

CHANNEL_TYPES: tuple[type[Channel], ...] = (
    TwilioChannel,
    WhatsAppCloudChannel,
    TelegramChannel,
    WebChatChannel,
    RestChannel,
)

A = TypeVar("A", bound=Channel)


def channel_type(name: str) -> type[Channel] | None:
    return next((kind for kind in CHANNEL_TYPES if kind.name == name), None)


def settings_types() -> list[type[ChannelSettings]]:
    """Every channel's settings group, configured or not (all are read and listed)."""
    return [kind.settings_type for kind in CHANNEL_TYPES if kind.settings_type is not None]


def identity_kinds() -> dict[str, IdentityKind]:
    """Every kind of address, with the channels whose senders have one."""
    kinds: dict[str, IdentityKind] = {}
    for kind in CHANNEL_TYPES:
        known = kinds.get(kind.identity.name, kind.identity)
        kinds[known.name] = dataclasses.replace(known, channels=(*known.channels, kind.name))
    return kinds


def check_templates(catalog: Catalog) -> None:
    """Refuse, at start-up, a catalog template no channel could send, naming where it is."""
    for agent, action, spec in catalog.actions():
        for name, template in spec.templates.items():
            at = f"{catalog.source}: agents.{agent}.actions.{action}.templates.{name}"
            kind = channel_type(name)
            if kind is None:
                known = ", ".join(k.name for k in CHANNEL_TYPES if k.template_type is not None)
                raise CatalogError(at, f"no channel {name!r} takes templates; one of: {known}")
            try:
                kind.check_template(template)
            except ValueError as exc:
                raise CatalogError(at, str(exc)) from None


class ChannelRegistry:
    """The configured channels of this process (what the core sees as ``ChannelRouting``)."""

    def __init__(self, channels: Iterable[Channel]) -> None:
        self._channels = {channel.name: channel for channel in channels}
        self._webhooks = {
            path: channel
            for channel in self._channels.values()
            if isinstance(channel, WebhookChannel)
            for path in channel.webhook_paths
        }

    @classmethod
    def create(
        cls, settings_of: Callable[[type[ChannelSettings]], Any], context: ChannelContext
    ) -> ChannelRegistry:
        """Every channel whose settings configure it."""
        built = (
            kind.create(
                None if kind.settings_type is None else settings_of(kind.settings_type), context
            )
            for kind in CHANNEL_TYPES
        )
        return cls(channel for channel in built if channel is not None)

    def get(self, name: str) -> Channel:
        try:
            return self._channels[name]
        except KeyError:
            raise NotFoundError(f"no channel named {name!r}") from None

    def of(self, kind: type[A]) -> A:
        """The configured channel of class ``kind`` (NotFoundError when not configured)."""
        channel = self.get(kind.name)
        assert isinstance(channel, kind)
        return channel

    def webhook(self, path: str) -> WebhookChannel:
        """The configured channel that takes calls on ``path``."""
        try:
            return self._webhooks[path]
        except KeyError:
            raise NotFoundError(f"no channel is configured to take calls on {path}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._channels

    # -- ChannelRouting --------------------------------------------------------------------

    def channels(self) -> tuple[str, ...]:
        return tuple(self._channels)

    def identity_kind(self, channel: str) -> str:
        kind = channel_type(channel)
        return kind.identity.name if kind is not None else channel

    def buttons(self, channel: str) -> bool:
        """Whether channel ``channel`` shows offered choices as buttons."""
        kind = channel_type(channel)
        return kind is not None and kind.buttons

    def split(self, channel: str, text: str) -> list[str]:
        """``text`` in the pieces channel ``channel`` can send (whole when not configured)."""
        found = self._channels.get(channel)
        return [text] if found is None else found.split(text)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
