"""procrastinate's job fetch: an index that finds a job's lock

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 08:30:00.000000

procrastinate's `procrastinate_fetch_job_v2` skips a waiting job whose lock an earlier
job holds: for each candidate it looks up other jobs by `lock`. procrastinate 3.10 has
no index that leads with `lock` for waiting jobs (its `(id, lock)` index cannot be
searched by lock), so when the planner's statistics say the queue is nearly empty
(a burst after a quiet time, before autovacuum's next ANALYZE) each fetch walks that
whole index once per waiting job: 3 s a fetch with 10,000 jobs waiting, measured
(bench/RESULTS.md, scenario 2). With this index the lookup is one index probe.
The same index was proposed upstream (procrastinate issue #393; the fetch's cost is
issue #1242). PostgreSQL only: on SQLite there are no jobs.
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "CREATE INDEX IF NOT EXISTS solder_procrastinate_jobs_lock_idx"
        " ON procrastinate_jobs (lock, priority, id)"
        " WHERE status IN ('todo', 'doing')"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP INDEX IF EXISTS solder_procrastinate_jobs_lock_idx")
