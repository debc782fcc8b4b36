"""Storing inbound messages: one path, on PostgreSQL and SQLite alike.

Whatever is stored — one message a client sent, or the batch a webhook flush took (see
:mod:`dispatch.record.intake`) — goes through :func:`store_inbound`: one transaction of a few
set-based statements (senders, conversations, duplicates, backlogs, messages) over the batch
seen as a table of rows. The statements are the same text on both databases but for that
table: PostgreSQL reads it from bound arrays (``unnest``), SQLite from one bound JSON array
(``json_each``). Either way the text does not depend on the batch's size, so each statement is
compiled and prepared once.

A second message with the same (channel, external_id) stores nothing new and comes back with
``duplicate=True`` and the first one's ids. A message ``over_rate`` (its sender sends too fast)
or over its conversation's backlog is kept, not to be acted on; an ignored message (something
a provider sent that nobody acts on) is kept too, but makes no one a guest.
"""

# ruff: noqa: S608 - every name in these statements is ours; every value is bound

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
from sqlalchemy import Text, TextClause
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from dispatch.infra.clean import clean_json, clean_text, fit
from dispatch.infra.errors import ForbiddenError, RateLimited
from dispatch.record.messages import InboundMessage, Media
from dispatch.record.models import UNDISPATCHED, MessageState, Role, utcnow
from dispatch.record.rows import ID, JSON_ROW, KEY, TIME, Rows, sql

__all__ = [
    "ANONYMOUS",
    "KEY_CHARS",
    "NAME_CHARS",
    "Accepted",
    "Arrival",
    "storable",
    "store_inbound",
]

ANONYMOUS = "web visitor"
"""What people see for a sender whose address is a credential, followed by ``#<user id>``."""
KEY_CHARS = 255
"""Width of the columns that key messages, conversations and identities."""
NAME_CHARS = 200
BACKLOG_RETRY_AFTER_S = 5


class Arrival(msgspec.Struct, frozen=True, kw_only=True):
    """A message as it reaches storage: ``over_rate`` if its sender sends too fast (it is
    kept, not acted on)."""

    message: InboundMessage
    over_rate: bool = False


