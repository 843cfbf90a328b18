"""triggers, schedules, delays, credentials

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 20:46:35.416840
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "credentials",
        sa.Column("tenant_id", sa.String(length=24), nullable=False),
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("user_id", sa.String(length=24), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("secret", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "user_id"],
            ["users.tenant_id", "users.id"],
            name=op.f("fk_credentials_tenant_id_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_credentials")),
        sa.UniqueConstraint(
            "tenant_id", "user_id", "name", name=op.f("uq_credentials_tenant_id_user_id_name")
        ),
    )
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("wake_at", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("wait_started_at", sa.BigInteger(), nullable=True))

    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("meta", sa.Text(), nullable=True))

    with op.batch_alter_table("installations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_tick_at", sa.BigInteger(), nullable=True))
        batch_op.create_index("ix_installations_user", ["tenant_id", "user_id"], unique=False)

    with op.batch_alter_table("workflow_versions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "trigger_type",
                sa.String(length=32),
                server_default=sa.text("'webhook'"),
                nullable=False,
            )
        )
        batch_op.add_column(sa.Column("trigger_event", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("trigger_cron", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workflow_versions", schema=None) as batch_op:
        batch_op.drop_column("trigger_cron")
        batch_op.drop_column("trigger_event")
        batch_op.drop_column("trigger_type")

    with op.batch_alter_table("installations", schema=None) as batch_op:
        batch_op.drop_index("ix_installations_user")
        batch_op.drop_column("last_tick_at")

    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.drop_column("meta")

    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.drop_column("wait_started_at")
        batch_op.drop_column("wake_at")

    op.drop_table("credentials")
