"""Signing Twilio webhooks the way Twilio does, with twilio's own RequestValidator."""

from __future__ import annotations

import hashlib
import re
from typing import Any
from urllib.parse import urlencode

from twilio.request_validator import RequestValidator

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "test-auth-token-0123456789abcdef"
WHATSAPP_FROM = "whatsapp:+14155238886"
PUBLIC_URL = "https://bot.example.com"
SERVICE_SID = "MG" + "fedcba9876543210" * 2


def twilio_env(api_url: str, **extra: Any) -> dict[str, Any]:
    """Keyword arguments for the ``make_settings``/``make_env`` fixtures."""
    return {
        "twilio_account_sid": ACCOUNT_SID,
        "twilio_auth_token": AUTH_TOKEN,
        "twilio_whatsapp_from": WHATSAPP_FROM,
        "twilio_api_url": api_url,
        "twilio_backoff_s": "0.01",
        "public_url": PUBLIC_URL,
        **extra,
    }


def message_sid(label: str) -> str:
    """A real-shaped MessageSid (``SM`` and 32 hex digits) standing for ``label``."""
    if re.fullmatch(r"(SM|MM)[0-9a-f]{32}", label):
        return label
    return "SM" + hashlib.md5(label.encode()).hexdigest()


def inbound_form(
    text: str, *, sid: str, sender: str = "whatsapp:+34600111222", **extra: str
) -> dict[str, str]:
    sid = message_sid(sid)
    form = {
        "SmsMessageSid": sid,
        "NumMedia": "0",
        "ProfileName": "Ana",
        "SmsSid": sid,
        "WaId": sender.removeprefix("whatsapp:+"),
        "SmsStatus": "received",
        "Body": text,
        "To": WHATSAPP_FROM,
        "NumSegments": "1",
        "MessageSid": sid,
        "AccountSid": ACCOUNT_SID,
        "From": sender,
        "ApiVersion": "2010-04-01",
    }
    form.update(extra)
    return form


def signed(
    form: dict[str, str],
    *,
    path: str = "/webhooks/twilio",
    query: str = "",
    signed_url: str | None = None,
    token: str = AUTH_TOKEN,
) -> tuple[str, bytes, dict[str, str]]:
    """(request path with query, body, headers) for a webhook Twilio would send."""
    target = path + (f"?{query}" if query else "")
    url = signed_url if signed_url is not None else PUBLIC_URL + target
    signature = RequestValidator(token).compute_signature(url, form)
    headers = {
        "content-type": "application/x-www-form-urlencoded",
        "x-twilio-signature": signature,
    }
    return target, urlencode(form).encode(), headers
