"""WhatsApp through Meta's Cloud API: signed webhooks in, the Graph API out.

Inbound (``/webhooks/whatsapp-cloud``): a ``GET`` is Meta's subscription check (``hub.mode=
subscribe``, ``hub.verify_token`` compared in constant time, ``hub.challenge`` echoed as plain
text). A ``POST`` must carry ``X-Hub-Signature-256: sha256=<HMAC-SHA256 of the raw body with the
app secret>``, else 403 and nothing is stored. One call may carry several messages and status
reports (``entry[].changes[].value``): each message is stored under its ``wamid`` (so Meta's
retries are no-ops), text and chosen buttons are dispatched, media are kept by id, and anything
else (a location, a reaction, another field) is kept as ignored: Meta gets its 200 either way.

Outbound: ``POST {api_url}/{version}/{phone_number_id}/messages`` with the bearer token. Text is
split at 4,096 characters; offered choices become reply buttons (at most 3, titles of 20
characters) or a list (up to 10 rows); media go by link. Outside the 24-hour window, or when Meta
answers 131047, the action's template is sent (name, language, components) or the reply fails
with the reason. Rate limits (130429 and kin, HTTP 429, 5xx) are retried with backoff; other
errors (131026, ...) are final and recorded on the message. Sends are paced per phone number id
across all workers. Each message carries our id in ``biz_opaque_callback_data``, which Meta
echoes in its status reports.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import logging
from typing import Any, ClassVar

import httpx
import msgspec

from channels import base
from channels.choices import ChoiceTokens
from channels.retry import TryAgain, unknown_outcome, with_retries
from channels.templates import fill_template
from channels.validation import require_depth, require_text, require_utf8
from channels.whatsapp import WHATSAPP, WindowClosed, send_in_window
from dispatch.infra.config import NOT_NEGATIVE, POSITIVE, PREFIX, HttpUrl, Matches, setting
from dispatch.infra.errors import ForbiddenError, InvalidInput, SettingsError
from dispatch.infra.phone import from_provider
from dispatch.language.i18n import say
from dispatch.record.messages import (
    Choice,
    Delivered,
    InboundMessage,
    Media,
    OutboundMessage,
    StatusReport,
)
from dispatch.record.models import Delivery
from dispatch.record.users import IdentityKind

__all__ = ["CloudTemplate", "WhatsAppCloudChannel", "WhatsAppCloudSettings"]

log = logging.getLogger("switchboard.whatsapp_cloud")

SIGNATURE_HEADER = "x-hub-signature-256"
RATE_LIMITED = frozenset({4, 80007, 130429, 131056})
"""Graph error codes that mean "too many, slow down": retried with backoff."""
MAX_RETRY_AFTER_S = 60.0
"""A longer ``Retry-After`` fails the send rather than hold a worker."""
REENGAGEMENT = 131047
"""More than 24 hours since the user last wrote: only a template may be sent."""
MAX_BUTTONS = 3
BUTTON_TITLE_CHARS = 20
BUTTON_BODY_CHARS = 1024
MAX_ROWS = 10
ROW_TITLE_CHARS = 24
ROW_DESCRIPTION_CHARS = 72
MEDIA_TYPES = ("image", "document", "audio", "video", "sticker")
OPAQUE_PREFIX = "sb:"

_STATUS = {
    "sent": Delivery.SENT,
    "delivered": Delivery.DELIVERED,
    "read": Delivery.READ,
    "failed": Delivery.FAILED,
}


@dataclasses.dataclass(frozen=True)
class WhatsAppCloudSettings(base.ChannelSettings):
    """WhatsApp through Meta's Cloud API. Enabled when the phone number id is set."""

    phone_number_id: str | None = setting(
        None,
        "WHATSAPP_CLOUD_PHONE_NUMBER_ID",
        "The business phone number's id (Meta app → WhatsApp → API Setup); setting it enables "
        "the channel.",
        check=Matches("[0-9]+", "digits"),
    )
    access_token: str | None = setting(
        None,
        "WHATSAPP_CLOUD_ACCESS_TOKEN",
        "A permanent (system user) access token with whatsapp_business_messaging.",
        secret=True,
    )
    app_secret: str | None = setting(
        None,
        "WHATSAPP_CLOUD_APP_SECRET",
        "The Meta app's secret: webhooks are signed with it (X-Hub-Signature-256).",
        secret=True,
    )
    verify_token: str | None = setting(
        None,
        "WHATSAPP_CLOUD_VERIFY_TOKEN",
        "The verify token you type in the app's webhook settings; Meta's subscription check "
        "must echo it.",
        secret=True,
    )
    api_url: str = setting(
        "https://graph.facebook.com",
        "WHATSAPP_CLOUD_API_URL",
        "Base URL of the Graph API; sends go to {url}/{version}/{phone_number_id}/messages.",
        check=HttpUrl(),
    )
    api_version: str = setting(
        "v21.0",
        "WHATSAPP_CLOUD_API_VERSION",
        "Graph API version.",
        check=Matches(r"v\d+\.\d+", "a version like v21.0"),
    )
    rate_per_s: float = setting(
        80.0,
        "WHATSAPP_CLOUD_RATE_PER_S",
        "Most messages per second from the phone number, across all workers (Meta's default "
        "throughput is 80).",
        check=POSITIVE,
    )
    max_retries: int = setting(
        4,
        "WHATSAPP_CLOUD_MAX_RETRIES",
        "Retries of a send refused for its rate (130429, 429) or with a 5xx; other errors are "
        "final.",
        check=NOT_NEGATIVE,
    )
    backoff_s: float = setting(
        0.5,
        "WHATSAPP_CLOUD_BACKOFF_S",
        "First retry delay; doubles each retry, with jitter.",
        check=NOT_NEGATIVE,
    )
    timeout_s: float = setting(
        10.0, "WHATSAPP_CLOUD_TIMEOUT_S", "Timeout of one API call.", check=POSITIVE
    )
    button_ttl_s: float = setting(
        86400.0,
        "WHATSAPP_CLOUD_BUTTON_TTL_S",
        "How long a reply button or list row stays valid.",
        check=POSITIVE,
    )

    @property
    def enabled(self) -> bool:
        return self.phone_number_id is not None

    def validate(self) -> None:
        if not self.enabled:
            return
        for name, value in (
            ("WHATSAPP_CLOUD_ACCESS_TOKEN", self.access_token),
            ("WHATSAPP_CLOUD_APP_SECRET", self.app_secret),
            ("WHATSAPP_CLOUD_VERIFY_TOKEN", self.verify_token),
        ):
            if not value:
                raise SettingsError(PREFIX + name, "is required with a phone number id")


