"""integer keys for executions: workflow and user numbers, and a row sequence

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 11:00:00.000000

`executions` and its two logs indexes repeated the 24-character tenant, workflow and
user ids and the 21-character execution id in every row and index entry: 287 of the
570 bytes an execution took on SQLite (bench/RESULTS.md, scenario 4). The workflow
and the user are now small numbers (`workflow_numbers`, `user_numbers`: one per id,
never reused), and the row's `seq` (SQLite's rowid) breaks ties in the logs indexes
instead of the public id.

The table is rebuilt: a copy of every execution, in time order. `steps` (the blocks of
executions still running) is set aside and put back around it, so that dropping the
old table cascades to nothing. Run it while no worker runs, as every migration.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Every column but the keys, as 0006 left them and the new table keeps them.
_KEPT = (
    "tenant_id, id, workflow_version, status, trigger_id, trigger_data, started_at, "
    "stopped_at, rerun_of, error_block, error_message, app_actions, claimed_at, lease, "
    "job_id, wake_at, wait_started_at, log"
)


def _numbers(table: str, id_column: str) -> None:
    op.create_table(
        table,
        sa.Column("number", sa.Integer(), sa.Identity(), nullable=False),
        sa.Column("tenant_id", sa.String(length=24), nullable=False),
        sa.Column(id_column, sa.String(length=24), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f(f"fk_{table}_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("number", name=op.f(f"pk_{table}")),
        sa.UniqueConstraint("tenant_id", id_column, name=op.f(f"uq_{table}_tenant_id_{id_column}")),
    )


def _executions_table() -> None:
    op.create_table(
        "executions",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(),
            nullable=False,
        ),
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
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_executions")),
        sa.UniqueConstraint("tenant_id", "id", name=op.f("uq_executions_tenant_id_id")),
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
            ["tenant_id", "execution_id"],
            ["executions.tenant_id", "executions.id"],
            name=op.f("fk_steps_tenant_id_execution_id_executions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "execution_id", "seq", name=op.f("pk_steps")),
    )


_STEP_COLUMNS = (
    "tenant_id, execution_id, seq, connector_id, block_name, started_at, stopped_at, "
    "data, inputs, error, meta, app_actions"
)


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    _numbers("workflow_numbers", "workflow_id")
    _numbers("user_numbers", "user_id")
    # Every workflow and user, then any id only executions still name (a user deleted
    # before its logs were erased with it).
    op.execute(
        "INSERT INTO workflow_numbers (tenant_id, workflow_id)"
        " SELECT tenant_id, id FROM workflows ORDER BY created_at, tenant_id, id"
    )
    op.execute(
        "INSERT INTO user_numbers (tenant_id, user_id)"
        " SELECT tenant_id, id FROM users ORDER BY created_at, tenant_id, id"
    )
    for table, column in (("workflow_numbers", "workflow_id"), ("user_numbers", "user_id")):
        op.execute(
            f"INSERT INTO {table} (tenant_id, {column})"
            f" SELECT DISTINCT e.tenant_id, e.{column} FROM executions e"
            f" WHERE NOT EXISTS (SELECT 1 FROM {table} n"
            f" WHERE n.tenant_id = e.tenant_id AND n.{column} = e.{column})"
        )

    op.execute(f"CREATE TABLE steps_0006 AS SELECT {_STEP_COLUMNS} FROM steps")
    op.drop_table("steps")
    op.execute("ALTER TABLE executions RENAME TO executions_0006")
    for index in ("user_logs", "workflow_logs", "pending"):
        op.drop_index(f"ix_executions_{index}", table_name="executions_0006")
    if postgres:  # its primary key's index would keep the name the new one takes
        op.execute("ALTER TABLE executions_0006 DROP CONSTRAINT pk_executions")
    _executions_table()
    op.execute(
        f"INSERT INTO executions (workflow_number, user_number, {_KEPT})"
        f" SELECT w.number, u.number, {', '.join('e.' + c for c in _KEPT.split(', '))}"
        " FROM executions_0006 e"
        " JOIN workflow_numbers w ON w.tenant_id = e.tenant_id AND w.workflow_id = e.workflow_id"
        " JOIN user_numbers u ON u.tenant_id = e.tenant_id AND u.user_id = e.user_id"
        " ORDER BY e.started_at, e.id"
    )
    op.drop_table("executions_0006")
    op.create_index(
        "ix_executions_user_logs",
        "executions",
        ["workflow_number", "user_number", "started_at", "seq"],
    )
    op.create_index(
        "ix_executions_workflow_logs", "executions", ["workflow_number", "started_at", "seq"]
    )
    op.create_index(
        "ix_executions_pending",
        "executions",
        ["status", "started_at"],
        sqlite_where=sa.text("status IN ('queued', 'running', 'crashed')"),
        postgresql_where=sa.text("status IN ('queued', 'running', 'crashed')"),
    )
    _steps_table()
    op.execute(f"INSERT INTO steps ({_STEP_COLUMNS}) SELECT {_STEP_COLUMNS} FROM steps_0006")
    op.drop_table("steps_0006")


def downgrade() -> None:
    raise NotImplementedError("0007 rebuilds executions: restore a backup taken before it")
