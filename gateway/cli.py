"""The ``switchboard`` command: serve, worker, migrate, send, telegram, users, tokens, agents,
settings."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import secrets
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from channels.base import RegistersWebhook, WebhookChannel
from channels.registry import CHANNEL_TYPES, identity_kinds
from dispatch.infra.errors import InvalidInput, NotFoundError, SwitchboardError
from dispatch.language.i18n import LANGUAGES
from dispatch.record.models import Role
from gateway.settings import Settings, get_settings

__all__ = ["main"]

if TYPE_CHECKING:
    from dispatch.record.users import UserDirectory, UserView


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app

    host = args.host or settings.http.host
    port = args.port or settings.http.port
    if args.check:
        return _serve_check(host, port)
    print(f"Switchboard on http://{host}:{port}/  (Ctrl-C to stop)", file=sys.stderr)
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level="warning",
        ws_max_size=settings.core.max_body_bytes * 2,
        # Chat frames are small; a compressor per socket costs ~260 KB of memory each, which
        # 20 sockets per address times many addresses would turn into a memory flood.
        ws_per_message_deflate=False,
        # wsproto holds less for a socket than websockets' server (500 sockets refused at the
        # handshake, bare app: +6 MB against +11 MB of high-water the allocator keeps).
        ws="wsproto",
        # X-Forwarded-* only from proxies we were told to trust (uvicorn trusts loopback's).
        proxy_headers=bool(settings.http.proxies),
        forwarded_allow_ips=settings.http.proxies or [],
    )
    return 0


CHECK_TIMEOUT_S = 4.0
"""How long a ``--check`` waits for an answer (inside a container healthcheck's 5 s)."""


def _serve_check(host: str, port: int) -> int:
    """``switchboard serve --check``: 0 if the gateway on this host answers ``/healthz`` (it
    reaches its database), 1 if not; for a container's healthcheck."""
    import httpx

    if host in {"", "0.0.0.0", "::"}:  # noqa: S104 - bound to every interface: ask loopback
        host = "127.0.0.1"
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/healthz"
    try:
        response = httpx.get(url, timeout=CHECK_TIMEOUT_S)
    except httpx.HTTPError as exc:
        print(f"gateway at {url}: no answer ({type(exc).__name__})")
        return 1
    print(f"gateway at {url}: {response.status_code} {response.text}")
    return 0 if response.status_code == 200 else 1


async def _worker_check(settings: Settings) -> int:
    """``switchboard worker --check``: 0 if a worker on this host has beaten within three
    heartbeats (read from Redis, where the worker writes it), 1 if not."""
    from redis.exceptions import RedisError

    from workers.worker import HEARTBEAT_S, beat_on_this_host

    if not settings.queue.redis_url:
        print("SWITCHBOARD_REDIS_URL is not set: the embedded mode runs no worker")
        return 1
    try:
        beat = await asyncio.wait_for(beat_on_this_host(settings), CHECK_TIMEOUT_S)
    except (RedisError, OSError, TimeoutError) as exc:
        print(f"no heartbeat read: Redis did not answer ({type(exc).__name__})")
        return 1
    if beat is None:
        print(f"no worker on this host has beaten in the last {HEARTBEAT_S * 3:g} s")
        return 1
    print(
        f"worker {beat.id} alive: beat {time.time() - beat.last_seen:.1f} s ago, "
        f"{beat.jobs_running} jobs running, {beat.jobs_done} done, {beat.jobs_failed} failed"
    )
    return 0


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from dispatch.infra.logs import configure_logging
    from migrations import prepare
    from workers.worker import create_worker

    if args.check:
        return asyncio.run(_worker_check(settings))
    configure_logging(settings.core.log_level, settings.core.log_format)
    asyncio.run(prepare(settings.database))
    worker = create_worker(settings, burst=args.burst)
    worker.run()
    return 0


def _migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from dispatch.record.db import create_engine
    from migrations import upgrade

    async def run() -> None:
        engine = create_engine(settings.database, migrating=True)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())
    print("database is at the latest revision", file=sys.stderr)
    return 0


