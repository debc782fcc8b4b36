"""Every provider webhook, one route: find the channel by path, verify, store, acknowledge.

The channel decides what its paths mean (``channels.base.WebhookChannel``); the work happens in
jobs. A path no configured channel takes is a 404; a GET on a path whose channel takes no
subscription check is a 405.

This is the gateway's hot path, so it is a plain ASGI handler: litestar routes to it and its
middleware (the request deadline, errors mapped in one place) wraps it as any route, but no
request object, dependency resolution or response object is built per call. It reads the body
under the same size limit litestar enforces elsewhere (``SWITCHBOARD_MAX_BODY_BYTES``: 413).
"""

from __future__ import annotations

from collections import Counter
from typing import cast

from litestar import asgi
from litestar.enums import ScopeType
from litestar.exceptions import (
    ClientException,
    MethodNotAllowedException,
    NotFoundException,
)
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.types import (
    HTTPReceiveMessage,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    HTTPScope,
    Receive,
    Scope,
    Send,
)

from channels.base import RawRequest, WebhookReply
from gateway.inbound import Inbound

__all__ = ["webhooks"]

MOUNT = "/webhooks"
ALLOW = "GET, OPTIONS, POST"


@asgi(MOUNT, is_mount=True, include_in_schema=False, copy_scope=False)
async def webhooks(scope: Scope, receive: Receive, send: Send) -> None:
    """POST: 403 unless the provider really sent it; 2xx as soon as everything it carries is
    stored (a provider's retry of the same message stores nothing more), then the follow-up the
    channel asks for. GET: a provider's subscription check (Meta's ``hub.challenge``)."""
    if scope["type"] != ScopeType.HTTP:
        raise NotFoundException()
    # Mounted: litestar leaves the path below the mount, with a trailing slash. The whole path
    # back in the scope, for the channel and for whatever logs or answers an error.
    scope["path"] = MOUNT + scope["path"].rstrip("/")
    app = scope["litestar_app"]
    inbound: Inbound = app.state.inbound
    method = scope["method"]
    if method == "POST":
        raw = await _raw(scope, receive, app.state.settings.core.max_body_bytes)
        channel, received = await inbound.receive(raw)
        await _answer(send, channel.acknowledgement())
        if received.follow_up:
            await received.follow_up()
    elif method == "GET":
        raw = await _raw(scope, receive, app.state.settings.core.max_body_bytes)
        reply = inbound.channel(raw.path).handshake(raw)
        if reply is None:
            raise MethodNotAllowedException(
                detail=f"{raw.path} takes POST only", headers={"Allow": "OPTIONS, POST"}
            )
        await _answer(send, reply)
    elif method == "OPTIONS":
        await _answer(send, WebhookReply(status_code=204), (b"allow", ALLOW.encode()))
    else:
        raise MethodNotAllowedException(headers={"Allow": ALLOW})


async def _raw(scope: HTTPScope, receive: Receive, limit: int) -> RawRequest:
    names = [name.decode("latin-1").lower() for name, _ in scope["headers"]]
    headers = {
        name: value.decode("latin-1")
        for name, (_, value) in zip(names, scope["headers"], strict=True)
    }
    return RawRequest(
        method=scope["method"],
        path=scope["path"],
        query=scope.get("query_string", b"").decode("latin-1"),
        headers=headers,
        body=await _body(receive, headers.get("content-length"), limit),
        repeated=frozenset(name for name, seen in Counter(names).items() if seen > 1)
        if len(names) != len(headers)
        else frozenset(),
    )


async def _body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The request's body, at most ``limit`` bytes (413 past it, as litestar's own reader)."""
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise ClientException(f"Invalid content-length: {declared!r}") from None
        if length > limit:
            raise RequestEntityTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        event = cast("HTTPReceiveMessage", await receive())
        if event["type"] == "http.disconnect":
            raise ClientException("client disconnected prematurely")
        chunk = event.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise RequestEntityTooLarge
            chunks.append(chunk)
        if not event.get("more_body", False):
            return b"".join(chunks)


async def _answer(send: Send, reply: WebhookReply, *extra: tuple[bytes, bytes]) -> None:
    body = b"" if reply.status_code == 204 else reply.body.encode()
    media = reply.media_type
    content_type = f"{media}; charset=utf-8" if media.startswith("text/") else media
    headers = [(b"content-type", content_type.encode())]
    if reply.status_code != 204:
        headers.append((b"content-length", str(len(body)).encode()))
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": reply.status_code,
        "headers": [*headers, *extra],
    }
    await send(start)
    done: HTTPResponseBodyEvent = {
        "type": "http.response.body",
        "body": body,
        "more_body": False,
    }
    await send(done)
