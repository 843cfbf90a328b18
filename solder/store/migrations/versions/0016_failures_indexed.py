"""executions: the failed ones in indexes of their own

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 17:00:00.000000

`GET /workflows/{id}/errors` lists a workflow's failed executions newest first. With no
index that knows an execution failed, it walked the logs pages' index from the newest
down and read each row to see its status: a page of failures cost as many rows as it
took to find them, the whole pair when few or none had failed (100 ms on the 100,000
executions of scenario 1's big pair, a second on a million).

An index on `status`, even one with `WHERE status = 'failed'`, would make every update of
a run's row on PostgreSQL write an entry in each of the table's indexes: `status` changes
at the claim and at the end, and a column in an index's keys or condition rules out a
heap-only update (migration 0013). So the end of a failed execution also sets `failed`
(true; null otherwise), a column no other write changes, and two partial indexes hold
the failed executions only, in the order of each logs listing: of one user, and of all
its users. A successful run's end leaves `failed` null, so its update stays heap-only.

The upgrade marks the executions that have already failed (one pass over the table) and
builds both indexes (a pass each), holding the table's write lock while it runs: 0.6 s
for 1,100,000 executions, 11,000 of them failed, on SQLite and on PostgreSQL alike on
the benchmark machine (the table in memory; docs/deploy.md).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_FAILED = sa.text("failed IS NOT NULL")
_INDEXES = {
    "ix_executions_failures_user": ["workflow_number", "user_number", "user_position"],
    "ix_executions_failures": ["workflow_number", "workflow_position"],
}


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.add_column("executions", sa.Column("failed", sa.Boolean(), nullable=True))
    if postgres:
        # Migration 0015's sample: every column of the table keeps it.
        op.execute("ALTER TABLE executions ALTER COLUMN failed SET STATISTICS 10")
    op.execute("UPDATE executions SET failed = TRUE WHERE status = 'failed'")
    for name, columns in _INDEXES.items():
        op.create_index(
            name,
            "executions",
            columns,
            unique=True,
            sqlite_where=_FAILED,
            postgresql_where=_FAILED,
        )


def downgrade() -> None:
    for name in _INDEXES:
        op.drop_index(name, table_name="executions")
    with op.batch_alter_table("executions") as batch:
        batch.drop_column("failed")
