"""listing_totals and listing_unsummed: the analytics' errors and calls summed once

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 19:45:00.000000

`GET /workflows/{id}/analytics` counted a workflow's runs, errors and calls to other apps
by reading every one of its executions (of one user, or of all): 38 ms for the 100,000
executions of scenario 1's big pair, and ten times that for a million. The runs are
counted in `log_listings` already; the errors and calls are now summed once per listing
up to a position (`listing_totals`), the executions that had not ended by then noted
(`listing_unsummed`), and an answer reads only what was recorded since
(solder/store/totals.py).

Both tables start empty: the first answer about a listing sums its history (in
transactions of 20,000 positions), as an answer did before, once.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "listing_totals",
        sa.Column("workflow_number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("user_number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("summed_to", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("app_actions", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("workflow_number", "user_number"),
    )
    op.create_table(
        "listing_unsummed",
        sa.Column("workflow_number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("user_number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column(
            "position",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("workflow_number", "user_number", "position"),
    )


def downgrade() -> None:
    op.drop_table("listing_unsummed")
    op.drop_table("listing_totals")
