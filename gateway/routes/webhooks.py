"""Every provider webhook, one route: find the channel by path, verify, store, acknowledge.

The channel decides what its paths mean (``channels.base.WebhookChannel``); the work happens in
jobs. A path no configured channel takes is a 404; a GET on a path whose channel takes no
subscription check is a 405.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from litestar import Request, Response, get, post
from litestar.background_tasks import BackgroundTask
from litestar.di import NamedDependency
from litestar.exceptions import MethodNotAllowedException

from channels.base import RawRequest, WebhookReply
from gateway.inbound import Inbound

__all__ = ["webhook_get", "webhook_post"]

PATH = "/webhooks/{hook:path}"


async def _raw(request: Request[Any, Any, Any]) -> RawRequest:
    names = [name.decode("latin-1").lower() for name, _ in request.scope["headers"]]
    return RawRequest(
        method=request.method,
        path=request.url.path,
        query=request.scope.get("query_string", b"").decode("latin-1"),
        headers={k.lower(): v for k, v in request.headers.items()},
        body=await request.body(),
        repeated=frozenset(name for name, seen in Counter(names).items() if seen > 1),
    )


def _response(reply: WebhookReply, background: BackgroundTask | None = None) -> Response[str]:
    return Response(
        reply.body,
        media_type=reply.media_type,
        status_code=reply.status_code,
        background=background,
    )


@post(PATH, tags=["webhooks"], status_code=200, include_in_schema=False)
async def webhook_post(
    request: Request[Any, Any, Any], inbound: NamedDependency[Inbound]
) -> Response[str]:
    """403 unless the provider really sent it; 2xx as soon as everything it carries is stored
    (a provider's retry of the same message stores nothing more)."""
    channel, received = await inbound.receive(await _raw(request))
    background = BackgroundTask(received.follow_up) if received.follow_up else None
    return _response(channel.acknowledgement(), background)


@get(PATH, tags=["webhooks"], include_in_schema=False)
async def webhook_get(
    request: Request[Any, Any, Any], inbound: NamedDependency[Inbound]
) -> Response[str]:
    """A provider's subscription check (Meta's ``hub.challenge``)."""
    raw = await _raw(request)
    reply = inbound.channel(raw.path).handshake(raw)
    if reply is None:
        raise MethodNotAllowedException(detail=f"{raw.path} takes POST only")
    return _response(reply)
