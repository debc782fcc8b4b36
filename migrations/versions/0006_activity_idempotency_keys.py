"""activity idempotency keys: an API caller's retried execute is the same activity

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 02:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("agent_activities") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(length=300), nullable=True))
        batch.create_index("uq_agent_activities_idempotency_key", ["idempotency_key"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("agent_activities") as batch:
        batch.drop_index("uq_agent_activities_idempotency_key")
        batch.drop_column("idempotency_key")
