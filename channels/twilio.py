"""WhatsApp through Twilio: signed webhooks in, the official ``Client`` out.

Inbound: ``X-Twilio-Signature`` is checked with twilio's own ``RequestValidator`` against the URL
Twilio called, rebuilt from ``SWITCHBOARD_PUBLIC_URL`` + path + query (so it holds behind a
TLS-terminating proxy), and the ``AccountSid`` must be ours. Single senders and Messaging
Services both sign the same way, so both pass.

Outbound: ``messages.create`` through ``AsyncTwilioHttpClient`` with the API base URL from
settings; 429 and 5xx are retried with exponential backoff and jitter, other 4xx are final; sends
are paced per sender; outside WhatsApp's 24-hour window a configured template is sent instead of
free-form text, or the reply fails with that reason.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import logging
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlencode

import aiohttp
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from channels.backoff import backoff
from channels.base import ChannelAdapter, RawRequest
from channels.messages import Delivered, InboundMessage, Media, OutboundMessage, Template
from channels.phone import to_e164
from channels.ratelimit import RateLimiter
from channels.validation import require_text
from dispatch.models import Delivery
from gateway.errors import ForbiddenError, InvalidInput
from gateway.settings import TwilioSettings

__all__ = ["TwilioChannel", "TwilioStatus", "twiml_empty"]

log = logging.getLogger("switchboard.twilio")

WINDOW = dt.timedelta(hours=24)
OUTSIDE_WINDOW = 63016
MAX_MEDIA = 10
SIGNATURE_HEADER = "x-twilio-signature"

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


def twiml_empty() -> str:
    return '<?xml version="1.0" encoding="UTF-8"?><Response/>'


class _Params(dict[str, list[str]]):
    """Form values in the shape ``RequestValidator`` reads repeated keys from."""

    def getlist(self, name: str) -> list[str]:
        return self[name]


class TwilioStatus:
    """A parsed status callback."""

    def __init__(self, message_id: int | None, sid: str, status: Delivery, error: str | None):
        self.message_id = message_id
        self.sid = sid
        self.status = status
        self.error = error


class TwilioChannel(ChannelAdapter):
    name: ClassVar[str] = "whatsapp"
    max_text_chars: ClassVar[int | None] = 1600

    def __init__(
        self,
        *,
        settings: TwilioSettings,
        public_url: str,
        limiter: RateLimiter,
        max_text_chars: int,
    ) -> None:
        assert settings.account_sid is not None
        assert settings.auth_token is not None
        self._settings = settings
        self._account_sid = settings.account_sid
        self._public_url = public_url.rstrip("/")
        self._validator = RequestValidator(settings.auth_token)
        self._limiter = limiter
        self._max_inbound_chars = max_text_chars
        self._http: AsyncTwilioHttpClient | None = None
        self._client: Client | None = None

    # -- inbound ---------------------------------------------------------------------------

    def public_url_of(self, request: RawRequest) -> str:
        """The URL Twilio signed: our public base URL + the path and query it called."""
        query = f"?{request.query}" if request.query else ""
        return f"{self._public_url}{request.path}{query}"

    async def verify(self, request: RawRequest) -> None:
        signature = request.headers.get(SIGNATURE_HEADER)
        if not signature:
            raise ForbiddenError("missing X-Twilio-Signature")
        params = _Params(request.form())
        if not self._validator.validate(self.public_url_of(request), params, signature):
            raise ForbiddenError("invalid X-Twilio-Signature")
        account = params.get("AccountSid", [""])[0]
        if not hmac.compare_digest(account.encode(), self._account_sid.encode()):
            raise ForbiddenError("AccountSid is not this gateway's account")

    async def parse(self, request: RawRequest) -> InboundMessage:
        form = request.form()
        fields = {key: values[0] for key, values in form.items()}
        sid = fields.get("MessageSid") or fields.get("SmsMessageSid")
        if not sid:
            raise InvalidInput("MessageSid is missing")
        sender_raw = fields.get("From", "")
        if not sender_raw.startswith("whatsapp:"):
            # SMS or another product pointed at this webhook: keep it, answer nothing.
            return InboundMessage(
                channel=self.name,
                external_id=sid,
                conversation_key=sender_raw or "unknown",
                sender=sender_raw or "unknown",
                text=fields.get("Body", ""),
                raw=fields,
                ignored="not a WhatsApp message",
            )
        number = to_e164(sender_raw)
        media = self._media(fields)
        text = require_text(fields.get("Body", ""), self._max_inbound_chars, has_media=bool(media))
        return InboundMessage(
            channel=self.name,
            external_id=sid,
            conversation_key=number,
            sender=number,
            sender_name=fields.get("ProfileName") or None,
            text=text,
            media=media,
            raw=fields,
        )

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

    def parse_status(self, request: RawRequest) -> TwilioStatus | None:
        """A status callback, or None for one that reports nothing we track."""
        form = request.form()
        fields = {key: values[0] for key, values in form.items()}
        status = _STATUS.get(fields.get("MessageStatus", "").lower())
        sid = fields.get("MessageSid") or ""
        if status is None or not sid:
            return None
        message_id = None
        ours = parse_qs(request.query).get("m", [""])[0]
        if ours.isdigit():
            message_id = int(ours)
        code = fields.get("ErrorCode")
        error = f"twilio {code}" if code else None
        return TwilioStatus(message_id, sid, status, error)

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
        params: dict[str, Any] = {"to": f"whatsapp:{message.conversation_key}"}
        if self._settings.messaging_service_sid:
            params["messaging_service_sid"] = self._settings.messaging_service_sid
        else:
            params["from_"] = self._settings.whatsapp_from
        if message.message_id is not None:
            params["status_callback"] = (
                f"{self._public_url}/webhooks/twilio/status?{urlencode({'m': message.message_id})}"
            )
        return params

    @staticmethod
    def _template_params(message: OutboundMessage, template: Template) -> dict[str, Any]:
        values = {"text": message.text, "activity_id": message.activity_id or ""}
        variables = {key: value.format(**values) for key, value in template.variables.items()}
        return {"content_sid": template.content_sid, "content_variables": json.dumps(variables)}

    async def send(self, message: OutboundMessage) -> Delivered:
        base = self._base_params(message)
        outside = message.last_inbound_at is not None and (
            dt.datetime.now(dt.UTC) - message.last_inbound_at > WINDOW
        )
        if outside:
            if message.template is None:
                return Delivered(
                    status=Delivery.FAILED.value,
                    error="outside WhatsApp's 24-hour window and no template is configured "
                    "for this reply",
                )
            return await self._create({**base, **self._template_params(message, message.template)})
        media = [m.url for m in message.media]
        first: dict[str, Any] = {**base, "body": message.text}
        if media:
            first["media_url"] = media[:1]  # WhatsApp carries one attachment per message
        delivered = await self._create(first, template_fallback=message)
        for url in media[1:]:
            if delivered.status == Delivery.FAILED:
                break
            extra = await self._create({**base, "media_url": [url]})
            if extra.status == Delivery.FAILED:
                return extra
        return delivered

    async def _create(
        self, params: dict[str, Any], *, template_fallback: OutboundMessage | None = None
    ) -> Delivered:
        client = self._api()
        attempt = 0
        while True:
            await self._limiter.acquire((f"twilio:{self._sender_key}", self._settings.rate_per_s))
            try:
                created = await client.messages.create_async(**params)
            except TwilioRestException as exc:
                retryable = exc.status == 429 or exc.status >= 500
                if retryable and attempt < self._settings.max_retries:
                    await backoff(attempt, self._settings.backoff_s)
                    attempt += 1
                    continue
                if (
                    exc.code == OUTSIDE_WINDOW
                    and template_fallback is not None
                    and template_fallback.template is not None
                ):
                    # Twilio knows the window better than our clock: switch to the template.
                    fallback = {k: v for k, v in params.items() if k not in {"body", "media_url"}}
                    fallback.update(
                        self._template_params(template_fallback, template_fallback.template)
                    )
                    return await self._create(fallback)
                return Delivered(status=Delivery.FAILED.value, error=_describe(exc))
            except aiohttp.ClientConnectorError as exc:
                # Nothing reached Twilio: safe to try again.
                if attempt < self._settings.max_retries:
                    await backoff(attempt, self._settings.backoff_s)
                    attempt += 1
                    continue
                return Delivered(status=Delivery.FAILED.value, error=f"cannot reach Twilio: {exc}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                # The request may have reached Twilio: retrying could send it twice.
                return Delivered(
                    status=Delivery.FAILED.value,
                    error=f"outcome unknown, not retried ({type(exc).__name__})",
                )
            status = _STATUS.get(str(created.status or "queued"), Delivery.QUEUED)
            return Delivered(status=status.value, external_id=created.sid)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


def _describe(exc: TwilioRestException) -> str:
    message = str(exc.msg).removeprefix("Unable to create record: ")
    return f"twilio {exc.code} (HTTP {exc.status}): {message}"