class Accepted(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of storing an inbound message."""

    message_id: int
    conversation_id: int
    user_id: int | None
    duplicate: bool
    over_backlog: bool = False
    """Its conversation owed too many messages already: kept, not to be acted on."""
    over_rate: bool = False
    """Its sender sent too fast: kept, not to be acted on."""


def storable(message: InboundMessage) -> InboundMessage:
    """The message as the columns can hold it (see :mod:`dispatch.infra.clean`)."""
    return msgspec.structs.replace(
        message,
        external_id=fit(message.external_id, KEY_CHARS),
        conversation_key=fit(message.conversation_key, KEY_CHARS),
        sender=fit(message.sender, KEY_CHARS),
        sender_name=None if message.sender_name is None else fit(message.sender_name, NAME_CHARS),
        text=clean_text(message.text),
        media=tuple(
            Media(url=clean_text(m.url), content_type=fit(m.content_type, KEY_CHARS))
            for m in message.media
        ),
        raw=clean_json(message.raw),
    )


async def store_inbound(
    conn: AsyncConnection,
    arrivals: Sequence[Arrival],
    *,
    backlog: int | None,
    refuse: bool = False,
) -> list[Accepted]:
    """Store ``arrivals`` in the transaction of ``conn``; their outcomes, in order.

    ``backlog``: messages a conversation may owe (not interpreted yet) before the next ones are
    kept but not acted on — or, with ``refuse``, refused (:class:`RateLimited`, nothing stored).
    A client speaking only for guests (``guests_only``) who names someone more is refused
    (:class:`ForbiddenError`).
    """
    return await _Batch(conn, arrivals, backlog=backlog, refuse=refuse).store()


# ---------------------------------------------------------------------------------------------
# The statements


_ID, _KEY, _TIME = ID, KEY, TIME
_PAIR = (("a", _KEY), ("b", _KEY))
_MESSAGE = (
    ("channel", _KEY),
    ("external_id", _KEY),
    ("conversation_id", _ID),
    ("user_id", _ID),
    ("sender", _KEY),
    ("text", Text()),
    ("media", JSON_ROW),
    ("raw", JSON_ROW),
    ("state", _KEY),
    ("received_at", _TIME),
)
_UNDISPATCHED = ", ".join(f"'{s.value}'" for s in UNDISPATCHED)


_sql = sql


class _Statements:
    """Every statement of a batch, for one database; built once per dialect."""

    def __init__(self, rows: Rows) -> None:
        self.rows = rows
        pairs = rows.table("pairs", _PAIR)
        self.owners = self._lookup("user_identities", "channel", "address", "user_id", pairs)
        self.roles = _sql(f"SELECT id, role FROM users WHERE id {rows.member('ids', _ID)}")
        self.guests = _sql(f"""
            INSERT INTO users (name, role, active, created_at)
            SELECT w.name, '{Role.GUEST.value}', true, :now
            FROM {rows.table("rows", (("name", _KEY),))} WHERE true ORDER BY w.n
            RETURNING id""")
        self.rename = _sql(f"""
            UPDATE users SET name = w.name
            FROM {rows.table("rows", (("id", _ID), ("name", _KEY)))} WHERE users.id = w.id""")
        self.register = _sql(f"""
            INSERT INTO user_identities (user_id, channel, address, created_at)
            SELECT w.user_id, w.a, w.b, :now
            FROM {rows.table("rows", (("user_id", _ID), *_PAIR))} WHERE true
            ON CONFLICT (channel, address) DO NOTHING
            RETURNING channel, address, user_id""")
        self.drop_users = _sql(f"DELETE FROM users WHERE id {rows.member('ids', _ID)}")
        self.conversations = self._lookup("conversations", "channel", "key", "id", pairs)
        self.start = _sql(f"""
            INSERT INTO conversations (channel, key, user_id, created_at)
            SELECT w.a, w.b, w.user_id, :now
            FROM {rows.table("rows", (*_PAIR, ("user_id", _ID)))} WHERE true
            ON CONFLICT (channel, key) DO NOTHING
            RETURNING channel, key, id""")
        self.known = self._lookup("messages", "channel", "external_id", "id", pairs)
        self.owed = _sql(f"""
            SELECT conversation_id, count(*) FROM messages
            WHERE conversation_id {rows.member("ids", _ID)} AND state IN ({_UNDISPATCHED})
            GROUP BY conversation_id""")
        columns = ", ".join(name for name, _ in _MESSAGE)
        self.insert = _sql(f"""
            INSERT INTO messages (direction, {columns}, dispatch_attempts, updated_at)
            SELECT 'inbound', {", ".join(f"w.{name}" for name, _ in _MESSAGE)}, 0, :now
            FROM {rows.table("rows", _MESSAGE)} WHERE true ORDER BY w.n
            ON CONFLICT (channel, external_id) DO NOTHING
            RETURNING channel, external_id, id""")
        self.touch = _sql(f"""
            UPDATE conversations SET last_inbound_at = w.at
            FROM {rows.table("rows", (("id", _ID), ("at", _TIME)))}
            WHERE conversations.id = w.id""")

    @staticmethod
    def _lookup(table: str, a: str, b: str, value: str, pairs: str) -> TextClause:
        """``value`` of the rows of ``table`` whose (``a``, ``b``) are among the pairs."""
        return _sql(f"""
            SELECT t.{a}, t.{b}, t.{value} FROM {table} AS t
            JOIN {pairs} ON t.{a} = w.a AND t.{b} = w.b""")


_BUILT: dict[str, _Statements] = {}


def _statements(dialect: Dialect) -> _Statements:
    """The statements for ``dialect``'s database, built on first use."""
    if (built := _BUILT.get(dialect.name)) is None:
        built = _BUILT[dialect.name] = _Statements(Rows(dialect))
    return built


# ---------------------------------------------------------------------------------------------
# The batch

Key = tuple[str, str]


class _Batch:
    """One transaction's worth of messages, stored with a few set-based statements."""

    def __init__(
        self,
        conn: AsyncConnection,
        arrivals: Sequence[Arrival],
        *,
        backlog: int | None,
        refuse: bool,
    ) -> None:
        self.conn = conn
        self.sql = _statements(conn.dialect)
        self.rows = self.sql.rows
        self.messages = [storable(a.message) for a in arrivals]
        self.arrivals = arrivals
        self.backlog = backlog
        self.refuse = refuse
        self.now = utcnow()

    async def store(self) -> list[Accepted]:
        owners = await self._senders()
        conversations = await self._conversations(owners)
        keys = [(m.channel, m.external_id) for m in self.messages]
        ids = await self._find(self.sql.known, set(keys))
        first, over, rows = await self._new_rows(keys, ids, owners, conversations)
        created: dict[Key, int] = {}
        if rows:
            created = await self._pairs_to_ids(
                self.sql.insert, {**self.rows.bind("rows", _MESSAGE, rows), "now": self.now}
            )
        lost = {key for key in first if key not in created}
        if lost:  # stored meanwhile by another process: duplicates after all
            ids.update(await self._find(self.sql.known, lost))
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

    async def _new_rows(
        self,
        keys: list[Key],
        ids: dict[Key, int],
        owners: dict[Key, int],
        conversations: dict[Key, int],
    ) -> tuple[dict[Key, int], set[int], list[tuple[Any, ...]]]:
        """The rows to insert: each key's first occurrence that is not stored yet (``first``),
        and which of them are over their conversation's backlog (``over``)."""
        owed = await self._owed(set(conversations.values())) if self.backlog is not None else {}
        rows: list[tuple[Any, ...]] = []
        first: dict[Key, int] = {}
        over: set[int] = set()
        for n, (m, arrival) in enumerate(zip(self.messages, self.arrivals, strict=True)):
            key = keys[n]
            if key in ids or key in first:
                continue
            first[key] = n
            conversation_id = conversations[(m.channel, m.conversation_key)]
            ignored = m.ignored is not None or arrival.over_rate
            if not ignored and self.backlog is not None:
                if owed.get(conversation_id, 0) >= self.backlog:
                    self._refuse_over_backlog()
                    over.add(n)
                    ignored = True
                else:
                    owed[conversation_id] = owed.get(conversation_id, 0) + 1
            state = MessageState.IGNORED if ignored else MessageState.RECEIVED
            rows.append(
                (
                    m.channel,
                    m.external_id,
                    conversation_id,
                    self._user(m, owners),
                    m.sender,
                    m.text,
                    msgspec.to_builtins(m.media),
                    m.raw,
                    state.value,
                    m.received_at,
                )
            )
        return first, over, rows

    def _refuse_over_backlog(self) -> None:
        if self.refuse:
            raise RateLimited(
                f"this conversation has {self.backlog} messages waiting to be read; "
                "send again once they are answered",
                retry_after_s=BACKLOG_RETRY_AFTER_S,
            )

    @staticmethod
    def _user(m: InboundMessage, owners: dict[Key, int]) -> int | None:
        return m.as_user if m.as_user is not None else owners.get(m.identity)

    async def _senders(self) -> dict[Key, int]:
        """Each sender's user; an unknown sender of a message to act on becomes a guest."""
        speaking = [m for m in self.messages if m.as_user is None]
        owners = await self._find(self.sql.owners, {m.identity for m in speaking})
        await self._only_guests(owners)
        new = sorted({m.identity for m in speaking if m.ignored is None} - owners.keys())
        if not new:
            return owners
        guests = await self._new_guests(new)
        registered = await self._pairs_to_ids(
            self.sql.register,
            {
                **self.rows.bind(
                    "rows", (("user_id", _ID), *_PAIR), [(guests[k], *k) for k in new]
                ),
                "now": self.now,
            },
        )
        owners.update(registered)
        lost = [key for key in new if key not in registered]
        if lost:
            # Another request registered these senders first: keep theirs, drop ours.
            owners.update(await self._find(self.sql.owners, set(lost)))
            await self.conn.execute(
                self.sql.drop_users, self.rows.bind_list("ids", [guests[k] for k in lost])
            )
        return owners

    async def _only_guests(self, owners: dict[Key, int]) -> None:
        """Refuse a message that may speak only for a guest but names someone more."""
        named = {m.identity: m for m in self.messages if m.guests_only and m.identity in owners}
        if not named:
            return
        result = await self.conn.execute(
            self.sql.roles, self.rows.bind_list("ids", {owners[k] for k in named})
        )
        roles = {int(user_id): str(role) for user_id, role in result}
        for key, m in named.items():
            if (role := roles.get(owners[key])) != Role.GUEST:
                raise ForbiddenError(
                    f"{m.sender!r} is a {role}'s address; a token acting for no user speaks only "
                    "for guests (create one with `switchboard tokens create --user ...`)",
                    extra={"field": "sender"},
                )

    async def _new_guests(self, new: list[Key]) -> dict[Key, int]:
        """A guest user for each new sender, named as people should see them."""
        first: dict[Key, InboundMessage] = {}
        for m in self.messages:
            first.setdefault(m.identity, m)
        names = [_shown(first[k]) for k in new]
        made = await self.conn.execute(
            self.sql.guests,
            {**self.rows.bind("rows", (("name", _KEY),), [(n,) for n in names])}
            | {"now": self.now},
        )
        # Ids are drawn in the order rows are inserted (ORDER BY), as SQLAlchemy relies on too.
        guests = dict(zip(new, sorted(int(row[0]) for row in made), strict=True))
        unnamed = [
            (guests[k], fit(f"{ANONYMOUS} #{guests[k]}", NAME_CHARS))
            for k in new
            if first[k].anonymous and not first[k].sender_name
        ]
        if unnamed:
            await self.conn.execute(
                self.sql.rename, self.rows.bind("rows", (("id", _ID), ("name", _KEY)), unnamed)
            )
        return guests

    async def _conversations(self, owners: dict[Key, int]) -> dict[Key, int]:
        keys = {(m.channel, m.conversation_key) for m in self.messages}
        found = await self._find(self.sql.conversations, keys)
        starter: dict[Key, int | None] = {}
        for m in self.messages:
            starter.setdefault((m.channel, m.conversation_key), self._user(m, owners))
        new = sorted(keys - found.keys())
        if new:
            columns = (*_PAIR, ("user_id", _ID))
            found.update(
                await self._pairs_to_ids(
                    self.sql.start,
                    {
                        **self.rows.bind("rows", columns, [(*k, starter[k]) for k in new]),
                        "now": self.now,
                    },
                )
            )
            lost = keys - found.keys()
            if lost:
                found.update(await self._find(self.sql.conversations, lost))
        return found

    async def _owed(self, conversation_ids: set[int]) -> dict[int, int]:
        """Messages of each conversation not interpreted yet."""
        if not conversation_ids:
            return {}
        rows = await self.conn.execute(self.sql.owed, self.rows.bind_list("ids", conversation_ids))
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
            await self.conn.execute(
                self.sql.touch,
                self.rows.bind("rows", (("id", _ID), ("at", _TIME)), sorted(latest.items())),
            )

    async def _find(self, statement: TextClause, keys: Iterable[Key]) -> dict[Key, int]:
        """{key: id} of the rows ``statement`` finds for ``keys`` (pairs of strings)."""
        ordered = sorted(set(keys))
        if not ordered:
            return {}
        return await self._pairs_to_ids(statement, self.rows.bind("pairs", _PAIR, ordered))

    async def _pairs_to_ids(self, statement: TextClause, params: dict[str, Any]) -> dict[Key, int]:
        rows = await self.conn.execute(statement, params)
        return {(str(x), str(y)): int(v) for x, y, v in rows}


def _shown(m: InboundMessage) -> str:
    """A new guest's name: the one they gave, else their address unless it is a credential."""
    return fit(m.sender_name or (ANONYMOUS if m.anonymous else m.sender), NAME_CHARS)
