"""``/mcp``: the Model Context Protocol server external agents claim tasks through (a coding
agent in an IDE or a terminal, a script on a build machine), built with the official MCP Python
SDK. Every import of the SDK is in this module.

Streamable HTTP, stateless (any gateway process answers any request: no session lives in one
process's memory), JSON responses. A bearer agent token is checked by the SDK's token-verifier
hook against our token store (401 with ``WWW-Authenticate`` otherwise); ``Host`` must be
``SWITCHBOARD_PUBLIC_URL``'s or a loopback name (DNS-rebinding protection). The tools and
resources call the same task service as ``/api/v1/tasks``; what they refuse comes back as a
tool error with the service's own words.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import msgspec
from litestar import Litestar, get
from litestar.handlers import asgi
from litestar.types import Receive, Scope, Send
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import CallToolResult, TextContent
from pydantic import AnyHttpUrl

from dispatch.infra.errors import ClientError
from dispatch.work.tasks import AgentCaller, TaskService
from gateway.auth import ApiRole, TokenStore

__all__ = ["MCP_PATH", "McpDoor"]

log = logging.getLogger("switchboard.mcp")

MCP_PATH = "/mcp"
SCOPE = "tasks"
INSTRUCTIONS = (
    "Switchboard's queue of tasks for external agents. Read orchestrator://queue (or call "
    "list_tasks), claim_ticket one, read orchestrator://tasks/{task_id} for its request and "
    "conversation, send_message to ask the requester (their answer shows in the task), and "
    "submit_artifact your work (a unified diff, code, text or a screenshot): a person reviews "
    "it before the requester gets it. Any call on a task renews your claim; release_ticket "
    "gives it back."
)


class _AgentTokens(TokenVerifier):
    """The SDK's hook: an agent's live token, as the SDK's access token (its name and the
    actions it serves in the claims); anything else is no token here."""

    def __init__(self, tokens: Callable[[], TokenStore]) -> None:
        self._tokens = tokens

    async def verify_token(self, token: str) -> AccessToken | None:
        caller = await self._tokens().identify(token)
        if caller is None or caller.role != ApiRole.AGENT or caller.token_id is None:
            return None
        return AccessToken(
            token=token,
            client_id=str(caller.token_id),
            scopes=[SCOPE],
            claims={"name": caller.name, "serves": list(caller.serves)},
        )


def _agent() -> AgentCaller:
    """The agent behind the current call (the SDK checked its token)."""
    access = get_access_token()
    if access is None:  # the SDK refuses a call without a token before any tool runs
        raise ResourceError("no agent token")
    claims = access.claims or {}
    return AgentCaller(
        token_id=int(access.client_id),
        name=str(claims.get("name", "")),
        serves=tuple(str(s) for s in claims.get("serves", [])),
    )


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


async def _tool(work: Awaitable[Any]) -> CallToolResult:
    """A tool's answer: the result as structured content (and JSON text), or the service's
    refusal, word for word, as a tool error."""
    try:
        value = msgspec.to_builtins(await work)
    except ClientError as exc:
        detail = {"error": exc.code, "detail": str(exc), **exc.extra}
        return CallToolResult(
            content=[TextContent(type="text", text=str(exc))],
            structured_content=detail,
            is_error=True,
        )
    except Exception:  # ours to fix: logged here, never shown (it may name tables or data)
        log.exception("an MCP tool failed")
        said = "the gateway could not do that right now; try again"
        return CallToolResult(
            content=[TextContent(type="text", text=said)],
            structured_content={"error": "internal", "detail": said},
            is_error=True,
        )
    structured = value if isinstance(value, dict) else {"items": value}
    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(value, ensure_ascii=False))],
        structured_content=structured,
    )


def _server(
    tasks: Callable[[], TaskService], tokens: Callable[[], TokenStore], base: str
) -> MCPServer:
    server = MCPServer(
        "switchboard",
        instructions=INSTRUCTIONS,
        token_verifier=_AgentTokens(tokens),
        auth=AuthSettings(
            issuer_url=AnyHttpUrl(base),
            resource_server_url=AnyHttpUrl(f"{base}{MCP_PATH}"),
            required_scopes=[SCOPE],
            validate_token_resource=False,  # our tokens are not audience-bound JWTs
        ),
    )

    _resources(server, tasks)
    _tools(server, tasks)
    return server


def _resources(server: MCPServer, tasks: Callable[[], TaskService]) -> None:
    @server.resource("orchestrator://queue", mime_type="application/json")
    async def queue() -> str:
        """The tasks you may claim, by priority then age."""
        return _json(await tasks().queue(_agent()))

    @server.resource("orchestrator://tasks/{task_id}", mime_type="application/json")
    async def task(task_id: str) -> str:
        """One task: its request, the requester's conversation, artifacts, review comments."""
        if not task_id.isdigit():
            raise ResourceError(f"no task {task_id!r}")
        try:
            return _json(await tasks().get(int(task_id), _agent()))
        except ClientError as exc:
            raise ResourceError(str(exc)) from None


