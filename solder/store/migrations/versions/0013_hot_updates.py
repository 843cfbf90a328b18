"""The executions' index on their status: dropped on PostgreSQL, for HOT updates

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 06:00:00.000000

A run updates its execution's row twice: its claim (`status`, `claimed_at`, `lease`) and
its end (`status`, the log...). PostgreSQL writes an update without new index entries
(HOT, heap-only) only when no index of the table names a column it changes, in its keys
or its condition, and the new row fits in the old one's page. `ix_executions_pending`
names `status`: each update wrote an entry in each of the table's indexes, the primary
key and the two logs indexes among them, and left as many dead ones for VACUUM.

On PostgreSQL the index served only the sweep for executions that lost their job, which
now finds them from the jobs' side and by a walk of the executions' primary key
(`store/jobs.py`); SQLite's embedded dispatch keeps it as its queue. On a large table
the drop holds the table's lock for as long as it takes to unlink the index's file.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_executions_pending", table_name="executions", if_exists=True)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.create_index(
        "ix_executions_pending",
        "executions",
        ["status", "started_at"],
        postgresql_where=sa.text("status IN ('queued', 'running', 'crashed')"),
    )
