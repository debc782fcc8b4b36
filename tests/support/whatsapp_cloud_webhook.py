"""Webhook calls the way Meta makes them: ``entry[].changes[].value`` payloads, signed with the
app secret in ``X-Hub-Signature-256``."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from typing import Any

from tests.support.graph_api import ACCESS_TOKEN, PHONE_NUMBER_ID

APP_SECRET = "0123456789abcdef0123456789abcdef"
VERIFY_TOKEN = "verify-me-please"
WABA_ID = "102290129340398"
PATH = "/webhooks/whatsapp-cloud"


def cloud_env(api_url: str, **extra: Any) -> dict[str, Any]:
    """Keyword arguments for the ``make_settings``/``make_env`` fixtures."""
    return {
        "whatsapp_cloud_phone_number_id": PHONE_NUMBER_ID,
        "whatsapp_cloud_access_token": ACCESS_TOKEN,
        "whatsapp_cloud_app_secret": APP_SECRET,
        "whatsapp_cloud_verify_token": VERIFY_TOKEN,
        "whatsapp_cloud_api_url": api_url,
        "whatsapp_cloud_backoff_s": "0.01",
        **extra,
    }


def wamid() -> str:
    return "wamid." + uuid.uuid4().hex


def text(body: str, *, sender: str = "34600111222", id: str | None = None) -> dict[str, Any]:
    return message("text", {"text": {"body": body}}, sender=sender, id=id)


def message(
    kind: str, content: dict[str, Any], *, sender: str = "34600111222", id: str | None = None
) -> dict[str, Any]:
    return {
        "from": sender,
        "id": id or wamid(),
        "timestamp": str(int(time.time())),
        "type": kind,
        **content,
    }


def status(
    external_id: str,
    state: str,
    *,
    ours: int | None = None,
    recipient: str = "34600111222",
    errors: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "id": external_id,
        "status": state,
        "timestamp": str(int(time.time())),
        "recipient_id": recipient,
    }
    if ours is not None:
        report["biz_opaque_callback_data"] = f"sb:{ours}"
    if errors:
        report["errors"] = errors
    return report


def notification(
    *values: dict[str, Any], phone_number_id: str = PHONE_NUMBER_ID, field: str = "messages"
) -> dict[str, Any]:
    """One entry with one change per value (``messages``, ``statuses``, ``contacts``)."""
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": WABA_ID,
                "changes": [
                    {
                        "field": field,
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550001111",
                                "phone_number_id": phone_number_id,
                            },
                            **value,
                        },
                    }
                    for value in values
                ],
            }
        ],
    }


def messages(*items: dict[str, Any], name: str = "Ana") -> dict[str, Any]:
    """A ``value`` carrying ``items`` from their senders, with profile names."""
    senders = sorted({item["from"] for item in items})
    return {
        "contacts": [{"profile": {"name": name}, "wa_id": sender} for sender in senders],
        "messages": list(items),
    }


def signed(payload: Any, *, secret: str = APP_SECRET) -> tuple[bytes, dict[str, str]]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return body, {"content-type": "application/json", "x-hub-signature-256": f"sha256={digest}"}
