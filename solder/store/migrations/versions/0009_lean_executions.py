"""lean executions: keyed by the public id alone, no row sequence, no start-time index

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 08:00:00.000000

On PostgreSQL an execution took 525 bytes on disk against the 400 asked
(bench/RESULTS.md, scenario 4). Three of its parts are no longer needed:

- `seq`, the row sequence, and its primary key index: the logs pages are found by
  position since 0008, and nothing else looks a row up by it;
- `ix_executions_workflow_logs` (workflow, start time, seq): retention, failed
  executions and compaction walk a workflow's executions by position instead, the order
  the logs pages have;
- the tenant in the public id's unique index: ids are 126 random bits, unique across
  tenants, so the index on the id alone serves every lookup (each still names its
  tenant, checked on the row), and is now the primary key.

`steps` refers to its execution by id alone, and is keyed by (execution, seq): the
delete that follows an execution's (ON DELETE CASCADE) finds its steps through that key.
Keyed by (tenant, execution, seq), it scanned the whole table for each execution
deleted (a purge batch of 500 with 5,000 executions running, 4 steps each: 423 ms on
PostgreSQL, 2.4 s on SQLite, against 14 and 10: bench/cascade_probe.py). On SQLite
the table is rebuilt (a primary key column cannot be dropped), in the order executions
were recorded; on PostgreSQL the column is dropped in place (the rows written before
keep its 8 bytes until rewritten). Run it while no worker runs, as every migration.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_KEPT = (
    "tenant_id, id, workflow_number, user_number, workflow_version, status, trigger_id, "
    "trigger_data, started_at, stopped_at, rerun_of, error_block, error_message, app_actions, "
    "claimed_at, lease, job_id, wake_at, wait_started_at, log, user_position, workflow_position"
)

_STEP_COLUMNS = (
    "tenant_id, execution_id, seq, connector_id, block_name, started_at, stopped_at, "
    "data, inputs, error, meta, app_actions"
)

_OLD_STEPS_FK = "fk_steps_tenant_id_execution_id_executions"


def _executions_table() -> None:
    op.create_table(
        "executions",
        sa.Column("tenant_id", sa.String(length=24), nullable=False),
        sa.Column("id", sa.String(length=21), nullable=False),
        sa.Column("workflow_number", sa.Integer(), nullable=False),
        sa.Column("user_number", sa.Integer(), nullable=False),
        sa.Column("workflow_version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("trigger_id", sa.String(length=36), nullable=False),
        sa.Column("trigger_data", sa.Text(), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.Column("stopped_at", sa.BigInteger(), nullable=True),
        sa.Column("rerun_of", sa.String(length=21), nullable=True),
        sa.Column("error_block", sa.String(length=255), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("app_actions", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("claimed_at", sa.BigInteger(), nullable=True),
        sa.Column("lease", sa.String(length=21), nullable=True),
        sa.Column("job_id", sa.BigInteger(), nullable=True),
        sa.Column("wake_at", sa.BigInteger(), nullable=True),
        sa.Column("wait_started_at", sa.BigInteger(), nullable=True),
        sa.Column("log", sa.LargeBinary(), nullable=True),
        sa.Column("user_position", sa.Integer(), nullable=False),
        sa.Column("workflow_position", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_executions")),
    )


def _steps_table() -> None:
    op.create_table(
        "steps",
        sa.Column("tenant_id", sa.String(length=24), nullable=False),
        sa.Column("execution_id", sa.String(length=21), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("connector_id", sa.String(length=36), nullable=False),
        sa.Column("block_name", sa.String(length=255), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.Column("stopped_at", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("inputs", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("meta", sa.Text(), nullable=True),
        sa.Column("app_actions", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["executions.id"],
            name=op.f("fk_steps_execution_id_executions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("execution_id", "seq", name=op.f("pk_steps")),
    )


def _duplicate_ids() -> None:
    """Refuse, saying why, a store where two tenants' executions share an id (only
    executions written by hand could: Solder draws 126 random bits)."""
    shared = (
        op.get_bind()
        .execute(sa.text("SELECT id FROM executions GROUP BY id HAVING count(*) > 1 LIMIT 3"))
        .scalars()
        .all()
    )
    if shared:
        raise RuntimeError(
            "migration 0009 keys executions by their id alone, but executions of different "
            f"tenants share the ids {', '.join(shared)}: delete or rename them, then migrate"
        )


def upgrade() -> None:
    _duplicate_ids()
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(_OLD_STEPS_FK, "steps", type_="foreignkey")
        op.drop_index("ix_executions_workflow_logs", table_name="executions")
        op.drop_constraint("uq_executions_tenant_id_id", "executions", type_="unique")
        op.drop_constraint("pk_executions", "executions", type_="primary")
        op.drop_column("executions", "seq")
        op.create_primary_key("pk_executions", "executions", ["id"])
        op.drop_constraint("pk_steps", "steps", type_="primary")
        op.create_primary_key("pk_steps", "steps", ["execution_id", "seq"])
        op.create_foreign_key(
            "fk_steps_execution_id_executions",
            "steps",
            "executions",
            ["execution_id"],
            ["id"],
            ondelete="CASCADE",
        )
        return
    op.execute(f"CREATE TABLE steps_0008 AS SELECT {_STEP_COLUMNS} FROM steps")
    op.drop_table("steps")
    op.execute("ALTER TABLE executions RENAME TO executions_0008")
    for index in ("user_logs", "workflow_positions", "workflow_logs", "pending"):
        op.drop_index(f"ix_executions_{index}", table_name="executions_0008")
    _executions_table()
    op.execute(f"INSERT INTO executions ({_KEPT}) SELECT {_KEPT} FROM executions_0008 ORDER BY seq")
    op.drop_table("executions_0008")
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
    op.create_index(
        "ix_executions_pending",
        "executions",
        ["status", "started_at"],
        sqlite_where=sa.text("status IN ('queued', 'running', 'crashed')"),
    )
    _steps_table()
    op.execute(f"INSERT INTO steps ({_STEP_COLUMNS}) SELECT {_STEP_COLUMNS} FROM steps_0008")
    op.drop_table("steps_0008")


def downgrade() -> None:
    raise NotImplementedError("0009 drops the row sequence: restore a backup taken before it")