def _days(text: str) -> int:
    days = int(text)
    if days < 1:
        raise argparse.ArgumentTypeError("at least 1 day")
    return days


def _retain(settings: Settings, args: argparse.Namespace) -> int:
    import datetime as dt

    from dispatch.record.models import utcnow
    from dispatch.record.retention import ArchiveFile, Retention

    async def run() -> str:
        archive = ArchiveFile(args.archive) if args.archive else None
        try:
            async with _record(settings) as sessions:
                retention = Retention(sessions, days=args.older_than_days)
                before = utcnow() - dt.timedelta(days=args.older_than_days)
                removed = await retention.remove(before=before, archive=archive)
        finally:
            if archive is not None:
                archive.close()
        kept = f", {archive.rows} rows written to {args.archive}" if archive else ""
        return f"removed {removed.activities} activities and {removed.messages} messages{kept}"

    print(asyncio.run(run()), file=sys.stderr)
    return 0


@contextlib.asynccontextmanager
async def _runtime(settings: Settings) -> AsyncIterator[Any]:
    from migrations import prepare
    from workers.compose import open_runtime

    await prepare(settings.database)
    async with open_runtime(settings, role="cli") as runtime:
        yield runtime


async def _send_async(settings: Settings, text: str, sender: str, timeout_s: float) -> int:
    from channels.rest import RestChannel
    from channels.validation import require_text
    from dispatch.record.messages import InboundMessage

    async with _runtime(settings) as runtime:
        inbound = InboundMessage(
            channel=RestChannel.name,
            external_id=f"cli-{uuid.uuid4()}",
            conversation_key=sender,
            sender=sender,
            text=require_text(text, settings.core.max_text_chars),
            raw={"text": text, "via": "cli"},
        )
        accepted = await runtime.dispatcher.ingest(inbound)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            replies = await runtime.store.replies_to(accepted.message_id)
            if replies and all(r.delivery not in {"pending", "sending"} for r in replies):
                print("\n".join(r.text for r in replies))
                return 0
            await asyncio.sleep(0.05)
    hint = " (is `switchboard worker` running?)" if settings.queue.redis_url else ""
    print(f"no reply within {timeout_s:g} s{hint}", file=sys.stderr)
    return 1


def _send(settings: Settings, args: argparse.Namespace) -> int:
    from dispatch.infra.logs import configure_logging

    configure_logging("WARNING")
    return asyncio.run(_send_async(settings, args.text, args.sender, args.timeout))


def _webhook(settings: Settings, args: argparse.Namespace) -> int:
    """``switchboard <channel> set-webhook | webhook-info | delete-webhook``."""
    import json

    kind = next(k for k in CHANNEL_TYPES if k.name == args.channel)
    if kind.settings_type is not None and not settings.channel(kind.settings_type).enabled:
        print(f"switchboard: the {kind.name} channel is not configured", file=sys.stderr)
        return 2

    async def run() -> int:
        async with _runtime(settings) as runtime:
            channel = runtime.channels.get(kind.name)
            assert isinstance(channel, WebhookChannel)
            assert isinstance(channel, RegistersWebhook)
            if args.action == "set-webhook":
                if settings.core.public_url is None:
                    print("switchboard: set SWITCHBOARD_PUBLIC_URL first", file=sys.stderr)
                    return 2
                url = settings.core.public_url.rstrip("/") + channel.webhook_paths[0]
                done = await channel.set_webhook(
                    url, drop_pending_updates=args.drop_pending_updates
                )
                print(f"webhook set: {url} ({done})")
            elif args.action == "webhook-info":
                print(json.dumps(await channel.webhook_info(), indent=2, sort_keys=True))
            else:
                await channel.delete_webhook(drop_pending_updates=args.drop_pending_updates)
                print("webhook deleted")
        return 0

    return asyncio.run(run())


