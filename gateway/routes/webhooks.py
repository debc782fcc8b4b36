"""Provider webhooks: verify, store, acknowledge at once; the work happens in jobs."""

from __future__ import annotations

from typing import Any

from litestar import MediaType, Request, Response, post
from litestar.background_tasks import BackgroundTask
from litestar.di import NamedDependency

from channels.base import RawRequest
from channels.telegram import STALE_BUTTON
from gateway.errors import NotFoundError
from gateway.services import Services

__all__ = ["raw_request", "telegram_inbound", "twilio_inbound", "twilio_status"]


async def raw_request(request: Request[Any, Any, Any]) -> RawRequest:
    return RawRequest(
        path=request.url.path,
        query=request.scope.get("query_string", b"").decode("latin-1"),
        headers={k.lower(): v for k, v in request.headers.items()},
        body=await request.body(),
    )


def _twiml() -> Response[str]:
    from channels.twilio import twiml_empty

    return Response(twiml_empty(), media_type=MediaType.XML, status_code=200)


@post("/webhooks/twilio", tags=["webhooks"], status_code=200)
async def twilio_inbound(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> Response[str]:
    """Twilio's incoming-message webhook: 403 unless signed by our account; 200 and an empty
    TwiML response as soon as the message is stored (a retry of the same MessageSid is a no-op)."""
    if "whatsapp" not in services.channels:
        raise NotFoundError("the WhatsApp channel is not configured")
    raw = await raw_request(request)
    channel = services.twilio
    await channel.verify(raw)
    await services.dispatcher.ingest(await channel.parse(raw))
    return _twiml()


@post("/webhooks/twilio/status", tags=["webhooks"], status_code=200)
async def twilio_status(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> Response[str]:
    """Twilio's status callback: moves the outbound message's delivery status forward only."""
    if "whatsapp" not in services.channels:
        raise NotFoundError("the WhatsApp channel is not configured")
    raw = await raw_request(request)
    channel = services.twilio
    await channel.verify(raw)
    report = channel.parse_status(raw)
    if report is not None:
        message_id = report.message_id or await services.store.outbound_by_external_id(
            channel.name, report.sid
        )
        if message_id is not None:
            await services.store.update_delivery(
                message_id, report.status, external_id=report.sid, error=report.error
            )
    return _twiml()


@post("/webhooks/telegram", tags=["webhooks"], status_code=200)
async def telegram_inbound(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> Response[dict[str, bool]]:
    """Telegram's webhook: 403 without our secret token; 200 once stored, for every update
    (ones we do not handle are kept as ignored, so Telegram never retries them)."""
    if "telegram" not in services.channels:
        raise NotFoundError("the Telegram channel is not configured")
    raw = await raw_request(request)
    channel = services.telegram
    await channel.verify(raw)
    inbound = await channel.parse(raw)
    await services.dispatcher.ingest(inbound)
    query_id = channel.callback_query_id(inbound)
    background = None
    if query_id is not None:
        # Stop the button's spinner after answering Telegram, never before.
        text = STALE_BUTTON if inbound.ignored else None
        background = BackgroundTask(channel.answer_callback, query_id, text)
    return Response({"ok": True}, status_code=200, background=background)
