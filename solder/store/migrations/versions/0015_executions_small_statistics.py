"""executions: a small statistics sample

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 14:00:00.000000

ANALYZE samples 300 rows for each unit of a table's largest column statistics target:
30,000 rows of `executions` at PostgreSQL's default of 100, read from pages spread over
the whole table. Autovacuum analyzes a table once a tenth of it has changed, and a run
changes its execution's row three times: at 700 runs a second on 200,000 executions,
every 10 s, each ANALYZE 300 to 860 ms of a core under that load, and the runs
scheduled during one or just after it were most of the slowest 1 % (bench/RESULTS.md, "A
smaller statistics sample for executions").

Every read of the table is a walk of a unique index from an equality (a page of logs,
the failed executions, the purge's and the compaction's walks, an id): the statistics
size the estimates, they do not choose between plans far apart. A target of 10 on every
column samples 3,000 rows; ANALYZE of scenario 1's 1,100,000 executions takes 16 ms
where it took 190, and the plans of every statement of scenarios 1 and 5 stay as they
were (`bench/plan_probe.py`; docs/decisions.md). A column added later must be given the
same target, or the sample grows back (tests/test_migrations.py reads them all).
PostgreSQL only: SQLite has no statistics targets (its ANALYZE is not run by Solder).
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import inspect

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

TARGET = 10


def _set(target: int) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    columns = [column["name"] for column in inspect(bind).get_columns("executions")]
    changes = ", ".join(f'ALTER COLUMN "{name}" SET STATISTICS {target}' for name in columns)
    op.execute(f"ALTER TABLE executions {changes}")


def upgrade() -> None:
    _set(TARGET)


def downgrade() -> None:
    _set(-1)
