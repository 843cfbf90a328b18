"""log dictionaries: each tenant's trained zstd dictionaries; no started_at index

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 09:00:00.000000

`ix_executions_started_at` goes: no statement needs it (retention purges workflow by
workflow through `ix_executions_workflow_logs`, on both databases: EXPLAIN in
docs/decisions.md), and it cost 17 bytes an execution on SQLite, 23 on PostgreSQL
(bench/RESULTS.md, scenario 4).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "log_dictionaries",
        sa.Column("tenant_id", sa.String(length=24), nullable=False),
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("compacted_at", sa.BigInteger(), nullable=True),
        sa.Column("checked_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_log_dictionaries_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_log_dictionaries")),
    )
    # Not in batch mode: dropping an index never needs SQLite's table copy.
    op.drop_index("ix_executions_started_at", table_name="executions")


def downgrade() -> None:
    op.create_index("ix_executions_started_at", "executions", ["started_at"], unique=False)
    op.drop_table("log_dictionaries")
