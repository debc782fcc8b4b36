"""WhatsApp through Twilio: signed webhooks in, the official ``Client`` out.

Inbound: ``X-Twilio-Signature`` is checked with twilio's own ``RequestValidator`` against the URL
Twilio called, rebuilt from ``SWITCHBOARD_PUBLIC_URL`` + path + query (so it holds behind a
TLS-terminating proxy), and the ``AccountSid`` must be ours. Single senders and Messaging
Services both sign the same way, so both pass. Status callbacks arrive on their own path.

Outbound: ``messages.create`` through ``AsyncTwilioHttpClient`` with the API base URL from
settings; 429 and 5xx are retried with exponential backoff and jitter, other 4xx are final; sends
are paced per sender; outside WhatsApp's 24-hour window the action's template (a Content SID and
its variables) is sent instead of free-form text, or the reply fails with that reason.
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
import json
import logging
import re
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import urlencode, urlparse

import aiohttp
import msgspec
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator, add_port, remove_port
from twilio.rest import Client

from channels import base
from channels.retry import TryAgain, unknown_outcome, with_retries
from channels.templates import fill_template
from channels.validation import require_text
from channels.whatsapp import WHATSAPP, WindowClosed, send_in_window
from dispatch.infra.config import (
    NOT_NEGATIVE,
    POSITIVE,
    PREFIX,
    CoreSettings,
    HttpUrl,
    Matches,
    setting,
)
from dispatch.infra.errors import ForbiddenError, InvalidInput, SettingsError
from dispatch.infra.phone import from_provider, to_e164
from dispatch.record.messages import Delivered, InboundMessage, Media, OutboundMessage, StatusReport
from dispatch.record.models import Delivery
from dispatch.record.users import IdentityKind

__all__ = ["TwilioChannel", "TwilioSettings", "TwilioTemplate"]

log = logging.getLogger("switchboard.twilio")

OUTSIDE_WINDOW = 63016
MAX_MEDIA = 10
SIGNATURE_HEADER = "x-twilio-signature"
WHATSAPP_PREFIX = "whatsapp:"
"""How Twilio writes a WhatsApp address: ``whatsapp:+34600111222``."""
INBOUND_PATH = "/webhooks/twilio"
STATUS_PATH = "/webhooks/twilio/status"
TWIML_EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response/>'

_SID = re.compile(r"(SM|MM)[0-9a-f]{32}")
_REQUIRED = ("AccountSid", "From", "To", "NumMedia")

# Twilio's MessageStatus values → ours.
_STATUS = {
    "accepted": Delivery.QUEUED,
    "scheduled": Delivery.QUEUED,
    "queued": Delivery.QUEUED,
    "sending": Delivery.QUEUED,
    "sent": Delivery.SENT,
    "delivered": Delivery.DELIVERED,
    "read": Delivery.READ,
    "undelivered": Delivery.UNDELIVERED,
    "failed": Delivery.FAILED,
}


@dataclasses.dataclass(frozen=True)
class TwilioSettings(base.ChannelSettings):
    """WhatsApp through Twilio. Enabled when the account SID is set."""

    account_sid: str | None = setting(
        None,
        "TWILIO_ACCOUNT_SID",
        "Twilio account SID (AC...).",
        check=Matches("AC[0-9a-fA-F]{32}", "AC followed by 32 hex digits"),
    )
    auth_token: str | None = setting(
        None,
        "TWILIO_AUTH_TOKEN",
        "Twilio auth token: signs webhooks, authenticates API calls.",
        secret=True,
    )
    whatsapp_from: str | None = setting(
        None,
        "TWILIO_WHATSAPP_FROM",
        "Sender for replies, whatsapp:+E164 (e.g. the sandbox number).",
    )
    messaging_service_sid: str | None = setting(
        None,
        "TWILIO_MESSAGING_SERVICE_SID",
        "Send replies through this Messaging Service (MG...) instead of a single sender.",
        check=Matches("MG[0-9a-fA-F]{32}", "MG followed by 32 hex digits"),
    )
    api_url: str = setting(
        "https://api.twilio.com",
        "TWILIO_API_URL",
        "Base URL of Twilio's REST API; calls go to {url}/2010-04-01/Accounts/...",
        check=HttpUrl(),
    )
    rate_per_s: float = setting(
        10.0,
        "TWILIO_RATE_PER_S",
        "Most messages per second sent from one sender (all workers).",
        check=POSITIVE,
    )
    max_retries: int = setting(
        4,
        "TWILIO_MAX_RETRIES",
        "Retries of a send refused with 429 or 5xx (4xx is final).",
        check=NOT_NEGATIVE,
    )
    backoff_s: float = setting(
        0.5,
        "TWILIO_BACKOFF_S",
        "First retry delay; doubles each retry, with jitter.",
        check=NOT_NEGATIVE,
    )
    timeout_s: float = setting(10.0, "TWILIO_TIMEOUT_S", "Timeout of one API call.", check=POSITIVE)

    @property
    def enabled(self) -> bool:
        return self.account_sid is not None

    def validate(self) -> None:
        if not self.enabled:
            return
        if not self.auth_token:
            raise SettingsError(PREFIX + "TWILIO_AUTH_TOKEN", "is required with an account SID")
        if self.whatsapp_from is None and self.messaging_service_sid is None:
            raise SettingsError(
                PREFIX + "TWILIO_WHATSAPP_FROM",
                "set it (or SWITCHBOARD_TWILIO_MESSAGING_SERVICE_SID) to send replies",
            )
        if self.whatsapp_from is not None and not _is_whatsapp_address(self.whatsapp_from):
            raise SettingsError(PREFIX + "TWILIO_WHATSAPP_FROM", "must be whatsapp:+E164")

    def check(self, core: CoreSettings) -> None:
        if self.enabled and core.public_url is None:
            raise SettingsError(
                PREFIX + "PUBLIC_URL",
                "is required with Twilio: webhook signatures are checked against it",
            )


def _is_whatsapp_address(value: str) -> bool:
    number = value.removeprefix(WHATSAPP_PREFIX)
    try:
        return value.startswith(WHATSAPP_PREFIX) and to_e164(number) == number
    except InvalidInput:
        return False


class TwilioTemplate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A Content template (``templates.whatsapp`` of a catalog action): its Content SID and
    its variables, format strings over ``{text}`` (the reply) and ``{activity_id}``."""

    content_sid: str
    variables: dict[str, str] = {}


