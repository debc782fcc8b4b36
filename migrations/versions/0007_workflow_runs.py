"""workflow runs: a catalog workflow's run, and its steps' activities linked to it

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "workflow_runs",
        sa.Column(
            "id",
            _ID,
            sa.ForeignKey("agent_activities.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("workflow", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("input", _JSON, nullable=False),
        sa.Column("error", _JSON, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_workflow_runs_status", "workflow_runs", ["status"])
    with op.batch_alter_table("agent_activities") as batch:
        batch.add_column(sa.Column("workflow_run_id", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("workflow_step", sa.String(length=64), nullable=True))
        batch.create_index(
            "uq_agent_activities_workflow_step", ["workflow_run_id", "workflow_step"], unique=True
        )


def downgrade() -> None:
    with op.batch_alter_table("agent_activities") as batch:
        batch.drop_index("uq_agent_activities_workflow_step")
        batch.drop_column("workflow_step")
        batch.drop_column("workflow_run_id")
    op.drop_index("ix_workflow_runs_status", table_name="workflow_runs")
    op.drop_table("workflow_runs")
