"""log positions: a page of logs at any depth in one seek

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 05:00:00.000000

A page of logs at offset n walked n entries of a logs index before its own: at offset
30,000, four to five times the cost of page 1 (bench/RESULTS.md, scenario 1). Each
execution now has its place in its workflow's logs pages, of its user and of all users
(`user_position`, `workflow_position`: 1, 2, 3... in the order executions were recorded),
and `log_listings` says where each listing's positions stand, so the page at offset n
is the one at position `last_position - n` (schema.py, `log_listings`).

Every execution stored before gets its positions in its listing's order of then (start
time, then `seq`); nothing was deleted from the new positions, so every listing starts
dense. The user's logs index is rebuilt on positions; the workflow's by start time stays
for retention, failed executions and compaction, and one by position is added. Run it
while no worker runs, as every migration.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    position = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    # SQLite adds a NOT NULL column only with a default; PostgreSQL drops it below, and
    # SQLite's is never used: every insert gives both positions.
    for column in ("user_position", "workflow_position"):
        op.add_column(
            "executions",
            sa.Column(column, position, nullable=False, server_default=sa.text("0")),
        )
    op.execute(
        "UPDATE executions SET user_position = p.user_position,"
        " workflow_position = p.workflow_position"
        " FROM (SELECT seq,"
        " row_number() OVER (PARTITION BY workflow_number, user_number"
        " ORDER BY started_at, seq) AS user_position,"
        " row_number() OVER (PARTITION BY workflow_number"
        " ORDER BY started_at, seq) AS workflow_position"
        " FROM executions) AS p"
        " WHERE p.seq = executions.seq"
    )
    if postgres:
        for column in ("user_position", "workflow_position"):
            op.alter_column("executions", column, server_default=None)
    op.create_table(
        "log_listings",
        sa.Column("workflow_number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("user_number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_position", sa.BigInteger(), nullable=False),
        sa.Column("deleted", sa.BigInteger(), nullable=False),
        sa.Column("deleted_top", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("workflow_number", "user_number", name=op.f("pk_log_listings")),
    )
    op.execute(
        "INSERT INTO log_listings"
        " (workflow_number, user_number, last_position, deleted, deleted_top)"
        " SELECT workflow_number, user_number, max(user_position), 0, 0"
        " FROM executions GROUP BY workflow_number, user_number"
    )
    op.execute(
        "INSERT INTO log_listings"
        " (workflow_number, user_number, last_position, deleted, deleted_top)"
        " SELECT workflow_number, 0, max(workflow_position), 0, 0"
        " FROM executions GROUP BY workflow_number"
    )
    op.drop_index("ix_executions_user_logs", table_name="executions")
    op.create_index(
        "ix_executions_user_logs",
        "executions",
        ["workflow_number", "user_number", "user_position"],
        unique=True,
    )
    op.create_index(
        "ix_executions_workflow_positions",
        "executions",
        ["workflow_number", "workflow_position"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("ix_executions_workflow_positions", table_name="executions")
    op.drop_index("ix_executions_user_logs", table_name="executions")
    op.create_index(
        "ix_executions_user_logs",
        "executions",
        ["workflow_number", "user_number", "started_at", "seq"],
    )
    op.drop_table("log_listings")
    with op.batch_alter_table("executions") as batch:
        batch.drop_column("workflow_position")
        batch.drop_column("user_position")