class _Params(dict[str, list[str]]):
    """Form values in the shape ``RequestValidator`` reads repeated keys from: ``getall``, the
    first it tries (a miss there costs an exception per parameter), and ``getlist``."""

    def getall(self, name: str) -> list[str]:
        return self[name]

    getlist = getall


class TwilioChannel(base.WebhookChannel):
    name: ClassVar[str] = "whatsapp"
    identity: ClassVar[IdentityKind] = WHATSAPP
    max_text_chars: ClassVar[int | None] = 1600
    settings_type: ClassVar[type[base.ChannelSettings] | None] = TwilioSettings
    template_type: ClassVar[type[msgspec.Struct] | None] = TwilioTemplate
    webhook_paths: ClassVar[tuple[str, ...]] = (INBOUND_PATH, STATUS_PATH)
    credential_headers: ClassVar[tuple[str, ...]] = (SIGNATURE_HEADER,)

    def __init__(self, settings: TwilioSettings, context: base.ChannelContext) -> None:
        assert settings.account_sid is not None
        assert settings.auth_token is not None
        assert context.core.public_url is not None  # TwilioSettings.check
        self._settings = settings
        self._account_sid = settings.account_sid
        self._public_url = context.core.public_url.rstrip("/")
        self._validator = RequestValidator(settings.auth_token)
        self._limiter = context.limiter
        self._max_inbound_chars = context.core.max_text_chars
        self._http: AsyncTwilioHttpClient | None = None
        self._client: Client | None = None

    # -- inbound ---------------------------------------------------------------------------

    def public_url_of(self, request: base.RawRequest) -> str:
        """The URL Twilio signed: our public base URL + the path and query it called."""
        query = f"?{request.query}" if request.query else ""
        return f"{self._public_url}{request.path}{query}"

    async def verify(self, request: base.RawRequest) -> None:
        signature = request.headers.get(SIGNATURE_HEADER)
        if not signature:
            raise ForbiddenError("missing X-Twilio-Signature")
        params = _Params(request.form())
        repeated = sorted(name for name, values in params.items() if len(values) > 1)
        if repeated:
            # Twilio sends each parameter once: a second Body (or From, MessageSid…) is a
            # request with two readings, whichever one a signature covers.
            raise ForbiddenError(f"{', '.join(repeated)} sent more than once")
        if not self._signed(self.public_url_of(request), params, signature):
            raise ForbiddenError("invalid X-Twilio-Signature")
        account = params.get("AccountSid", [""])[0]
        if not hmac.compare_digest(account.encode(), self._account_sid.encode()):
            raise ForbiddenError("AccountSid is not this gateway's account")

    def _signed(self, url: str, params: _Params, signature: str) -> bool:
        """``RequestValidator.validate`` for a form post: the signature twilio's library
        computes for the URL without its port, else with it (Twilio signs either), compared
        in constant time; the second only if the first does not match (validate computes
        both every time)."""
        given = signature.encode()
        parsed = urlparse(url)
        return any(
            hmac.compare_digest(self._validator.compute_signature(uri, params).encode(), given)
            for uri in (remove_port(parsed), add_port(parsed))
        )

    def acknowledgement(self) -> base.WebhookReply:
        return base.WebhookReply(body=TWIML_EMPTY, media_type="application/xml")

    async def parse(self, request: base.RawRequest) -> base.Received:
        fields = {key: values[0] for key, values in request.form().items()}
        if request.path == STATUS_PATH:
            report = self._status(request, fields)
            return base.Received(statuses=(report,) if report else ())
        sid = _checked_shape(fields)
        sender_raw = fields["From"]
        if not sender_raw.startswith(WHATSAPP_PREFIX):
            # SMS or another product pointed at this webhook: keep it, answer nothing.
            ignored = self.ignored(sid, fields, "not a WhatsApp message", sender_raw or "unknown")
            return base.Received(messages=(ignored,))
        number = from_provider(sender_raw.removeprefix(WHATSAPP_PREFIX))
        media = self._media(fields)
        if not fields.get("Body", "").strip() and not media:
            # A shared location, a contact card: kept as it came, nothing to act on.
            ignored = self.ignored(sid, fields, "unsupported message content", number)
            return base.Received(messages=(ignored,))
        text = require_text(fields.get("Body", ""), self._max_inbound_chars, has_media=bool(media))
        inbound = InboundMessage(
            channel=self.name,
            external_id=sid,
            conversation_key=number,
            sender=number,
            sender_name=fields.get("ProfileName") or None,
            identity_kind=self.identity.name,
            text=text,
            media=media,
            raw=fields,
        )
        return base.Received(messages=(inbound,))

    @staticmethod
    def _media(fields: Mapping[str, str]) -> tuple[Media, ...]:
        try:
            count = int(fields.get("NumMedia") or 0)
        except ValueError:
            raise InvalidInput("NumMedia is not a number") from None
        if not 0 <= count <= MAX_MEDIA:
            raise InvalidInput(f"NumMedia must be 0-{MAX_MEDIA}")
        media: list[Media] = []
        for index in range(count):
            url = fields.get(f"MediaUrl{index}")
            if not url:
                raise InvalidInput(f"MediaUrl{index} is missing")
            content_type = fields.get(f"MediaContentType{index}") or "application/octet-stream"
            media.append(Media(url=url, content_type=content_type))
        return tuple(media)

    @staticmethod
    def _status(request: base.RawRequest, fields: Mapping[str, str]) -> StatusReport | None:
        """A status callback, or None for one that reports nothing we track."""
        status = _STATUS.get(fields.get("MessageStatus", "").lower())
        sid = fields.get("MessageSid") or ""
        if status is None or not _SID.fullmatch(sid):
            return None
        ours = request.params().get("m", [""])[0]
        code = fields.get("ErrorCode")
        return StatusReport(
            external_id=sid,
            status=status.value,
            message_id=int(ours) if ours.isdigit() else None,
            error=f"twilio {code}" if code else None,
        )

    # -- outbound --------------------------------------------------------------------------

    def _api(self) -> Client:
        if self._client is None:
            # Created lazily inside the running loop: aiohttp sessions belong to one loop.
            self._http = AsyncTwilioHttpClient(timeout=self._settings.timeout_s)
            client = Client(self._account_sid, self._settings.auth_token, http_client=self._http)
            client.api.base_url = self._settings.api_url.rstrip("/")
            self._client = client
        return self._client

    @property
    def _sender_key(self) -> str:
        return self._settings.messaging_service_sid or self._settings.whatsapp_from or ""

    def _base_params(self, message: OutboundMessage) -> dict[str, Any]:
        params: dict[str, Any] = {"to": f"{WHATSAPP_PREFIX}{message.conversation_key}"}
        if self._settings.messaging_service_sid:
            params["messaging_service_sid"] = self._settings.messaging_service_sid
        else:
            params["from_"] = self._settings.whatsapp_from
        if message.message_id is not None:
            query = urlencode({"m": message.message_id})
            params["status_callback"] = f"{self._public_url}{STATUS_PATH}?{query}"
        return params

    @staticmethod
    def _template_params(message: OutboundMessage) -> dict[str, Any]:
        template = msgspec.convert(message.template, TwilioTemplate)
        variables = fill_template(template.variables, message)
        return {"content_sid": template.content_sid, "content_variables": json.dumps(variables)}

    async def send(self, message: OutboundMessage) -> Delivered:
        base_params = self._base_params(message)
        media = [m.url for m in message.media]
        # WhatsApp carries one attachment per message: the first goes with the text.
        first = {**base_params, "body": message.text, **({"media_url": media[:1]} if media else {})}
        parts = [first, *({**base_params, "media_url": [url]} for url in media[1:])]
        template = {**base_params, **self._template_params(message)} if message.template else {}
        return await send_in_window(
            message,
            [functools.partial(self._create, part) for part in parts],
            template=functools.partial(self._create, template),
        )

    async def _create(self, params: dict[str, Any]) -> Delivered:
        client = self._api()

        async def attempt() -> Delivered | TryAgain:
            await self._limiter.acquire((f"twilio:{self._sender_key}", self._settings.rate_per_s))
            try:
                created = await client.messages.create_async(**params)
            except TwilioRestException as exc:
                return _refused(exc)
            except aiohttp.ClientConnectorError as exc:
                return TryAgain(f"cannot reach Twilio: {exc}")  # nothing reached Twilio
            except (aiohttp.ClientError, TimeoutError) as exc:
                # The request may have reached Twilio: retrying could send it twice.
                return unknown_outcome(exc)
            status = _STATUS.get(str(created.status or "queued"), Delivery.QUEUED)
            return Delivered(status=status.value, external_id=created.sid)

        return await with_retries(
            attempt, retries=self._settings.max_retries, backoff_s=self._settings.backoff_s
        )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


