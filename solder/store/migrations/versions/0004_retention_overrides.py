"""retention overrides: per tenant and per workflow

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 10:00:00.000000

No index: the purge deletes one workflow's expired executions at a time through
`ix_executions_workflow_logs` (tenant_id, workflow_id, started_at, id), which exists.
SQLite's switch to incremental auto-vacuum is not done here: it needs a VACUUM, which
rewrites the whole file outside any transaction (`solder vacuum`, docs/decisions.md).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("retention_ms", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("workflows", schema=None) as batch_op:
        batch_op.add_column(sa.Column("retention_ms", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workflows", schema=None) as batch_op:
        batch_op.drop_column("retention_ms")
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("retention_ms")