@contextlib.asynccontextmanager
async def _record(settings: Settings) -> AsyncIterator[Any]:
    """Sessions on an engine of their own, migrating an embedded database first."""
    from dispatch.record.db import create_engine, create_sessionmaker
    from migrations import prepare

    await prepare(settings.database)
    engine = create_engine(settings.database)
    try:
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()


def _open_directory(settings: Settings) -> Any:
    """(users, tokens) on their own engine, migrating an embedded database first."""
    from dispatch.record.users import UserDirectory
    from gateway.auth import TokenStore

    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[tuple[UserDirectory, TokenStore]]:
        async with _record(settings) as sessions:
            yield UserDirectory(sessions, identity_kinds()), TokenStore(sessions, None)

    return opened()


def _print_user(user: Any, note: str = "") -> None:
    identities = ", ".join(f"{i.channel}:{i.address}" for i in user.identities) or "-"
    state = "active" if user.active else "INACTIVE"
    print(f"#{user.id}\t{user.name}\t{user.role}\t{state}\t{identities}{note}")


def _read_password() -> str:
    """From the terminal (twice, not echoed), or the first line of stdin when piped."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise InvalidInput("the two passwords differ")
    return first


DEMO_SUPERVISOR = "demo-supervisor"


def _demo(settings: Settings, _args: argparse.Namespace) -> int:
    """A supervisor for trying the portal: created (or given a new password) and its password
    printed once."""

    async def run() -> int:
        async with _open_directory(settings) as (users, _tokens):
            try:
                user = await users.get(DEMO_SUPERVISOR)
            except NotFoundError:
                user = await users.add(DEMO_SUPERVISOR, "supervisor")
                user, _ = await users.link(str(user.id), "rest", DEMO_SUPERVISOR)
            password = secrets.token_urlsafe(12)
            await users.set_password(str(user.id), password)
        print(f"portal: {settings.base_url}/portal  name: {DEMO_SUPERVISOR}  password: {password}")
        print("(shown once; run this again for a new one)")
        return 0

    return asyncio.run(run())


async def _changed_user(users: UserDirectory, args: argparse.Namespace) -> tuple[UserView, str]:
    """The user a changing ``users`` action made, and a note to print after it."""
    if args.action == "add":
        user = await users.add(args.name, args.role)
        for kind in identity_kinds():
            address = getattr(args, kind)
            if address:
                user, _ = await users.link(str(user.id), kind, address)
        return user, ""
    if args.action == "set-role":
        return await users.set_role(args.user, args.role), ""
    if args.action == "deactivate":
        return await users.set_active(args.user, False), ""
    if args.action == "set-language":
        chosen = None if args.language == "auto" else args.language
        return await users.set_language(args.user, chosen), ""
    if args.action == "set-password":
        return await users.set_password(args.user, _read_password()), ""
    user, previous = await users.link(args.user, args.channel, args.address)
    return user, f"\t(moved from user #{previous})" if previous else ""


def _users(settings: Settings, args: argparse.Namespace) -> int:
    async def run() -> int:
        async with _open_directory(settings) as (users, _tokens):
            if args.action == "list":
                after = 0  # every user, a page at a time
                while page := await users.list(after_id=after, limit=500):
                    for user in page:
                        _print_user(user)
                    after = page[-1].id
                return 0
            _print_user(*await _changed_user(users, args))
            return 0

    return asyncio.run(run())


def _tokens(settings: Settings, args: argparse.Namespace) -> int:
    async def run() -> int:
        async with _open_directory(settings) as (users, tokens):
            if args.action == "create":
                user_id = (await users.get(args.user)).id if args.user else None
                token, token_id = await tokens.create(
                    name=args.name, role=args.role, user_id=user_id
                )
                print(
                    f"token #{token_id} ({args.role}); shown once, store it now:", file=sys.stderr
                )
                print(token)
                return 0
            if args.action == "list":
                for t in await tokens.list():
                    state = "revoked" if t.revoked else "live"
                    print(f"#{t.id}\t{t.name}\t{t.role}\tuser={t.user_id or '-'}\t{state}")
                return 0
            if not await tokens.revoke(int(args.id)):
                raise NotFoundError(f"no live token {args.id}")
            print(f"token #{args.id} revoked", file=sys.stderr)
            return 0

    return asyncio.run(run())


def _agents(settings: Settings, args: argparse.Namespace) -> int:
    """External agents: each one a token of role ``agent`` naming the actions it serves."""

    async def run() -> int:
        async with _open_directory(settings) as (_users, tokens):
            live = [t for t in await tokens.list() if t.role == "agent" and not t.revoked]
            if args.action == "add":
                served = _agent_served(settings)
                unknown = sorted(set(args.serves) - served)
                if unknown:
                    raise InvalidInput(
                        f"--serves {', '.join(unknown)}: not an action agents serve; the "
                        f"catalog's are: {', '.join(sorted(served)) or 'none'}"
                    )
                if any(t.name == args.name for t in live):
                    raise InvalidInput(f"an agent {args.name!r} exists; revoke it first")
                token, token_id = await tokens.create(
                    name=args.name, role="agent", serves=tuple(dict.fromkeys(args.serves))
                )
                print(
                    f"agent {args.name!r} (token #{token_id}) serves {', '.join(args.serves)}; "
                    "its token is shown once, store it now:",
                    file=sys.stderr,
                )
                print(token)
                return 0
            if args.action == "list":
                for t in live:
                    print(f"{t.name}\ttoken #{t.id}\tserves {', '.join(t.serves)}\t{t.created_at}")
                return 0
            mine = [t for t in live if t.name == args.name]
            if not mine:
                raise NotFoundError(f"no agent {args.name!r}")
            for t in mine:
                await tokens.revoke(t.id)
            print(f"agent {args.name!r} revoked", file=sys.stderr)
            return 0

    return asyncio.run(run())


def _agent_served(settings: Settings) -> set[str]:
    """The catalog's actions that external agents serve (``agent.action``)."""
    from dispatch.policy.catalog import load_catalog
    from workers.handlers import BUILTIN_HANDLER_NAMES

    catalog = load_catalog(settings.core.catalog_path, BUILTIN_HANDLER_NAMES)
    return {f"{a}.{t}" for a, t, spec in catalog.actions() if spec.by_agent}


