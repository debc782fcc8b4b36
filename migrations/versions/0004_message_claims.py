"""message claims: a dispatch is claimed (attempts, lease) like an activity's run

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 18:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("dispatch_attempts", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_messages_state_conversation", "messages", ["state", "conversation_id", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_messages_state_conversation", table_name="messages")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("claimed_until")
        batch_op.drop_column("dispatch_attempts")
