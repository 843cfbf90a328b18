"""procrastinate's job events: kept for what the executions table does not say

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 12:00:00.000000

procrastinate's triggers write a row of `procrastinate_events` when a job is deferred
and when a worker starts it, and its cascade deletes both when the job is deleted, as
Solder's successful jobs are at once. That is four writes a run (two inserts and two
deletes, each with two indexes) of what the execution's row already records: when the
run was accepted (`started_at`) and claimed (`claimed_at`).

Every event but those two is kept: a job retried (`deferred_for_retry`, `retried`),
failed, cancelled, aborted, or scheduled for a delay. The insert trigger (`deferred`)
is dropped, and the update trigger is made again with a `WHEN` that skips `todo` to
`doing` (`started`). procrastinate itself reads events only in its deprecated stalled
jobs query (Solder finds stalled jobs by heartbeat, `store/jobs.stalled`) and in
`delete_old_jobs` (Solder deletes successful jobs when they finish).

procrastinate's own migrations may make these triggers again: its upgrade (pinned below
3.11) needs a Solder migration that checks them. PostgreSQL only.
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_UPDATE = "procrastinate_trigger_status_events_update_v1"
_INSERT = "procrastinate_trigger_status_events_insert_v1"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP TRIGGER IF EXISTS {_INSERT} ON procrastinate_jobs")
    op.execute(f"DROP TRIGGER IF EXISTS {_UPDATE} ON procrastinate_jobs")
    op.execute(
        f"CREATE TRIGGER {_UPDATE} AFTER UPDATE OF status ON procrastinate_jobs"
        " FOR EACH ROW WHEN (NOT (old.status = 'todo'::procrastinate_job_status"
        " AND new.status = 'doing'::procrastinate_job_status))"
        " EXECUTE PROCEDURE procrastinate_trigger_function_status_events_update_v1()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP TRIGGER IF EXISTS {_UPDATE} ON procrastinate_jobs")
    op.execute(
        f"CREATE TRIGGER {_UPDATE} AFTER UPDATE OF status ON procrastinate_jobs"
        " FOR EACH ROW"
        " EXECUTE PROCEDURE procrastinate_trigger_function_status_events_update_v1()"
    )
    op.execute(
        f"CREATE TRIGGER {_INSERT} AFTER INSERT ON procrastinate_jobs"
        " FOR EACH ROW WHEN ((new.status = 'todo'::procrastinate_job_status))"
        " EXECUTE PROCEDURE procrastinate_trigger_function_status_events_insert_v1()"
    )
