"""The normalized message: every channel parses into :class:`InboundMessage` and sends
:class:`OutboundMessage`, so nothing past a channel adapter knows which provider it was."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec

__all__ = ["Choice", "Delivered", "InboundMessage", "Media", "OutboundMessage", "StatusReport"]


class Media(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An attachment: a URL (or a provider file id) and its content type."""

    url: str
    content_type: str = "application/octet-stream"


class Choice(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An answer a reply offers: ``label`` on the button, ``text`` sent back when chosen."""

    label: str
    text: str


class InboundMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A message as a user sent it, normalized across channels."""

    channel: str
    external_id: str
    """The provider's message id: (channel, external_id) is unique, so a retry is a no-op."""
    conversation_key: str
    """Where a reply goes on this channel (a phone number, a chat id, a web session)."""
    sender: str
    """The sender's address: with ``identity_kind``, the key of their identity."""
    text: str
    media: tuple[Media, ...] = ()
    sender_name: str | None = None
    identity_kind: str | None = None
    """The network ``sender`` belongs to when several channels share one (both WhatsApp
    providers key people by their E.164 number, as ``whatsapp``); None: the channel's name."""
    received_at: dt.datetime = msgspec.field(default_factory=lambda: dt.datetime.now(dt.UTC))
    raw: dict[str, Any] = msgspec.field(default_factory=dict)
    """The provider payload exactly as received, kept for audit."""
    ignored: str | None = None
    """Why this is stored but not dispatched (an update kind the gateway does not handle)."""
    as_user: int | None = None
    """Who sent it, when the caller's own credentials say so (an API token acting for a user):
    then ``sender`` is only a label and replies' address."""
    anonymous: bool = False
    """The sender's address is a credential (a web chat session): never shown; people see
    "web visitor #N" unless the sender gave a name."""
    guests_only: bool = False
    """The caller may speak only for a guest (an API token acting for no user): a sender who is
    anything more is refused."""

    @property
    def identity(self) -> tuple[str, str]:
        """(kind, address): who sent this, whichever channel carried it."""
        return self.identity_kind or self.channel, self.sender


class OutboundMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A reply to send on a channel."""

    channel: str
    conversation_key: str
    conversation_id: int
    text: str
    media: tuple[Media, ...] = ()
    activity_id: int | None = None
    message_id: int | None = None
    """Our stored outbound message's id, once stored."""
    in_reply_to: str | None = None
    """External id of the inbound message this answers."""
    last_inbound_at: dt.datetime | None = None
    """When the user last wrote in this conversation (WhatsApp's 24-hour window)."""
    template: dict[str, Any] | None = None
    """The action's template for this channel (its own shape, checked at start-up): what to
    send instead when a free-form reply is not allowed."""
    language: str | None = None
    """The language of the conversation it answers (a channel's own words: a list's button)."""
    author: str | None = None
    """Who wrote it: a person's name (a supervisor answering); None: the bot."""
    choices: tuple[Choice, ...] = ()
    """Offered answers (buttons where the channel has them)."""


class Delivered(msgspec.Struct, frozen=True, kw_only=True):
    """What a channel's ``send`` reports: the delivery state and the provider's id."""

    status: str
    external_id: str | None = None
    error: str | None = None


class StatusReport(msgspec.Struct, frozen=True, kw_only=True):
    """A provider's report on one of our outbound messages (sent, delivered, read, failed)."""

    external_id: str
    """The provider's id of the message."""
    status: str
    """A :class:`~dispatch.record.models.Delivery` value."""
    message_id: int | None = None
    """Our id of the message, when the provider echoes it back (found by ``external_id``
    otherwise)."""
    error: str | None = None