def _checked_shape(fields: Mapping[str, str]) -> str:
    """The MessageSid, once Twilio's fields have the shape Twilio gives them.

    The signature joins names and values with no separator, so a captured request can be
    re-cut (``MessageSid=<sid>NumMedia0`` with ``NumMedia`` removed) and still verify: the
    shape check after it is what refuses such a request as a new message.
    """
    sid = fields.get("MessageSid", "")
    if not _SID.fullmatch(sid):
        raise InvalidInput("MessageSid is not a Twilio message SID")
    for alias in ("SmsMessageSid", "SmsSid"):
        if alias in fields and fields[alias] != sid:
            raise InvalidInput(f"{alias} does not match MessageSid")
    missing = [name for name in _REQUIRED if not fields.get(name)]
    if missing:
        raise InvalidInput(f"missing {', '.join(missing)}")
    if not fields["NumMedia"].isdigit():
        raise InvalidInput("NumMedia is not a number")
    return sid


def _refused(exc: TwilioRestException) -> Delivered | TryAgain:
    if exc.status == 429 or exc.status >= 500:
        return TryAgain(_describe(exc))
    if exc.code == OUTSIDE_WINDOW:
        raise WindowClosed(_describe(exc))  # Twilio knows the window better than our clock
    return Delivered(status=Delivery.FAILED.value, error=_describe(exc))


def _describe(exc: TwilioRestException) -> str:
    message = str(exc.msg).removeprefix("Unable to create record: ")
    return f"twilio {exc.code} (HTTP {exc.status}): {message}"
