"""Group commit: what verified providers send, stored in batches.

Every webhook request hands its messages to :class:`Intake` and waits. A flush takes
everything waiting (up to ``MAX_BATCH``) and stores it in one transaction of a few set-based
statements over arrays (senders, conversations, duplicates, backlogs, messages), each one text
whatever the batch size, so it is compiled and prepared once (PostgreSQL; the embedded SQLite
stores a batch message by message). Each request is
answered once its batch has committed, so a 2xx still means stored; while one batch commits,
the next one fills. What the batch asks for next (queueing the new messages, telling a sender
to slow down) runs after the commit, off the request path (``after``).

A batch that fails for a reason other than an outage is stored again one message at a time,
so one bad message cannot fail the others; an outage fails the whole batch (each request is
answered 503 and the provider retries).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import msgspec
from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection

from dispatch.infra.clean import fit, storable_json
from dispatch.infra.outage import is_overload, is_unavailable
from dispatch.record.messages import InboundMessage
from dispatch.record.models import UNDISPATCHED, MessageState, utcnow
from dispatch.record.store import NAME_CHARS, Accepted, MessageStore, storable

__all__ = ["Arrival", "Intake"]

log = logging.getLogger("switchboard.intake")

MAX_BATCH = 500
"""Messages one transaction stores at most."""
FLUSHES = 2
"""Batches stored at once: while one waits for the database, the next is being built."""
BACKLOG_FULL = "conversation backlog full"


class Arrival(msgspec.Struct, frozen=True, kw_only=True):
    """A message as it reaches the intake: ``over_rate`` if its sender sends too fast (it is
    kept, not acted on)."""

    message: InboundMessage
    over_rate: bool = False


Stored = list[tuple[Arrival, Accepted]]
After = Callable[[Stored], Awaitable[None]]


class Intake:
    def __init__(self, store: MessageStore, *, backlog: int | None, after: After) -> None:
        self._store = store
        self._backlog = backlog
        self._after = after
        self._waiting: list[tuple[Arrival, asyncio.Future[Accepted]]] = []
        self._flushing: set[asyncio.Task[None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, arrivals: Sequence[Arrival]) -> list[Accepted]:
        """Store ``arrivals`` with whatever else is waiting; their outcomes, once committed."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in arrivals]
        self._waiting.extend(zip(arrivals, futures, strict=True))
        if len(self._flushing) < FLUSHES:
            task = asyncio.create_task(self._flush(), name="switchboard-intake")
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)
        return list(await asyncio.gather(*futures))

    async def _flush(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            await self._commit(batch)

    async def _commit(self, batch: list[tuple[Arrival, asyncio.Future[Accepted]]]) -> None:
        arrivals = [arrival for arrival, _ in batch]
        try:
            outcomes = await self._store_batch(arrivals)
        except Exception as exc:
            if is_unavailable(exc) or is_overload(exc) or len(batch) == 1:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
            log.exception("batch of %d not stored; storing one by one", len(batch))
            for item in batch:
                await self._commit([item])
            return
        for (_, future), accepted in zip(batch, outcomes, strict=True):
            if not future.done():
                future.set_result(accepted)
        task = asyncio.create_task(self._then(list(zip(arrivals, outcomes, strict=True))))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _then(self, stored: Stored) -> None:
        try:
            await self._after(stored)
        except Exception:
            log.exception("after storing a batch; recovery re-drives what it did not queue")

    async def close(self) -> None:
        """Wait for what is being stored and what follows it."""
        if self._flushing:
            await asyncio.gather(*self._flushing, return_exceptions=True)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _store_batch(self, arrivals: list[Arrival]) -> list[Accepted]:
        messages = [storable(a.message) for a in arrivals]
        if not self._store.postgres or any(m.guests_only or m.anonymous for m in messages):
            # Embedded (SQLite, one process), or a client speaking for someone: one by one.
            return [
                await self._store.accept(a.message, backlog=self._backlog, over_rate=a.over_rate)
                for a in arrivals
            ]
        async with self._store.connection() as conn:
            return await _Batch(conn, messages, arrivals, self._backlog).store()


def _sql(statement: str) -> TextClause:
    return text(" ".join(statement.split()))


# Fixed statements over arrays (unnest): one text whatever the batch size, so each is
# compiled and prepared once per connection.
def _pairs_lookup(table: str, a: str, b: str, value: str) -> TextClause:
    """``value`` of the rows of ``table`` whose (``a``, ``b``) are among arrays ``:a``, ``:b``."""
    return _sql(f"""
        SELECT t.{a}, t.{b}, t.{value} FROM {table} AS t
        JOIN unnest(CAST(:a AS varchar[]), CAST(:b AS varchar[])) AS w(a, b)
        ON t.{a} = w.a AND t.{b} = w.b""")  # noqa: S608 - names are ours, values are bound


_OWNERS = _pairs_lookup("user_identities", "channel", "address", "user_id")
_GUESTS = _sql("""
    INSERT INTO users (name, role, active, created_at)
    SELECT w.name, 'guest', true, :now
    FROM unnest(CAST(:names AS varchar[])) WITH ORDINALITY AS w(name, n) ORDER BY w.n
    RETURNING id""")
_REGISTER = _sql("""
    INSERT INTO user_identities (user_id, channel, address, created_at)
    SELECT w.user_id, w.channel, w.address, :now
    FROM unnest(CAST(:users AS bigint[]), CAST(:a AS varchar[]), CAST(:b AS varchar[]))
        AS w(user_id, channel, address)
    ON CONFLICT (channel, address) DO NOTHING
    RETURNING channel, address, user_id""")
_DROP_USERS = _sql("DELETE FROM users WHERE id = ANY(CAST(:ids AS bigint[]))")
_CONVERSATIONS = _pairs_lookup("conversations", "channel", "key", "id")
_START = _sql("""
    INSERT INTO conversations (channel, key, user_id, created_at)
    SELECT w.channel, w.key, w.user_id, :now
    FROM unnest(CAST(:a AS varchar[]), CAST(:b AS varchar[]), CAST(:users AS bigint[]))
        AS w(channel, key, user_id)
    ON CONFLICT (channel, key) DO NOTHING
    RETURNING channel, key, id""")
_KNOWN = _pairs_lookup("messages", "channel", "external_id", "id")
_OWED = _sql("""
    SELECT conversation_id, count(*) FROM messages
    WHERE conversation_id = ANY(CAST(:ids AS bigint[])) AND state = ANY(CAST(:states AS varchar[]))
    GROUP BY conversation_id""")
_INSERT = _sql("""
    INSERT INTO messages (direction, channel, external_id, conversation_id, user_id, sender,
        text, media, raw, state, received_at, dispatch_attempts, updated_at)
    SELECT 'inbound', w.channel, w.external_id, w.conversation_id, w.user_id, w.sender,
        w.text, w.media, w.raw, w.state, w.received_at, 0, :now
    FROM unnest(CAST(:a AS varchar[]), CAST(:b AS varchar[]), CAST(:conversations AS bigint[]),
        CAST(:users AS bigint[]), CAST(:senders AS varchar[]), CAST(:texts AS text[]),
        CAST(:media AS jsonb[]), CAST(:raws AS jsonb[]), CAST(:states AS varchar[]),
        CAST(:received AS timestamptz[])) WITH ORDINALITY
        AS w(channel, external_id, conversation_id, user_id, sender, text, media, raw, state,
            received_at, n)
    ORDER BY w.n
    ON CONFLICT (channel, external_id) DO NOTHING
    RETURNING channel, external_id, id""")
_TOUCH = _sql("""
    UPDATE conversations AS c SET last_inbound_at = w.at
    FROM unnest(CAST(:ids AS bigint[]), CAST(:ats AS timestamptz[])) AS w(id, at)
    WHERE c.id = w.id""")

Key = tuple[str, str]


def _pairs(keys: Iterable[Key]) -> dict[str, list[str]]:
    ordered = sorted(keys)
    return {"a": [k[0] for k in ordered], "b": [k[1] for k in ordered]}


class _Batch:
    """One transaction's worth of messages, stored with a few set-based statements."""

    def __init__(
        self,
        conn: AsyncConnection,
        messages: list[InboundMessage],
        arrivals: list[Arrival],
        backlog: int | None,
    ) -> None:
        self.conn = conn
        self.messages = messages
        self.arrivals = arrivals
        self.backlog = backlog
        self.now = utcnow()

    async def store(self) -> list[Accepted]:
        owners = await self._senders()
        conversations = await self._conversations(owners)
        keys = [(m.channel, m.external_id) for m in self.messages]
        ids = await self._find(_KNOWN, set(keys))
        owed = await self._owed(set(conversations.values())) if self.backlog is not None else {}
        rows: list[tuple[Any, ...]] = []
        first: dict[Key, int] = {}  # a key's first occurrence in this batch
        over: set[int] = set()
        for n, (m, arrival) in enumerate(zip(self.messages, self.arrivals, strict=True)):
            key = keys[n]
            if key in ids or key in first:
                continue
            first[key] = n
            conversation_id = conversations[(m.channel, m.conversation_key)]
            ignored = m.ignored is not None or arrival.over_rate
            if m.ignored is None and self.backlog is not None:
                if owed.get(conversation_id, 0) >= self.backlog:
                    over.add(n)
                    ignored = True
                else:
                    owed[conversation_id] = owed.get(conversation_id, 0) + 1
            rows.append(
                (
                    m.channel,
                    m.external_id,
                    conversation_id,
                    self._user(m, owners),
                    m.sender,
                    m.text,
                    storable_json(msgspec.to_builtins(m.media)),
                    storable_json(m.raw),
                    (MessageState.IGNORED if ignored else MessageState.RECEIVED).value,
                    m.received_at,
                )
            )
        created: dict[Key, int] = {}
        if rows:
            columns = list(zip(*rows, strict=True))
            names = ("a", "b", "conversations", "users", "senders", "texts", "media", "raws")
            params: dict[str, Any] = dict(zip(names, map(list, columns), strict=False))
            params.update(states=list(columns[8]), received=list(columns[9]), now=self.now)
            created = await self._pairs_to_ids(_INSERT, params)
        lost = {key for key in first if key not in created}
        if lost:  # stored meanwhile by another process: duplicates after all
            ids.update(await self._find(_KNOWN, lost))
        ids.update(created)
        await self._touch(created, conversations)
        return [
            Accepted(
                message_id=ids[key],
                conversation_id=conversations[(m.channel, m.conversation_key)],
                user_id=self._user(m, owners),
                duplicate=first.get(key) != n or key not in created,
                over_backlog=n in over and key in created,
                over_rate=self.arrivals[n].over_rate and key in created,
            )
            for n, (m, key) in enumerate(zip(self.messages, keys, strict=True))
        ]

    @staticmethod
    def _user(m: InboundMessage, owners: dict[Key, int]) -> int | None:
        return m.as_user if m.as_user is not None else owners.get(m.identity)

    async def _senders(self) -> dict[Key, int]:
        """Each sender's user; an unknown sender of a message to act on becomes a guest."""
        owners = await self._find(_OWNERS, {m.identity for m in self.messages if m.as_user is None})
        new = sorted(
            {m.identity for m in self.messages if m.as_user is None and m.ignored is None}
            - owners.keys()
        )
        if not new:
            return owners
        names: dict[Key, str] = {}
        for m in self.messages:
            names.setdefault(m.identity, fit(m.sender_name or m.sender, NAME_CHARS))
        made = await self.conn.execute(_GUESTS, {"names": [names[k] for k in new], "now": self.now})
        # Ids are drawn in the order rows are inserted (ORDER BY), as SQLAlchemy relies on too.
        guests = dict(zip(new, sorted(int(row[0]) for row in made), strict=True))
        registered = await self._pairs_to_ids(
            _REGISTER, {**_pairs(new), "users": [guests[k] for k in new], "now": self.now}
        )
        owners.update(registered)
        lost = [key for key in new if key not in registered]
        if lost:
            # Another request registered these senders first: keep theirs, drop ours.
            owners.update(await self._find(_OWNERS, set(lost)))
            await self.conn.execute(_DROP_USERS, {"ids": [guests[k] for k in lost]})
        return owners

    async def _conversations(self, owners: dict[Key, int]) -> dict[Key, int]:
        keys = {(m.channel, m.conversation_key) for m in self.messages}
        found = await self._find(_CONVERSATIONS, keys)
        starter: dict[Key, int | None] = {}
        for m in self.messages:
            starter.setdefault((m.channel, m.conversation_key), self._user(m, owners))
        new = sorted(keys - found.keys())
        if new:
            found.update(
                await self._pairs_to_ids(
                    _START, {**_pairs(new), "users": [starter[k] for k in new], "now": self.now}
                )
            )
            lost = keys - found.keys()
            if lost:
                found.update(await self._find(_CONVERSATIONS, lost))
        return found

    async def _owed(self, conversation_ids: set[int]) -> dict[int, int]:
        """Messages of each conversation not interpreted yet."""
        if not conversation_ids:
            return {}
        rows = await self.conn.execute(
            _OWED,
            {"ids": sorted(conversation_ids), "states": [s.value for s in UNDISPATCHED]},
        )
        return {int(c): int(n) for c, n in rows}

    async def _touch(self, created: dict[Key, int], conversations: dict[Key, int]) -> None:
        """When the user last wrote (WhatsApp's 24-hour window), from the messages to act on."""
        latest: dict[int, dt.datetime] = {}
        for m in self.messages:
            if m.ignored is not None or (m.channel, m.external_id) not in created:
                continue
            conversation_id = conversations[(m.channel, m.conversation_key)]
            latest[conversation_id] = max(latest.get(conversation_id, m.received_at), m.received_at)
        if latest:
            ordered = sorted(latest.items())
            await self.conn.execute(
                _TOUCH, {"ids": [c for c, _ in ordered], "ats": [at for _, at in ordered]}
            )

    async def _find(self, statement: TextClause, keys: Iterable[Key]) -> dict[Key, int]:
        """{key: id} of the rows ``statement`` finds for ``keys`` (pairs of strings)."""
        keys = set(keys)
        return await self._pairs_to_ids(statement, _pairs(keys)) if keys else {}

    async def _pairs_to_ids(self, statement: TextClause, params: dict[str, Any]) -> dict[Key, int]:
        rows = await self.conn.execute(statement, params)
        return {(str(x), str(y)): int(v) for x, y, v in rows}
