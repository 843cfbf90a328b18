"""procrastinate's job fetch: one plan, whatever the statistics say

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 09:30:00.000000

`procrastinate_fetch_job_v2` takes the first waiting job (by priority, then id) that no
other job holds the lock of. How the planner runs that depends on the table's
statistics, and a queue's are stale by nature: ANALYZE (autovacuum's or anyone's) sees
the queue at one moment, most often short, on a table of dead rows (finished jobs not
yet vacuumed). Planned for a queue of a row or two, the lock check became a sequential
scan of the whole table, or a full scan of procrastinate's `(id, lock)` index keyed on
its second column, or a bitmap of every waiting and running job, each once per job
looked at: a backlog made every fetch slower, so the workers fell further behind it
until the next ANALYZE. In scenario 2 on PostgreSQL (bench/RESULTS.md) the fetch took 20
to 500 ms with 600 to 1,200 jobs waiting while the workers ran one or two runs at a
time, and an open loop at 70 % of the closed loop's rate had a p99 of 5 to 9 s.

Two changes leave the planner one way to run it:

- The fetch function runs with sequential scans, bitmap scans, sorts, materializing and
  hash and merge joins off (`ALTER FUNCTION ... SET`; nothing else in a session
  changes): it walks procrastinate's priority index in order, and looks each job's lock
  up in migration 0006's `(lock, priority, id)` index, a few pages a fetch at any
  length of the queue.
- procrastinate's `procrastinate_jobs_id_lock_idx_v1` on `(id, lock)` is dropped: with
  stale statistics the planner preferred a full scan of it, keyed on `lock`, to the
  lookup in 0006's index. Nothing else needs it: the other lookups by id use the
  primary key. (Every job's insert and update also no longer writes it.)

procrastinate's own migrations replace its functions with `CREATE OR REPLACE`, which
drops the settings, and may refer to the index: an upgrade of procrastinate (pinned
below 3.11) needs a Solder migration that checks both (tests/test_jobs.py reads the plan
the fetch runs with). PostgreSQL only: on SQLite there are no jobs.
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_FETCH = "procrastinate_fetch_job_v2(character varying[], bigint)"
# Every plan node the fetch must not use; what is left is index scans in nested loops.
_OFF = (
    "enable_seqscan",
    "enable_bitmapscan",
    "enable_sort",
    "enable_material",
    "enable_hashjoin",
    "enable_mergejoin",
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP INDEX IF EXISTS procrastinate_jobs_id_lock_idx_v1")
    op.execute(f"ALTER FUNCTION {_FETCH} " + " ".join(f"SET {name} = off" for name in _OFF))


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"ALTER FUNCTION {_FETCH} " + " ".join(f"RESET {name}" for name in _OFF))
    op.execute(
        "CREATE INDEX IF NOT EXISTS procrastinate_jobs_id_lock_idx_v1"
        " ON procrastinate_jobs (id, lock)"
        " WHERE status = ANY (ARRAY['todo'::procrastinate_job_status,"
        " 'doing'::procrastinate_job_status])"
    )
