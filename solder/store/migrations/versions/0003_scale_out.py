"""scale-out: leases, the crashed state, procrastinate's queue on PostgreSQL

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 01:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_PENDING = "status IN ('queued', 'running', 'crashed')"
_PENDING_BEFORE = "status IN ('queued', 'running')"

_DROP_PROCRASTINATE = """
DO $$
DECLARE f regprocedure;
BEGIN
    FOR f IN SELECT oid::regprocedure FROM pg_proc WHERE proname LIKE 'procrastinate\\_%' LOOP
        EXECUTE 'DROP FUNCTION IF EXISTS ' || f || ' CASCADE';
    END LOOP;
END
$$;
DROP TABLE IF EXISTS procrastinate_events, procrastinate_periodic_defers,
    procrastinate_jobs, procrastinate_workers CASCADE;
DROP TYPE IF EXISTS procrastinate_job_to_defer_v1, procrastinate_job_event_type,
    procrastinate_job_status CASCADE;
"""


def upgrade() -> None:
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease", sa.String(length=21), nullable=True))
        batch_op.add_column(sa.Column("job_id", sa.BigInteger(), nullable=True))
        batch_op.drop_index("ix_executions_pending")
        batch_op.create_index(
            "ix_executions_pending",
            ["status", "started_at"],
            unique=False,
            sqlite_where=sa.text(_PENDING),
            postgresql_where=sa.text(_PENDING),
        )
    if op.get_bind().dialect.name == "postgresql":
        # procrastinate's schema as its release 3.10 ships it (pinned in pyproject.toml).
        from procrastinate.schema import SchemaManager

        op.execute(SchemaManager.get_schema())


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_DROP_PROCRASTINATE)
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.drop_index("ix_executions_pending")
        batch_op.create_index(
            "ix_executions_pending",
            ["status", "started_at"],
            unique=False,
            sqlite_where=sa.text(_PENDING_BEFORE),
            postgresql_where=sa.text(_PENDING_BEFORE),
        )
        batch_op.drop_column("job_id")
        batch_op.drop_column("lease")
