"""A record months old: what the throughput bench preloads before its ``grown-*`` phases.

``preload`` fills a migrated PostgreSQL database with the record of a busy deployment, written
as the gateway writes it (the same tables, states and events; its tallies kept by their
triggers): ``users`` people, each with a Telegram address, ``conversations`` chats between them,
``activities`` handled requests (each its inbound message, its ``created``, ``started`` and
``completed`` events, and its reply, sent), and as many more messages, ignored ones and staff
answers, as make ``messages`` in all, spread over the last ``days`` days. Then
``VACUUM ANALYZE``.

Generated in the database (``generate_series``): a million messages take tens of seconds, not
a million requests.
"""
# ruff: noqa: S608 - the statements are built from a Record's numbers, ours; nothing from outside

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["READS", "Record", "captured", "plans", "preload", "timed_reads"]

CHAT_BASE = 900_000_000
"""The preloaded chats' ids (apart from the bench's own traffic)."""


@dataclass(frozen=True)
class Record:
    messages: int = 1_000_000
    activities: int = 300_000
    conversations: int = 50_000
    users: int = 10_000
    days: int = 180

    def scaled(self, factor: float) -> Record:
        return Record(
            messages=round(self.messages * factor),
            activities=round(self.activities * factor),
            conversations=max(1, round(self.conversations * factor)),
            users=max(1, round(self.users * factor)),
            days=self.days,
        )


def _statements(r: Record) -> list[str]:
    others = (r.messages - 2 * r.activities) // 2  # pairs: an ignored message, a staff answer
    span_s = r.days * 86400
    pairs = r.activities + others
    # Pair p (its message and its answer, ids 2p + 1 and 2p + 2) is a handled request, the
    # activity numbered ``handled_id``, if it is one of ``activities`` spread evenly among the
    # pairs; its time is spread evenly over the span, oldest first (ids grow with time).
    handled = f"((p + 1) * {r.activities} / {pairs} > p * {r.activities} / {pairs})"
    handled_id = f"(p * {r.activities} / {pairs} + 1)"
    at = f"now() - make_interval(secs => {span_s} * (1 - p::float8 / {pairs}))"
    chat = f"(p % {r.conversations})"
    pair = f"generate_series(0::int8, {pairs - 1}) p"
    return [
        f"""INSERT INTO users (id, name, role, active, created_at, language)
            SELECT u + 1, 'person ' || u, 'guest', true,
                   now() - make_interval(secs => {span_s}), NULL
            FROM generate_series(0, {r.users - 1}) u""",
        f"""INSERT INTO user_identities (id, user_id, channel, address, created_at)
            SELECT u + 1, u + 1, 'telegram', ({CHAT_BASE} + u)::text,
                   now() - make_interval(secs => {span_s})
            FROM generate_series(0, {r.users - 1}) u""",
        f"""INSERT INTO conversations (id, channel, key, user_id, created_at, last_inbound_at)
            SELECT c + 1, 'telegram', ({CHAT_BASE} + c)::text, c % {r.users} + 1,
                   now() - make_interval(secs => {span_s}),
                   now() - make_interval(secs => {span_s} * (1 - (c + {pairs - r.conversations})
                                                              ::float8 / {pairs}))
            FROM generate_series(0, {r.conversations - 1}) c""",
        # Each handled request: the activity first (its reply references it)...
        f"""INSERT INTO agent_activities (id, agent_name, action_type, action_description,
                details, status, metrics, actor_user_id, source_message_id, source_channel,
                conversation_id, order_key, priority, visible_to_client, attempts, created_at,
                started_at, completed_at, review_round)
            SELECT {handled_id}, 'ops', 'echo', 'Repeat a text',
                   jsonb_build_object('payload', jsonb_build_object('text', 'k' || p),
                                      'result', jsonb_build_object('text', 'k' || p)),
                   CASE WHEN p % 50 = 0 THEN 'failed' ELSE 'completed' END,
                   '{{"duration_ms": 3.1}}'::jsonb, {chat} % {r.users} + 1, 2 * p + 1, 'telegram',
                   {chat} + 1, 2 * p + 1, 'normal', true, 1, {at}, {at}, {at}, 0
            FROM {pair} WHERE {handled}""",
        # ... its message and its answer: the activity's reply, or a staff member's answer
        # to a message nothing was asked in (a sticker, ignored).
        f"""INSERT INTO messages (id, direction, channel, external_id, conversation_id, user_id,
                sender, text, media, raw, state, delivery, activity_id, part, dispatch_attempts,
                received_at, updated_at)
            SELECT 2 * p + 1, 'inbound', 'telegram', 'pre-' || p, {chat} + 1,
                   {chat} % {r.users} + 1, ({CHAT_BASE} + {chat})::text,
                   CASE WHEN {handled} THEN 'echo k' || p ELSE 'sticker' END, '[]',
                   jsonb_build_object('update_id', p, 'message', jsonb_build_object(
                       'message_id', p, 'date', 1700000000 + p,
                       'chat', jsonb_build_object('id', {CHAT_BASE} + {chat}, 'type', 'private'),
                       'from', jsonb_build_object('id', {CHAT_BASE} + {chat}, 'is_bot', false,
                                                  'first_name', 'person'),
                       'text', 'echo k' || p)),
                   CASE WHEN {handled} THEN 'dispatched' ELSE 'ignored' END, NULL,
                   NULL, NULL, 1, {at}, {at}
            FROM {pair}""",
        f"""INSERT INTO messages (id, direction, channel, external_id, conversation_id, sender,
                text, media, raw, state, delivery, activity_id, part, dispatch_attempts,
                received_at, updated_at)
            SELECT 2 * p + 2, 'outbound', 'telegram', 'sent-' || p, {chat} + 1, '',
                   CASE WHEN {handled} THEN 'k' || p ELSE 'a person answers' END,
                   '[]', '{{}}', NULL, 'sent',
                   CASE WHEN {handled} THEN {handled_id} END,
                   CASE WHEN {handled} THEN 0 END, 0, {at}, {at}
            FROM {pair}""",
        f"""INSERT INTO activity_events (activity_id, kind, status, actor, data, at)
            SELECT {handled_id}, e.kind, e.status, 'system', '{{}}', {at}
            FROM {pair}
            CROSS JOIN LATERAL (VALUES
                (1, 'created', 'queued'), (2, 'started', 'in_progress'),
                (3, CASE WHEN p % 50 = 0 THEN 'failed' ELSE 'completed' END,
                    CASE WHEN p % 50 = 0 THEN 'failed' ELSE 'completed' END)
            ) AS e(n, kind, status)
            WHERE {handled}
            ORDER BY p, e.n""",
        *(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
            for table in (
                "users",
                "user_identities",
                "conversations",
                "agent_activities",
                "messages",
                "activity_events",
            )
        ),
    ]


