"""Group commit: what verified providers send, stored in batches.

Every webhook request hands its messages to :class:`Intake` and waits. One flush at a time
takes everything waiting (up to ``MAX_BATCH``) and stores it in one transaction of a few
set-based statements: senders, conversations, duplicates, backlogs, messages. Each request is
answered once its batch has committed, so a 2xx still means stored; while one batch commits,
the next one fills. What the batch asks for next (queueing the new messages, telling a sender
to slow down) runs after the commit, off the request path (``after``).

A batch that fails for a reason other than an outage is stored again one message at a time,
so one bad message cannot fail the others; an outage fails the whole batch (each request is
answered 503 and the provider retries).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import msgspec
from sqlalchemy import Table, bindparam, delete, func, insert, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from dispatch.clean import fit
from dispatch.messages import InboundMessage
from dispatch.models import UNDISPATCHED, Conversation, Direction, Message, MessageState, User
from dispatch.models import UserIdentity as Identity
from dispatch.outage import is_unavailable
from dispatch.store import GUEST_ROLE, NAME_CHARS, Accepted, MessageStore, storable

__all__ = ["Arrival", "Intake"]

log = logging.getLogger("switchboard.intake")

MAX_BATCH = 500
"""Messages one transaction stores at most."""
BACKLOG_FULL = "conversation backlog full"

_users: Table = User.__table__  # type: ignore[assignment]
_identities: Table = Identity.__table__  # type: ignore[assignment]
_conversations: Table = Conversation.__table__  # type: ignore[assignment]
_messages: Table = Message.__table__  # type: ignore[assignment]


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
        self._flushing: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, arrivals: Sequence[Arrival]) -> list[Accepted]:
        """Store ``arrivals`` with whatever else is waiting; their outcomes, once committed."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in arrivals]
        self._waiting.extend(zip(arrivals, futures, strict=True))
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush(), name="switchboard-intake")
        return list(await asyncio.gather(*futures))

    async def _flush(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                await self._commit(batch)
        finally:
            self._flushing = None

    async def _commit(self, batch: list[tuple[Arrival, asyncio.Future[Accepted]]]) -> None:
        arrivals = [arrival for arrival, _ in batch]
        try:
            outcomes = await self._store_batch(arrivals)
        except Exception as exc:
            if is_unavailable(exc) or len(batch) == 1:
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
        if self._flushing is not None:
            with contextlib.suppress(Exception):
                await self._flushing
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _store_batch(self, arrivals: list[Arrival]) -> list[Accepted]:
        messages = [storable(a.message) for a in arrivals]
        if any(m.guests_only or m.anonymous for m in messages):
            # What a client sends on someone's behalf is checked message by message.
            return [
                await self._store.accept(arrival.message, backlog=self._backlog)
                for arrival in arrivals
            ]
        async with self._store.connection() as conn:
            return await _Batch(conn, messages, arrivals, self._backlog).store()


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
        self.postgres = conn.dialect.name == "postgresql"

    async def store(self) -> list[Accepted]:
        owners = await self._senders()
        conversations = await self._conversations(owners)
        keys = [(m.channel, m.external_id) for m in self.messages]
        ids = await self._ids(_messages, ("channel", "external_id"), set(keys))
        owed = await self._owed(set(conversations.values())) if self.backlog is not None else {}
        rows: list[dict[str, Any]] = []
        first: dict[tuple[str, str], int] = {}  # a key's first occurrence in this batch
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
                {
                    "direction": Direction.INBOUND.value,
                    "channel": m.channel,
                    "external_id": m.external_id,
                    "conversation_id": conversation_id,
                    "user_id": self._user(m, owners),
                    "sender": m.sender,
                    "text": m.text,
                    "media": msgspec.to_builtins(m.media),
                    "raw": m.raw,
                    "state": (MessageState.IGNORED if ignored else MessageState.RECEIVED).value,
                    "received_at": m.received_at,
                }
            )
        created = await self._insert(
            _messages,
            ("channel", "external_id"),
            rows,
            (_messages.c.channel, _messages.c.external_id),
        )
        lost = {key for key in first if key not in created}
        if lost:  # stored meanwhile by another process: duplicates after all
            ids.update(await self._ids(_messages, ("channel", "external_id"), lost))
        ids.update(created)
        await self._touch_conversations(created, conversations)
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
    def _user(m: InboundMessage, owners: dict[tuple[str, str], int]) -> int | None:
        return m.as_user if m.as_user is not None else owners.get(m.identity)

    async def _senders(self) -> dict[tuple[str, str], int]:
        """Each sender's user; an unknown sender of a message to act on becomes a guest."""
        wanted = {m.identity for m in self.messages if m.as_user is None}
        owners = await self._ids(_identities, ("channel", "address"), wanted, _identities.c.user_id)
        new = sorted(
            {m.identity for m in self.messages if m.as_user is None and m.ignored is None}
            - owners.keys()
        )
        if not new:
            return owners
        names: dict[tuple[str, str], str] = {}
        for m in self.messages:
            names.setdefault(m.identity, fit(m.sender_name or m.sender, NAME_CHARS))
        users = await self.conn.execute(
            insert(_users).returning(_users.c.id, sort_by_parameter_order=True),
            [{"name": names[key], "role": GUEST_ROLE} for key in new],
        )
        guests = dict(zip(new, (int(row[0]) for row in users), strict=True))
        rows = [{"user_id": guests[k], "channel": k[0], "address": k[1]} for k in new]
        registered = await self._insert(
            _identities,
            ("channel", "address"),
            rows,
            (_identities.c.channel, _identities.c.address),
            _identities.c.user_id,
        )
        owners.update(registered)
        lost = [key for key in new if key not in registered]
        if lost:
            # Another request registered these senders first: keep theirs, drop ours.
            owners.update(
                await self._ids(
                    _identities, ("channel", "address"), set(lost), _identities.c.user_id
                )
            )
            await self.conn.execute(
                delete(_users).where(_users.c.id.in_([guests[k] for k in lost]))
            )
        return owners

    async def _conversations(
        self, owners: dict[tuple[str, str], int]
    ) -> dict[tuple[str, str], int]:
        keys = {(m.channel, m.conversation_key) for m in self.messages}
        found = await self._ids(_conversations, ("channel", "key"), keys)
        starter: dict[tuple[str, str], int | None] = {}
        for m in self.messages:
            starter.setdefault((m.channel, m.conversation_key), self._user(m, owners))
        rows = [
            {"channel": k[0], "key": k[1], "user_id": starter[k]}
            for k in sorted(keys - found.keys())
        ]
        if rows:
            created = await self._insert(
                _conversations,
                ("channel", "key"),
                rows,
                (_conversations.c.channel, _conversations.c.key),
            )
            found.update(created)
            lost = keys - found.keys()
            if lost:
                found.update(await self._ids(_conversations, ("channel", "key"), lost))
        return found

    async def _owed(self, conversation_ids: set[int]) -> dict[int, int]:
        """Messages of each conversation not interpreted yet."""
        if not conversation_ids:
            return {}
        rows = await self.conn.execute(
            select(_messages.c.conversation_id, func.count())
            .where(
                _messages.c.conversation_id.in_(sorted(conversation_ids)),
                _messages.c.state.in_([s.value for s in UNDISPATCHED]),
            )
            .group_by(_messages.c.conversation_id)
        )
        return {int(c): int(n) for c, n in rows}

    async def _touch_conversations(
        self, created: dict[tuple[str, str], int], conversations: dict[tuple[str, str], int]
    ) -> None:
        """When the user last wrote (WhatsApp's 24-hour window), from the messages to act on."""
        latest: dict[int, Any] = {}
        for m in self.messages:
            if m.ignored is not None or (m.channel, m.external_id) not in created:
                continue
            conversation_id = conversations[(m.channel, m.conversation_key)]
            latest[conversation_id] = max(latest.get(conversation_id, m.received_at), m.received_at)
        if latest:
            await self.conn.execute(
                update(_conversations)
                .where(_conversations.c.id == bindparam("cid"))
                .values(last_inbound_at=bindparam("at")),
                [{"cid": cid, "at": at} for cid, at in sorted(latest.items())],
            )

    async def _ids(
        self,
        table: Table,
        key: tuple[str, str],
        wanted: Iterable[tuple[str, str]],
        value: Any = None,
    ) -> dict[tuple[str, str], int]:
        """{key: id (or ``value``)} of the rows of ``table`` whose two ``key`` columns are among
        ``wanted``."""
        wanted = sorted(wanted)
        if not wanted:
            return {}
        a, b = table.c[key[0]], table.c[key[1]]
        rows = await self.conn.execute(
            select(a, b, table.c.id if value is None else value).where(tuple_(a, b).in_(wanted))
        )
        return {(str(x), str(y)): int(v) for x, y, v in rows}

    async def _insert(
        self,
        table: Table,
        conflict: tuple[str, str],
        rows: list[dict[str, Any]],
        key: tuple[Any, Any],
        value: Any = None,
    ) -> dict[tuple[str, str], int]:
        """Insert ``rows`` but those whose ``conflict`` columns exist; {key: id} of the new ones."""
        if not rows:
            return {}
        dialect = postgresql if self.postgres else sqlite
        statement = (
            dialect.insert(table)
            .on_conflict_do_nothing(index_elements=list(conflict))
            .returning(*key, table.c.id if value is None else value)
        )
        result = await self.conn.execute(statement, rows)
        return {(str(x), str(y)): int(v) for x, y, v in result}
