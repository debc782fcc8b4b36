"""the inbox: a conversation's assignee, and conversations listed by when their person last wrote

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 17:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(
            sa.Column(
                "assignee_user_id",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                nullable=True,
            )
        )
        batch.create_foreign_key(
            "fk_conversations_assignee_user_id_users", "users", ["assignee_user_id"], ["id"]
        )
        batch.create_index("ix_conversations_last_inbound_at", ["last_inbound_at"])


def downgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.drop_index("ix_conversations_last_inbound_at")
        batch.drop_constraint("fk_conversations_assignee_user_id_users", type_="foreignkey")
        batch.drop_column("assignee_user_id")
