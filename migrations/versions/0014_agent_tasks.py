"""external agents: agent tokens and what they serve, tasks' claims and review rounds, artifacts
and review votes

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 19:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("serves", Json, nullable=True))
    with op.batch_alter_table("agent_activities") as batch:
        batch.add_column(sa.Column("agent_token_id", sa.BigInteger(), nullable=True))
        batch.add_column(
            sa.Column("review_round", sa.Integer(), nullable=False, server_default="0")
        )
    op.create_table(
        "artifacts",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column(
            "activity_id",
            Id,
            sa.ForeignKey("agent_activities.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("agent_token_id", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("summary", Json, nullable=False),
        sa.Column("review_round", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("activity_id", "idempotency_key", name="uq_artifact_idempotency"),
    )
    op.create_index("ix_artifacts_activity_id", "artifacts", ["activity_id"])
    op.create_table(
        "review_votes",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column(
            "activity_id",
            Id,
            sa.ForeignKey("agent_activities.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("user_id", Id, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("decision", sa.String(24), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("activity_id", "round", "user_id", name="uq_review_vote_round_user"),
    )
    op.create_index("ix_review_votes_activity_id", "review_votes", ["activity_id"])


def downgrade() -> None:
    op.drop_index("ix_review_votes_activity_id", table_name="review_votes")
    op.drop_table("review_votes")
    op.drop_index("ix_artifacts_activity_id", table_name="artifacts")
    op.drop_table("artifacts")
    with op.batch_alter_table("agent_activities") as batch:
        batch.drop_column("review_round")
        batch.drop_column("agent_token_id")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("serves")
