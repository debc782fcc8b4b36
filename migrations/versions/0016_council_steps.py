"""council steps: each answered step of a council run, stored as it completes; a council's
proposal is an artifact of no agent

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05 19:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "council_steps",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column(
            "activity_id",
            Id,
            sa.ForeignKey("agent_activities.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("step", sa.String(16), nullable=False),
        sa.Column("member", sa.String(64), nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("data", Json, nullable=False),
        sa.Column("error", sa.String(500), nullable=True),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint(
            "activity_id", "round", "step", "member", "target", name="uq_council_step"
        ),
    )
    op.create_index("ix_council_steps_activity_id", "council_steps", ["activity_id"])
    with op.batch_alter_table("artifacts") as batch:  # a council's proposal has no agent
        batch.alter_column("agent_token_id", existing_type=sa.BigInteger(), nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("artifacts") as batch:
        batch.alter_column("agent_token_id", existing_type=sa.BigInteger(), nullable=False)
    op.drop_index("ix_council_steps_activity_id", table_name="council_steps")
    op.drop_table("council_steps")