async def preload(dsn: str, record: Record) -> float:
    """Fill the (migrated, empty) database at ``dsn`` with ``record``; seconds it took."""
    started = time.monotonic()
    connection = await asyncpg.connect(dsn)
    try:
        async with connection.transaction():
            for statement in _statements(record):
                await connection.execute(statement)
        await connection.execute("VACUUM ANALYZE")
    finally:
        await connection.close()
    return time.monotonic() - started


# -- reads ----------------------------------------------------------------------------------------

DEEP_PAGE = 20
"""Pages walked for the deep page: its cursor is the 21st page's, as a reader paging back."""

READS: dict[str, str] = {
    "metrics (Prometheus scrape)": "/metrics",
    "metrics summary (portal home)": "/api/v1/metrics/summary",
    "activities, newest": "/api/v1/activities?limit=50",
    "activities, failed": "/api/v1/activities?status=failed&limit=50",
    "activities, agent and action": "/api/v1/activities?agent=ops&action_type=echo&limit=50",
    "activities, of one requester": "/api/v1/activities?actor={user}&limit=50",
    "activities, a channel since a week": "/api/v1/activities?channel=telegram&since={week}"
    "&limit=50",
    "activities, a deep page": "/api/v1/activities?limit=50&cursor={cursor}",
    "one activity with its events": "/api/v1/activities/{activity}",
    "conversations, newest": "/api/v1/conversations?limit=50",
    "conversations of one person": "/api/v1/conversations?user={user}&limit=50",
    "inbox (portal)": "/api/v1/inbox?limit=50",
    "inbox, unassigned, everyone": "/api/v1/inbox?view=unassigned&people=everyone&limit=50",
    "a conversation's latest messages": "/api/v1/conversations/{conversation}/messages"
    "?latest=true&limit=50",
    "who is behind a conversation": "/api/v1/conversations/{conversation}/person",
    "approvals queue (portal)": "/api/v1/queue",
    "tasks (portal)": "/api/v1/tasks",
    "users, a page": "/api/v1/users?limit=100",
    "users, staff": "/api/v1/users?role=supervisor",
}
"""What the portal and an operator read, by name: each timed, each statement's plan looked at."""