def _settings(settings: Settings, _args: argparse.Namespace) -> int:
    """Every setting: the value in effect, where it came from, and what it means."""
    for row in settings.describe():
        value = "(unset)" if row.value is None else row.value
        origin = row.source
        if row.source != "default" and not row.secret:
            origin += f"; default {'(unset)' if row.default is None else row.default}"
        print(f"{row.variable} = {value}  [{origin}]\n    {row.doc}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="switchboard", description="Messaging chatbot ingestion gateway."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP/WebSocket gateway")
    serve.add_argument("--host", help="interface to bind (default SWITCHBOARD_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default SWITCHBOARD_PORT or 8000)")
    serve.add_argument(
        "--check",
        action="store_true",
        help="exit 0 if the gateway on this host answers /healthz, 1 if not (a healthcheck)",
    )
    serve.set_defaults(run=_serve)
    worker = sub.add_parser("worker", help="run the arq worker (needs SWITCHBOARD_REDIS_URL)")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.add_argument(
        "--check",
        action="store_true",
        help="exit 0 if a worker on this host has beaten in the last 15 s, 1 if not "
        "(a healthcheck)",
    )
    worker.set_defaults(run=_worker)
    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.set_defaults(run=_migrate)
    retain = sub.add_parser(
        "retain",
        help="remove what ended more than N days ago (finished activities with their events, "
        "settled messages), writing it first to an archive file if given",
    )
    retain.add_argument("--older-than-days", type=_days, required=True, metavar="N")
    retain.add_argument(
        "--archive", type=Path, help="append what is removed here, as JSON lines (.gz: gzip)"
    )
    retain.set_defaults(run=_retain)
    send = sub.add_parser("send", help="send a message as a user would and print the reply")
    send.add_argument("text")
    send.add_argument("--sender", default=f"cli:{getpass.getuser()}", help="sender identity")
    send.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a reply")
    send.set_defaults(run=_send)
    for kind in CHANNEL_TYPES:
        if issubclass(kind, WebhookChannel) and issubclass(kind, RegistersWebhook):
            hook = sub.add_parser(kind.name, help=f"manage the {kind.name} webhook")
            hook.add_argument("action", choices=["set-webhook", "webhook-info", "delete-webhook"])
            hook.add_argument(
                "--drop-pending-updates",
                action="store_true",
                help="discard what the provider queued while no webhook answered",
            )
            hook.set_defaults(run=_webhook, channel=kind.name)
    _user_commands(sub)
    _token_commands(sub)
    _agent_commands(sub)
    show = sub.add_parser(
        "settings", help="list every setting: its value, where it came from, what it means"
    )
    show.set_defaults(run=_settings)
    return parser


