"""A channel: how one messaging network reaches people, in one module.

A channel declares its name, the kind of address it knows people by, the longest text one of its
messages may carry, its settings and its template shape, and how it sends. A channel whose
provider calls us (a :class:`WebhookChannel`) also declares its webhook paths and how to verify,
parse and acknowledge what arrives there. The gateway serves every webhook channel with one
route, ``channels.registry`` lists the channels, and nothing else names them: adding a channel is
one module and one line in the registry.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar, Protocol, Self, runtime_checkable
from urllib.parse import parse_qs

import msgspec

from channels.bus import ReplyBus
from channels.ratelimit import RateLimiter
from channels.templates import check_placeholders
from channels.text import split_text
from channels.validation import NOT_UTF8
from dispatch.infra.config import CoreSettings, Group
from dispatch.infra.errors import ForbiddenError, InvalidInput
from dispatch.record.messages import (
    Choice,
    Delivered,
    InboundMessage,
    OutboundMessage,
    StatusReport,
)
from dispatch.record.users import IdentityKind

__all__ = [
    "Channel",
    "ChannelContext",
    "ChannelSettings",
    "ChoiceLookup",
    "RawRequest",
    "Received",
    "RegistersWebhook",
    "WebhookChannel",
    "WebhookReply",
]

log = logging.getLogger("switchboard.channels")

UNKNOWN = "unknown"

ChoiceLookup = Callable[[int], Awaitable[tuple[str, list[Choice]] | None]]
"""(conversation key, offered choices) of one of our outbound messages, by its id."""


class RawRequest(msgspec.Struct, frozen=True, kw_only=True, dict=True):
    """An HTTP request as a webhook channel needs it, independent of the web framework."""

    method: str = "POST"
    path: str
    query: str
    headers: dict[str, str]
    """Lower-cased names; a name sent more than once keeps its last value (see ``repeated``)."""
    body: bytes
    repeated: frozenset[str] = frozenset()
    """Header names (lower-cased) the request carried more than once."""

    def form(self) -> Mapping[str, list[str]]:
        """The urlencoded body, keeping blank values (providers sign them too); parsed once
        (verifying and reading a webhook both need it)."""
        return self._form

    @functools.cached_property
    def _form(self) -> dict[str, list[str]]:
        return parse_qs(self.text(), keep_blank_values=True)

    def params(self) -> dict[str, list[str]]:
        """The query string's parameters."""
        return parse_qs(self.query, keep_blank_values=True)

    def text(self) -> str:
        try:
            return self.body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(NOT_UTF8) from None


class ChannelSettings(Group):
    """Base of a channel's settings group (a frozen dataclass of ``setting`` fields)."""

    @property
    def enabled(self) -> bool:
        """Whether the channel is configured (typically: its main credential is set)."""
        raise NotImplementedError

    def check(self, core: CoreSettings) -> None:
        """Refuse combinations with the core settings (e.g. a signature needs the public URL)."""


@dataclasses.dataclass(frozen=True)
class ChannelContext:
    """What any channel may use, built once per process by the composition root."""

    core: CoreSettings
    prefix: str
    """Of Redis keys and pub/sub topics."""
    limiter: RateLimiter
    """Outbound pacing shared by every process (through Redis when there is one)."""
    bus: ReplyBus
    """Replies to live sockets in whichever gateway process holds them."""
    choices: ChoiceLookup
    secret: bytes
    """This deployment's secret (``dispatch.record.keys``): derive a key per purpose from it."""


class Channel(abc.ABC):
    name: ClassVar[str]
    """Stored on every message; one per channel, stable."""
    identity: ClassVar[IdentityKind]
    """The kind of address its senders are known by (several channels may share one)."""
    max_text_chars: ClassVar[int | None] = None
    """Longest text one provider message may carry; longer replies are split."""
    buttons: ClassVar[bool] = False
    """Whether it shows a reply's offered choices as buttons (else only its text reaches)."""
    settings_type: ClassVar[type[ChannelSettings] | None] = None
    """Its settings group; None: it needs none and is always on."""
    template_type: ClassVar[type[msgspec.Struct] | None] = None
    """The shape of its entry in a catalog action's ``templates`` (None: it has none)."""

    def __init__(self, settings: Any, context: ChannelContext) -> None:  # noqa: B027
        """Every channel is built from its settings group (None if it has none) and the
        process's :class:`ChannelContext`."""

    @classmethod
    def create(cls, settings: Any, context: ChannelContext) -> Self | None:
        """The channel, or None when its settings leave it off."""
        if isinstance(settings, ChannelSettings) and not settings.enabled:
            return None
        return cls(settings, context)

    @classmethod
    def check_template(cls, template: dict[str, Any]) -> None:
        """Refuse a catalog template this channel could not send (raises ValueError)."""
        if cls.template_type is None:
            raise ValueError(f"the {cls.name} channel has no templates")
        try:
            msgspec.convert(template, cls.template_type)
        except msgspec.ValidationError as exc:
            raise ValueError(str(exc)) from None
        check_placeholders(template)

    def split(self, text: str) -> list[str]:
        """``text`` in the pieces this channel can send, in order."""
        limit = self.max_text_chars
        return [text] if limit is None else split_text(text, limit)

    @abc.abstractmethod
    async def send(self, message: OutboundMessage) -> Delivered:
        """Deliver a reply; report the delivery state (never raise for a provider refusal)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients."""