async def _values(client: httpx.AsyncClient) -> dict[str, Any]:
    """The ids the reads ask for: a busy person's, a conversation's, an activity's, a deep
    page's cursor, a week ago."""
    cursor = None
    for _ in range(DEEP_PAGE):
        after = f"&cursor={cursor}" if cursor else ""
        page = (await client.get(f"/api/v1/activities?limit=50{after}")).json()
        cursor = page["next_cursor"]
    newest = (await client.get("/api/v1/activities?limit=1")).json()["items"][0]
    week = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 7 * 86400))
    return {
        "user": 7,
        "conversation": 7,
        "activity": newest["id"] - 1000,
        "cursor": cursor,
        "week": week,
    }


async def timed_reads(base_url: str, token: str, *, times: int = 100) -> dict[str, Any]:
    """Each read of :data:`READS` ``times`` times over HTTP, one at a time (after three
    unmeasured): p50 and p99 in ms, and the status."""
    headers = {"Authorization": f"Bearer {token}"}
    figures: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:
        values = await _values(client)
        for name, path in READS.items():
            url = path.format(**values)
            spent: list[float] = []
            status = 0
            for n in range(times + 3):
                started = time.perf_counter()
                response = await client.get(url)
                if n >= 3:
                    spent.append(time.perf_counter() - started)
                status = response.status_code
            spent.sort()
            figures[name] = {
                "path": url,
                "status": status,
                "p50_ms": round(1000 * spent[len(spent) // 2], 1),
                "p99_ms": round(1000 * spent[min(len(spent) - 1, int(0.99 * len(spent)))], 1),
            }
    return figures


BIG_TABLES = {
    "messages",
    "agent_activities",
    "activity_events",
    "conversations",
    "users",
    "user_identities",
}
"""The tables that grow with the record (``tally_deltas`` does not: each scrape empties it)."""


@contextlib.contextmanager
def captured(engine: AsyncEngine) -> Iterator[list[tuple[str, Any]]]:
    """The statements ``engine`` runs meanwhile, with their parameters."""
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        statements.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", capture)


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _literal(value: Any) -> str:
    """``value`` as a SQL literal of unknown type (the prepared statement's casts type it)."""
    if value is None:
        return "NULL"
    text = json.dumps(value) if isinstance(value, dict | list) else str(value)
    return "'" + text.replace("'", "''") + "'"


async def plans(dsn: str, statements: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """``EXPLAIN ANALYZE`` of each read statement (SELECT, or WITH) of one request, in order,
    as the gateway runs it: a prepared statement, planned once for any value (its connections'
    setting), or for the values given where the request asked for that first
    (:func:`dispatch.record.db.planned_for_values`): the indexes it uses, the tables it scans
    whole (one of :data:`BIG_TABLES` is a finding), and its time."""
    connection = await asyncpg.connect(dsn)
    found: list[dict[str, Any]] = []
    mode = "force_generic_plan"
    try:
        for n, (statement, parameters) in enumerate(statements):
            if "plan_cache_mode" in statement:
                mode = statement.split("=")[-1].strip()
                continue
            head = statement.lstrip().split(None, 1)[0].upper()
            if head not in {"SELECT", "WITH"}:
                continue
            await connection.execute(f"SET plan_cache_mode = {mode}")
            args = ", ".join(_literal(v) for v in parameters or ())
            kept = connection.transaction()
            await kept.start()
            try:  # rolled back: nothing a statement's plan ran is kept
                await connection.execute(f"PREPARE read_{n} AS {statement}")
                raw = await connection.fetchval(
                    f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE read_{n}"
                    + (f"({args})" if args else "")
                )
            finally:
                await kept.rollback()
                await connection.execute(f"DEALLOCATE read_{n}")
            plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]
            nodes = list(_nodes(plan["Plan"]))
            found.append(
                {
                    "statement": " ".join(statement.split())[:160],
                    "plan": "generic" if mode == "force_generic_plan" else "for its values",
                    "ms": plan["Execution Time"],
                    "indexes": sorted({n["Index Name"] for n in nodes if "Index Name" in n}),
                    "whole_scans": sorted(
                        {
                            n["Relation Name"]
                            for n in nodes
                            if n["Node Type"] == "Seq Scan" and n["Relation Name"] in BIG_TABLES
                        }
                    ),
                }
            )
    finally:
        await connection.close()
    return found