def _user_commands(sub: Any) -> None:
    roles = [r.value for r in Role]
    demo = sub.add_parser(
        "demo", help="create a demo supervisor for the portal and print its password once"
    )
    demo.set_defaults(run=_demo)
    users = sub.add_parser("users", help="manage users, roles and channel identities")
    actions = users.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add a user")
    add.add_argument("name")
    add.add_argument("--role", choices=roles, default=Role.GUEST.value)
    kinds = identity_kinds()
    for kind in kinds.values():
        add.add_argument(f"--{kind.name}", help=kind.help)
    actions.add_parser("list", help="list users")
    set_role = actions.add_parser("set-role", help="change a user's role")
    set_role.add_argument("user", help="id or name")
    set_role.add_argument("role", choices=roles)
    deactivate = actions.add_parser("deactivate", help="stop a user from asking or approving")
    deactivate.add_argument("user", help="id or name")
    password = actions.add_parser(
        "set-password",
        help="give a user a password for the portal (asked for, or read from stdin when piped)",
    )
    password.add_argument("user", help="id or name")
    language = actions.add_parser(
        "set-language", help="speak to a user in one language (auto: from what they write)"
    )
    language.add_argument("user", help="id or name")
    language.add_argument("language", choices=[*LANGUAGES, "auto"])
    link = actions.add_parser("link", help="give a user an address on a channel")
    link.add_argument("user", help="id or name")
    link.add_argument("--channel", required=True, choices=list(kinds), help="the kind of address")
    link.add_argument("--address", required=True)
    users.set_defaults(run=_users)


def _token_commands(sub: Any) -> None:
    tokens = sub.add_parser("tokens", help="manage HTTP API bearer tokens")
    actions = tokens.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a token (printed once)")
    create.add_argument("--role", required=True, choices=["actions", "operator", "admin"])
    # (an agent's token: `switchboard agents add`)
    create.add_argument("--name", default="api token")
    create.add_argument("--user", help="id or name of the user the token acts for")
    actions.add_parser("list", help="list tokens (never their secret)")
    revoke = actions.add_parser("revoke", help="revoke a token")
    revoke.add_argument("id")
    tokens.set_defaults(run=_tokens)


def _agent_commands(sub: Any) -> None:
    agents = sub.add_parser("agents", help="external agents that claim tasks (over MCP)")
    actions = agents.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add an agent; prints its token once")
    add.add_argument("name")
    add.add_argument(
        "--serves",
        action="append",
        required=True,
        metavar="AGENT.ACTION",
        help="an action it serves (repeat for more), e.g. developer.fix_bug",
    )
    actions.add_parser("list", help="list agents (never their token)")
    revoke = actions.add_parser("revoke", help="revoke an agent's token")
    revoke.add_argument("name")
    agents.set_defaults(run=_agents)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = get_settings()
        return int(args.run(settings, args))
    except SwitchboardError as exc:
        print(f"switchboard: {exc.detail}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