class CloudTemplate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An approved message template (``templates.whatsapp_cloud`` of a catalog action). String
    values in ``components`` are format strings over ``{text}`` and ``{activity_id}``."""

    name: str
    language: str
    """Its language code, e.g. ``es`` or ``en_US``."""
    components: list[dict[str, Any]] = []


# -- the webhook's payload, as much of it as we read ------------------------------------------


class _Reply(msgspec.Struct, frozen=True):
    id: str = ""
    title: str = ""


class _Interactive(msgspec.Struct, frozen=True):
    type: str = ""
    button_reply: _Reply | None = None
    list_reply: _Reply | None = None


class _Media(msgspec.Struct, frozen=True):
    id: str = ""
    mime_type: str = "application/octet-stream"
    caption: str = ""


class _Message(msgspec.Struct, frozen=True, rename={"sender": "from"}):
    id: str
    sender: str
    type: str = ""
    text: dict[str, Any] = {}
    interactive: _Interactive | None = None
    button: dict[str, Any] = {}
    image: _Media | None = None
    document: _Media | None = None
    audio: _Media | None = None
    video: _Media | None = None
    sticker: _Media | None = None


class _Error(msgspec.Struct, frozen=True):
    code: int | None = None
    title: str = ""
    message: str = ""
    error_data: dict[str, Any] = {}


class _Status(msgspec.Struct, frozen=True):
    id: str
    status: str
    biz_opaque_callback_data: str | None = None
    errors: list[_Error] = []


class _Envelope(msgspec.Struct, frozen=True):
    """``{"entry": [{"changes": [...]}]}``: each change is read on its own."""

    class Entry(msgspec.Struct, frozen=True):
        changes: list[dict[str, Any]] = []

    entry: list[Entry] = []


class WhatsAppCloudChannel(base.WebhookChannel):
    name: ClassVar[str] = "whatsapp_cloud"
    buttons: ClassVar[bool] = True
    identity: ClassVar[IdentityKind] = WHATSAPP
    max_text_chars: ClassVar[int | None] = 4096
    settings_type: ClassVar[type[base.ChannelSettings] | None] = WhatsAppCloudSettings
    template_type: ClassVar[type[msgspec.Struct] | None] = CloudTemplate
    webhook_paths: ClassVar[tuple[str, ...]] = ("/webhooks/whatsapp-cloud",)
    credential_headers: ClassVar[tuple[str, ...]] = (SIGNATURE_HEADER,)

    def __init__(self, settings: WhatsAppCloudSettings, context: base.ChannelContext) -> None:
        assert settings.phone_number_id is not None
        assert settings.app_secret is not None
        assert settings.verify_token is not None
        self._settings = settings
        self._number_id = settings.phone_number_id
        self._app_secret = settings.app_secret.encode()
        self._verify_token = settings.verify_token.encode()
        api = settings.api_url.rstrip("/")
        self._url = f"{api}/{settings.api_version}/{settings.phone_number_id}/messages"
        self._limiter = context.limiter
        self._max_inbound_chars = context.core.max_text_chars
        button_key = hmac.new(self._app_secret, b"switchboard-buttons", hashlib.sha256).digest()
        self._buttons = ChoiceTokens(
            button_key, ttl_s=settings.button_ttl_s, lookup=context.choices
        )
        self._http: httpx.AsyncClient | None = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    # -- inbound ---------------------------------------------------------------------------

    def handshake(self, request: base.RawRequest) -> base.WebhookReply:
        params = {key: values[0] for key, values in request.params().items()}
        token = params.get("hub.verify_token", "")
        if params.get("hub.mode") != "subscribe" or not hmac.compare_digest(
            token.encode(), self._verify_token
        ):
            raise ForbiddenError("wrong hub.mode or hub.verify_token")
        challenge = params.get("hub.challenge")
        if not challenge:
            raise InvalidInput("hub.challenge is missing")
        return base.WebhookReply(body=challenge, media_type="text/plain")

    async def verify(self, request: base.RawRequest) -> None:
        given = request.headers.get(SIGNATURE_HEADER)
        if not given:
            raise ForbiddenError("missing X-Hub-Signature-256")
        expected = "sha256=" + hmac.new(self._app_secret, request.body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise ForbiddenError("invalid X-Hub-Signature-256")

    async def parse(self, request: base.RawRequest) -> base.Received:
        require_utf8(request.body)
        require_depth(request.body)
        try:
            envelope = msgspec.json.decode(request.body, type=_Envelope)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise InvalidInput(f"not a WhatsApp webhook: {exc}") from None
        messages: list[InboundMessage] = []
        statuses: list[StatusReport] = []
        for entry in envelope.entry:
            for change in entry.changes:
                got, reports = await self._change(change)
                messages.extend(got)
                statuses.extend(reports)
        return base.Received(messages=tuple(messages), statuses=tuple(statuses))

    async def _change(
        self, change: dict[str, Any]
    ) -> tuple[list[InboundMessage], list[StatusReport]]:
        """One ``changes[]`` item: its messages, its status reports, and whatever is left over
        (another field, unknown statuses, errors) kept as one ignored row."""
        value = change.get("value")
        value = value if isinstance(value, dict) else {}
        if change.get("field") != "messages":
            return [self._leftover(value, f"unhandled field: {change.get('field')}")], []
        metadata = value.get("metadata")
        number_id = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
        ours = number_id in {None, "", self._number_id}
        context = {k: v for k, v in value.items() if k not in {"messages", "statuses", "errors"}}
        messages = [
            await self._inbound(item, {**context, "messages": [item]}, ours=ours)
            for item in _items(value, "messages")
        ]
        statuses: list[StatusReport] = []
        untracked: list[Any] = []
        for item in _items(value, "statuses"):
            report = _status(item) if ours else None
            if report is None:
                untracked.append(item)
            else:
                statuses.append(report)
        if untracked or value.get("errors"):
            leftover = {**context, "statuses": untracked, "errors": value.get("errors") or []}
            reason = "status reports not tracked" if untracked else "errors reported"
            if not ours:
                reason += " (for another phone number of the account)"
            messages.append(self._leftover(leftover, reason))
        return messages, statuses

    def _leftover(self, raw: dict[str, Any], reason: str) -> InboundMessage:
        digest = hashlib.sha256(msgspec.json.encode(raw)).hexdigest()[:40]
        return self.ignored(f"change:{digest}", raw, reason)

    async def _inbound(self, item: Any, raw: dict[str, Any], *, ours: bool) -> InboundMessage:
        try:
            message = msgspec.convert(item, _Message)
        except msgspec.ValidationError as exc:
            return self._leftover(raw, f"unreadable message: {exc}")
        if not ours:
            return self.ignored(message.id, raw, "sent to another phone number of the account")
        try:
            number = from_provider(message.sender)
            text, media = await self._content(message, number)
            if text is None:
                return self.ignored(message.id, raw, f"unsupported message type: {message.type}")
            text = require_text(text, self._max_inbound_chars, has_media=bool(media))
        except InvalidInput as exc:
            return self.ignored(message.id, raw, exc.detail)
        return InboundMessage(
            channel=self.name,
            external_id=message.id,
            conversation_key=number,
            sender=number,
            sender_name=_profile_name(raw.get("contacts"), message.sender),
            identity_kind=self.identity.name,
            text=text,
            media=media,
            raw=raw,
        )

    async def _content(
        self, message: _Message, number: str
    ) -> tuple[str | None, tuple[Media, ...]]:
        """(text, media) of a message; text None for a kind nobody acts on."""
        if message.type == "text":
            return str(message.text.get("body") or ""), ()
        chosen = message.interactive and (
            message.interactive.button_reply or message.interactive.list_reply
        )
        if message.type == "interactive" and chosen:
            picked = await self._buttons.resolve(chosen.id, number)
            if picked is None:
                raise InvalidInput("forged or stale button")
            return picked, ()
        if message.type == "button":  # a template's quick-reply button: its label is the answer
            return str(message.button.get("text") or ""), ()
        attached = getattr(message, message.type, None) if message.type in MEDIA_TYPES else None
        if isinstance(attached, _Media) and attached.id:
            media = Media(url=f"whatsapp-media:{attached.id}", content_type=attached.mime_type)
            return attached.caption, (media,)
        return None, ()

    # -- outbound --------------------------------------------------------------------------

    async def send(self, message: OutboundMessage) -> Delivered:
        return await send_in_window(
            message,
            [functools.partial(self._post, body, message) for body in self._bodies(message)],
            template=functools.partial(self._template, message),
        )

    def _bodies(self, message: OutboundMessage) -> list[dict[str, Any]]:
        """What one reply is made of, in order: its text (with buttons), then its media."""
        bodies: list[dict[str, Any]] = []
        choices = message.choices if message.message_id is not None else ()
        text = message.text
        if choices:
            interactive = self._interactive(message, choices, text)
            if interactive is None:  # too long to carry buttons: the text, then the buttons
                bodies.append(_text(text))
                interactive = self._interactive(message, choices, "⬆")
            assert interactive is not None
            bodies.append({"type": "interactive", "interactive": interactive})
        elif text:
            bodies.append(_text(text))
        for media in message.media:
            kind = media.content_type.split("/", 1)[0]
            kind = kind if kind in {"image", "audio", "video"} else "document"
            bodies.append({"type": kind, kind: {"link": media.url}})
        return bodies

    def _interactive(
        self, message: OutboundMessage, choices: tuple[Choice, ...], text: str
    ) -> dict[str, Any] | None:
        assert message.message_id is not None
        key = message.conversation_key
        tokens = [self._buttons.issue(key, message.message_id, n) for n in range(len(choices))]
        if len(choices) <= MAX_BUTTONS:
            if len(text) > BUTTON_BODY_CHARS:
                return None
            titles = _titles(choices, BUTTON_TITLE_CHARS)
            buttons = [
                {"type": "reply", "reply": {"id": token, "title": title}}
                for token, title in zip(tokens, titles, strict=True)
            ]
            return {"type": "button", "body": {"text": text}, "action": {"buttons": buttons}}
        if len(choices) > MAX_ROWS:
            log.warning("a list shows %d choices; %d dropped", MAX_ROWS, len(choices) - MAX_ROWS)
        titles = _titles(choices[:MAX_ROWS], ROW_TITLE_CHARS)
        options = say("button.options", message.language)
        rows = [
            {"id": token, "title": title, "description": _cut(c.text, ROW_DESCRIPTION_CHARS)}
            for token, title, c in zip(tokens, titles, choices[:MAX_ROWS], strict=False)
        ]
        return {
            "type": "list",
            "body": {"text": text},
            "action": {"button": options, "sections": [{"title": options, "rows": rows}]},
        }

    async def _template(self, message: OutboundMessage) -> Delivered:
        template = msgspec.convert(message.template, CloudTemplate)
        body: dict[str, Any] = {"name": template.name, "language": {"code": template.language}}
        if template.components:
            body["components"] = fill_template(template.components, message)
        return await self._post({"type": "template", "template": body}, message)

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:  # created in the running loop
            self._http = httpx.AsyncClient(
                timeout=self._settings.timeout_s,
                headers={"Authorization": f"Bearer {self._settings.access_token}"},
            )
        return self._http

    async def _post(self, body: dict[str, Any], message: OutboundMessage) -> Delivered:
        payload = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": message.conversation_key,
            **body,
        }
        if message.message_id is not None:
            payload["biz_opaque_callback_data"] = f"{OPAQUE_PREFIX}{message.message_id}"
        client = self._client()

        async def attempt() -> Delivered | TryAgain:
            await self._limiter.acquire(
                (f"whatsapp_cloud:{self._number_id}", self._settings.rate_per_s)
            )
            try:
                response = await client.post(self._url, json=payload)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                return TryAgain(f"cannot reach the Graph API: {exc}")  # nothing was sent
            except httpx.HTTPError as exc:
                # The request may have reached Meta: retrying could send it twice.
                return unknown_outcome(exc)
            if response.is_success:
                return Delivered(status=Delivery.QUEUED.value, external_id=_wamid(response))
            return _refused(response)

        return await with_retries(
            attempt,
            retries=self._settings.max_retries,
            backoff_s=self._settings.backoff_s,
            max_wait_s=MAX_RETRY_AFTER_S,
        )


def _refused(response: httpx.Response) -> Delivered | TryAgain:
    code, text, data = _graph_error(response)
    reason = _describe_error(code, text, data, status=response.status_code)
    if code in RATE_LIMITED or response.status_code == 429 or response.status_code >= 500:
        return TryAgain(reason, after_s=_retry_after(response))
    if code == REENGAGEMENT:
        raise WindowClosed(reason)  # Meta knows the window better than our clock
    return Delivered(status=Delivery.FAILED.value, error=reason)


def _items(value: dict[str, Any], key: str) -> list[Any]:
    items = value.get(key)
    return items if isinstance(items, list) else []


def _status(item: Any) -> StatusReport | None:
    """A report on one of our messages, or None for one we do not track or cannot read."""
    try:
        status = msgspec.convert(item, _Status)
    except msgspec.ValidationError:
        return None
    delivery = _STATUS.get(status.status)
    if delivery is None:
        return None
    opaque = status.biz_opaque_callback_data or ""
    ours = opaque.removeprefix(OPAQUE_PREFIX)
    error = status.errors[0] if status.errors else None
    return StatusReport(
        external_id=status.id,
        status=delivery.value,
        message_id=int(ours) if opaque.startswith(OPAQUE_PREFIX) and ours.isdigit() else None,
        error=_describe_error(error.code, error.title or error.message, error.error_data)
        if error
        else None,
    )


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": {"preview_url": False, "body": text}}


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _titles(choices: tuple[Choice, ...], limit: int) -> list[str]:
    """Choice labels cut to ``limit``, kept distinct (Meta refuses two equal titles)."""
    titles: list[str] = []
    for n, choice in enumerate(choices, start=1):
        title = _cut(choice.label, limit)
        if title in titles:
            tag = f"…{n}"
            title = choice.label[: limit - len(tag)].rstrip() + tag
        titles.append(title)
    return titles


def _profile_name(contacts: Any, wa_id: str) -> str | None:
    for contact in contacts if isinstance(contacts, list) else []:
        if isinstance(contact, dict) and contact.get("wa_id") == wa_id:
            profile = contact.get("profile")
            name = profile.get("name") if isinstance(profile, dict) else None
            return name if isinstance(name, str) and name else None
    return None


def _wamid(response: httpx.Response) -> str | None:
    try:
        return str(response.json()["messages"][0]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def _graph_error(response: httpx.Response) -> tuple[int | None, str, dict[str, Any]]:
    """(code, message, error_data) of Graph's ``{"error": {...}}`` envelope."""
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        return None, response.text[:200], {}
    code = error.get("code")
    data = error.get("error_data")
    return (
        code if isinstance(code, int) else None,
        str(error.get("message") or ""),
        data if isinstance(data, dict) else {},
    )


def _describe_error(
    code: int | None, text: str, data: dict[str, Any], *, status: int | None = None
) -> str:
    http = f" (HTTP {status})" if status is not None else ""
    details = data.get("details")
    return f"whatsapp_cloud {code}{http}: {text}" + (f" — {details}" if details else "")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.replace(".", "", 1).isdigit() else None
