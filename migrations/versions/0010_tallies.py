"""tallies: the figures /metrics shows, kept by triggers as rows change (no scrape reads a table)

Messages by direction, channel and state (or delivery), activities by agent, action and status,
handler durations (a histogram) and approval decisions are counted by the database as each row
is written, in the writing transaction: a rollback takes its counts with it, and nothing in the
code can forget to count.

- PostgreSQL: triggers append one row per figure that changed to ``tally_deltas``
  (append-only: concurrent writers never wait on a shared counter row), an insert statement
  once for all its rows (its transition table), an update only when it changes a column the
  figures read; ``Stats.fold`` moves them into ``tallies``.
- SQLite (one writer at a time): row-level triggers add to ``tallies`` directly.

The duration buckets are frozen here (seconds): a change of buckets is a new revision.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 16:45:00
"""

# ruff: noqa: S608 - every name and expression here is ours; nothing is bound from outside

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Figure(NamedTuple):
    """One family counted from a table's rows: label expressions, weight and filter, written
    with ``{r}`` for the row (a transition table's columns, or SQLite's ``NEW.``/``OLD.``)."""

    family: str
    a: str
    b: str = "''"
    c: str = "''"
    n: str = "1"
    where: str = "true"


def _duration(dialect: str) -> str:
    if dialect == "postgresql":
        return "CAST({r}metrics ->> 'duration_ms' AS double precision)"
    return "CAST(json_extract({r}metrics, '$.duration_ms') AS REAL)"


def _figures(dialect: str) -> dict[str, list[Figure]]:
    ms = _duration(dialect)
    ran = f"{{r}}started_at IS NOT NULL AND {ms} IS NOT NULL"
    bucket = (
        "CASE "
        + " ".join(
            f"WHEN {ms} <= {bound * 1000!r} THEN '{bound!r}'" for bound in DURATION_BUCKETS_S
        )
        + " ELSE '+Inf' END"
    )
    return {
        "messages": [
            Figure(
                "messages",
                "{r}direction",
                "{r}channel",
                "coalesce({r}delivery, {r}state, 'unknown')",
            )
        ],
        "agent_activities": [
            Figure("activities", "{r}agent_name", "{r}action_type", "{r}status"),
            Figure("duration", bucket, where=ran),
            Figure("duration_sum", "''", n=f"CAST(round({ms} * 1000) AS BIGINT)", where=ran),
        ],
        "activity_events": [
            Figure("decisions", "{r}kind", where="{r}kind IN ('approved', 'rejected')"),
        ],
    }


# Decisions are a counter: an event deleted (with its activity) does not count down.
_COUNTS_DOWN = {"messages": True, "agent_activities": True, "activity_events": False}
# The columns the figures read: an update that changes none of them (a lease renewed, a claim
# taken) fires nothing (a row trigger's WHEN, checked before any function runs).
_READS = {
    "messages": ("direction", "channel", "state", "delivery"),
    "agent_activities": ("agent_name", "action_type", "status", "started_at", "metrics"),
    "activity_events": ("kind",),
}
_ROW = "(SELECT 1) AS one"


def _select(figures: list[Figure], rows: str, r: str, sign: int) -> str:
    """The figures of ``rows`` (a table, or a transition table), signed."""
    return " UNION ALL ".join(
        f"SELECT '{f.family}' AS family, CAST({f.a} AS varchar(255)) AS a, "
        f"CAST({f.b} AS varchar(255)) AS b, CAST({f.c} AS varchar(255)) AS c, "
        f"{sign} * ({f.n}) AS n FROM {rows} WHERE {f.where}".replace("{r}", r)
        for f in figures
    )


def _summed(parts: list[str]) -> str:
    return (
        f"SELECT family, a, b, c, sum(n) FROM ({' UNION ALL '.join(parts)}) AS d "
        "GROUP BY family, a, b, c HAVING sum(n) <> 0"
    )


def _changed(table: str, differ: str) -> str:
    return " OR ".join(f"OLD.{column} {differ} NEW.{column}" for column in _READS[table])


def _postgres_triggers(table: str, figures: list[Figure]) -> None:
    """A batch of inserts is counted once per statement (its transition table); an update or
    a delete, row by row, and only when it changes what is counted."""
    ops = {
        "insert": (
            "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT",
            [_select(figures, "new_rows", "", 1)],
        ),
        "update": (
            f"FOR EACH ROW WHEN ({_changed(table, 'IS DISTINCT FROM')})",
            [_select(figures, _ROW, "NEW.", 1), _select(figures, _ROW, "OLD.", -1)],
        ),
    }
    if _COUNTS_DOWN[table]:
        ops["delete"] = ("FOR EACH ROW", [_select(figures, _ROW, "OLD.", -1)])
    for event, (when, parts) in ops.items():
        name = f"tally_{table}_{event}"
        op.execute(f"""
            CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO tally_deltas (family, a, b, c, n) {_summed(parts)};
                RETURN NULL;
            END $$""")
        op.execute(
            f"CREATE TRIGGER {name} AFTER {event.upper()} ON {table} {when} "
            f"EXECUTE FUNCTION {name}()"
        )


def _sqlite_triggers(table: str, figures: list[Figure]) -> None:
    upsert = "ON CONFLICT (family, a, b, c) DO UPDATE SET n = n + excluded.n"
    ops = {
        "insert": ("", [_select(figures, _ROW, "NEW.", 1)]),
        "update": (
            f"WHEN {_changed(table, 'IS NOT')}",
            [_select(figures, _ROW, "NEW.", 1), _select(figures, _ROW, "OLD.", -1)],
        ),
    }
    if _COUNTS_DOWN[table]:
        ops["delete"] = ("", [_select(figures, _ROW, "OLD.", -1)])
    for event, (when, parts) in ops.items():
        op.execute(f"""
            CREATE TRIGGER tally_{table}_{event} AFTER {event.upper()} ON {table} {when} BEGIN
                INSERT INTO tallies (family, a, b, c, n) {_summed(parts)} {upsert};
            END""")


def upgrade() -> None:
    label = sa.String(length=255)
    op.create_table(
        "tallies",
        sa.Column("family", sa.String(length=32), nullable=False),
        sa.Column("a", label, nullable=False),
        sa.Column("b", label, nullable=False),
        sa.Column("c", label, nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("family", "a", "b", "c"),
    )
    op.create_table(
        "tally_deltas",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("family", sa.String(length=32), nullable=False),
        sa.Column("a", label, nullable=False),
        sa.Column("b", label, nullable=False),
        sa.Column("c", label, nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    dialect = op.get_bind().dialect.name
    figures = _figures(dialect)
    # What is already there, counted once.
    for table, counted in figures.items():
        op.execute(
            f"INSERT INTO tallies (family, a, b, c, n) {_summed([_select(counted, table, '', 1)])}"
        )
    for table, counted in figures.items():
        if dialect == "postgresql":
            _postgres_triggers(table, counted)
        else:
            _sqlite_triggers(table, counted)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for table in _figures(dialect):
        for event in ("insert", "update", "delete"):
            name = f"tally_{table}_{event}"
            if dialect == "postgresql":
                op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
                op.execute(f"DROP FUNCTION IF EXISTS {name}()")
            else:
                op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_table("tally_deltas")
    op.drop_table("tallies")