def _tools(server: MCPServer, tasks: Callable[[], TaskService]) -> None:
    @server.tool()
    async def list_tasks() -> CallToolResult:
        """The tasks you may claim (the queue), by priority then age."""
        return await _tool(tasks().queue(_agent()))

    @server.tool()
    async def get_task(task_id: int) -> CallToolResult:
        """One task whole: request, conversation, artifacts handed in, review comments."""
        return await _tool(tasks().get(task_id, _agent()))

    @server.tool()
    async def claim_ticket(task_id: int) -> CallToolResult:
        """Claim a waiting task (exactly one claimant wins); your claim lasts the action's
        lease after your last call on it."""
        return await _tool(tasks().claim(_agent(), task_id))

    @server.tool()
    async def submit_artifact(
        task_id: int,
        content: str,
        type: str,
        title: str = "",
        idempotency_key: str | None = None,
    ) -> CallToolResult:
        """Hand work in for a task you hold: type is code, text, diff (a unified diff) or
        screenshot (PNG/JPEG in base64). It goes to a person's review. The same
        idempotency_key again is the same artifact."""
        return await _tool(
            tasks().submit(
                _agent(),
                task_id,
                content=content,
                kind=type,
                title=title,
                idempotency_key=idempotency_key,
            )
        )

    @server.tool()
    async def send_message(task_id: int, text: str) -> CallToolResult:
        """Write to the requester on their channel; their answer shows in the task."""

        async def said() -> dict[str, Any]:
            await tasks().message(_agent(), task_id, text)
            return {"task_id": task_id, "sent": True}

        return await _tool(said())

    @server.tool()
    async def release_ticket(task_id: int, reason: str = "") -> CallToolResult:
        """Give a task you hold back to the queue."""
        return await _tool(tasks().release(_agent(), task_id, reason))


def allowed_hosts(base_url: str) -> list[str]:
    """``Host`` values the door answers: the public address's, and loopback names (a page of
    another site rebinding its own name to this machine sends its own name: refused)."""
    public = urlsplit(base_url)
    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost"]
    if public.hostname:
        hosts += [public.netloc, f"{public.hostname}:*", public.hostname]
    return list(dict.fromkeys(hosts))


class McpDoor:
    """The SDK's server for one application: its ASGI app (mounted at ``/mcp``) and the
    lifespan the mount needs (a mounted app's own never runs)."""

    def __init__(self, *, base_url: str, max_body_bytes: int) -> None:
        self._state: Any = None
        base = base_url.rstrip("/")
        self.server = _server(lambda: self._state.runtime.tasks, lambda: self._state.tokens, base)
        hosts = allowed_hosts(base)
        self.app = self.server.streamable_http_app(
            streamable_http_path="/",  # the mount hands it "/" for both /mcp and /mcp/
            json_response=True,
            stateless_http=True,
            max_request_body_size=max_body_bytes,
            transport_security=TransportSecuritySettings(
                enable_dns_rebinding_protection=True,
                allowed_hosts=hosts,
                allowed_origins=[f"{scheme}://{h}" for h in hosts for scheme in ("http", "https")],
            ),
        )
        self.base = base

    @contextlib.asynccontextmanager
    async def running(self, app: Litestar) -> AsyncIterator[None]:
        self._state = app.state
        async with self.server.session_manager.run():
            yield

    def handlers(self) -> list[Any]:
        door = self.app

        @asgi(MCP_PATH, is_mount=True, copy_scope=True)
        async def mcp_mount(scope: Scope, receive: Receive, send: Send) -> None:
            await door(scope, receive, send)  # type: ignore[arg-type]

        base = self.base

        @get(f"/.well-known/oauth-protected-resource{MCP_PATH}", include_in_schema=False)
        async def protected_resource() -> dict[str, Any]:
            """RFC 9728: what the MCP door is, and that it takes bearer tokens."""
            return {
                "resource": f"{base}{MCP_PATH}",
                "authorization_servers": [base],
                "bearer_methods_supported": ["header"],
                "scopes_supported": [SCOPE],
            }

        return [mcp_mount, protected_resource]
