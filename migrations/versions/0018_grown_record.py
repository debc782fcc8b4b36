"""a grown record: read by index, not whole tables; removed activities leave the histogram alone

Retention (``SWITCHBOARD_RETENTION_DAYS``) removes old finished activities. Their count in
``switchboard_activities`` (what is stored) goes down with them, as before; the handler duration
histogram is what happened, a counter, and no longer counts down when a row is removed.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06 05:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# An activity removed: only the stored figure counts down (0010 counted every figure down).
_ACTIVITY_GONE = (
    "SELECT 'activities', CAST(OLD.agent_name AS varchar(255)), "
    "CAST(OLD.action_type AS varchar(255)), CAST(OLD.status AS varchar(255)), -1"
)


def _activity_delete_trigger() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"""
            CREATE OR REPLACE FUNCTION tally_agent_activities_delete() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO tally_deltas (family, a, b, c, n) {_ACTIVITY_GONE};
                RETURN NULL;
            END $$""")
        return
    op.execute("DROP TRIGGER IF EXISTS tally_agent_activities_delete")
    op.execute(f"""
        CREATE TRIGGER tally_agent_activities_delete AFTER DELETE ON agent_activities BEGIN
            INSERT INTO tallies (family, a, b, c, n) {_ACTIVITY_GONE}
            ON CONFLICT (family, a, b, c) DO UPDATE SET n = n + excluded.n;
        END""")


def upgrade() -> None:
    _activity_delete_trigger()
    # The inbox's order (last written in, newest first, then id), read backwards.
    op.drop_index("ix_conversations_last_inbound_at", table_name="conversations")
    op.create_index("ix_conversations_inbox", "conversations", ["last_inbound_at", "id"])
    # The summary's window, and an activity list's "since".
    op.create_index("ix_agent_activities_created_at", "agent_activities", ["created_at"])
    # An action's activities newest first: the tasks board, a list filtered by agent and action.
    op.create_index(
        "ix_agent_activities_action", "agent_activities", ["agent_name", "action_type", "id"]
    )
    # Replies not yet handed over (recovery's look): only those, not every message sent.
    unsent = sa.text("delivery IN ('pending', 'sending')")
    op.create_index(
        "ix_messages_unsent",
        "messages",
        ["delivery", "updated_at"],
        postgresql_where=unsent,
        sqlite_where=unsent,
    )
    # The staff among many people (the inbox tells visitors' conversations from staff's).
    op.create_index("ix_users_role", "users", ["role"])


def downgrade() -> None:
    # The narrower delete trigger stays: 0010's counted the histogram down, which was wrong.
    op.drop_index("ix_users_role", table_name="users")
    op.drop_index("ix_messages_unsent", table_name="messages")
    op.drop_index("ix_agent_activities_action", table_name="agent_activities")
    op.drop_index("ix_agent_activities_created_at", table_name="agent_activities")
    op.drop_index("ix_conversations_inbox", table_name="conversations")
    op.create_index("ix_conversations_last_inbound_at", "conversations", ["last_inbound_at"])
