"""procrastinate's NOTIFY at each deferred job: dropped, the workers woken apart

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 18:00:00.000000

procrastinate's trigger `procrastinate_jobs_notify_queue_job_inserted_v1` sends a NOTIFY
from inside every transaction that inserts a job, so from inside every accept of a run.
PostgreSQL holds its notification lock from a notifying transaction's commit until the
commit's WAL record is flushed: every accept of the server then committed after the one
before, and accepting was capped near 600 a second on this machine whatever the cores
(`bench/accept_probe.py`, bench/RESULTS.md).

The processes that queue runs now wake the workers themselves, after the accept has
committed, with a NOTIFY of its own on the same channel (`solder.workers.Waker`): a
transaction that writes nothing else does not wait for a flush. The trigger that
notifies an abort request is kept.

procrastinate's own migrations may make the trigger again: its upgrade (pinned below
3.11) needs a Solder migration that checks it. PostgreSQL only.
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_TRIGGER = "procrastinate_jobs_notify_queue_job_inserted_v1"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP TRIGGER IF EXISTS {_TRIGGER} ON procrastinate_jobs")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"CREATE TRIGGER {_TRIGGER} AFTER INSERT ON procrastinate_jobs"
        " FOR EACH ROW WHEN ((new.status = 'todo'::procrastinate_job_status))"
        " EXECUTE PROCEDURE procrastinate_notify_queue_job_inserted_v1()"
    )