@dataclasses.dataclass(frozen=True)
class WebhookReply:
    """The answer a provider gets once what it sent is stored."""

    body: str = ""
    media_type: str = "text/plain"
    status_code: int = 200


@dataclasses.dataclass(frozen=True)
class Received:
    """What one verified webhook call carried."""

    messages: tuple[InboundMessage, ...] = ()
    statuses: tuple[StatusReport, ...] = ()
    follow_up: Callable[[], Awaitable[None]] | None = None
    """Work for after the provider has its answer (Telegram: stop a button's spinner)."""


class WebhookChannel(Channel):
    """A channel whose provider calls us: verified, parsed and stored, then acknowledged."""

    webhook_paths: ClassVar[tuple[str, ...]]
    """Where the provider calls (the first is the one to configure for inbound messages)."""
    credential_headers: ClassVar[tuple[str, ...]] = ()
    """Headers that prove who sent a call (a signature, a secret): refused if repeated."""

    @abc.abstractmethod
    async def verify(self, request: RawRequest) -> None:
        """Raise ``ForbiddenError`` unless the provider really sent this (fail closed)."""

    @abc.abstractmethod
    async def parse(self, request: RawRequest) -> Received:
        """Normalize what a verified request carries; ``InvalidInput`` if it cannot be read."""

    def acknowledgement(self) -> WebhookReply:
        """What the provider gets back once the call is stored."""
        return WebhookReply()

    def handshake(self, request: RawRequest) -> WebhookReply | None:
        """The answer to a GET on a webhook path (a subscription check); None: none taken."""
        return None

    async def receive(self, request: RawRequest) -> Received:
        """Verify, then parse. Once verified, whatever the request carries is kept: what cannot
        be read is stored as an ignored message naming why, never refused (a provider would
        retry a refusal for a day). A credential header sent twice is refused first: which
        one would be the request's?"""
        for name in self.credential_headers:
            if name in request.repeated:
                raise ForbiddenError(f"{name} was sent more than once")
        await self.verify(request)
        try:
            return await self.parse(request)
        except InvalidInput as exc:
            problem = str(exc)
        except Exception as exc:  # a shape the parser did not foresee: kept all the same
            log.warning("verified %s webhook not parsed", self.name, exc_info=True)
            problem = f"{type(exc).__name__}: {exc}"
        digest = hashlib.sha256(request.body).hexdigest()[:40]
        body = request.body.decode("utf-8", "replace")
        unread = self.ignored(f"unreadable:{digest}", {"body": body}, f"unreadable: {problem}")
        return Received(messages=(unread,))

    def ignored(
        self, external_id: str, raw: dict[str, Any], reason: str, key: str = UNKNOWN
    ) -> InboundMessage:
        """Something the provider sent that nobody acts on: stored, never dispatched."""
        return InboundMessage(
            channel=self.name,
            external_id=external_id,
            conversation_key=key,
            sender=key,
            identity_kind=self.identity.name,
            text="",
            raw=raw,
            ignored=reason,
        )


@runtime_checkable
class RegistersWebhook(Protocol):
    """A channel whose provider is told its webhook URL over the API (``switchboard <channel>
    set-webhook``), rather than in a console."""

    async def set_webhook(self, url: str, *, drop_pending_updates: bool) -> str:
        """Point the provider at ``url``; returns a line about what was set."""
        ...

    async def webhook_info(self) -> dict[str, Any]: ...

    async def delete_webhook(self, *, drop_pending_updates: bool) -> None: ...
