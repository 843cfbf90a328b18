"""procrastinate's job queue on PostgreSQL, from inside Solder's own transactions.

On PostgreSQL every execution waiting to run has one procrastinate job, deferred in the
transaction that queues the execution: an answered run is never lost, and a job never
exists without its execution. The job only says "run this execution"; the execution
row stays the truth about where the run is. On SQLite the executions table is the
queue itself and these functions do nothing.

The SQL calls procrastinate's own functions (`procrastinate_defer_jobs_v1`,
`procrastinate_retry_job_v2`), installed by Solder's migration 0003.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import column, table, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from solder.store.prepared import Prepared, Reader, Row, execute, fetch, fetch_one, on_postgres

TASK = "solder.run_execution"
QUEUE = "executions"

# procrastinate's table, as far as Solder's statements name it (its schema is
# procrastinate's: migration 0003).
JOBS = table("procrastinate_jobs", column("id"), column("status"))

# procrastinate's job fetch (`procrastinate_fetch_job_v2`, the statement procrastinate's
# `JobManager.fetch_job` runs), as a CTE, for a statement that also claims the jobs'
# executions (`queue.fetch_and_take`): up to `:batch` jobs, one call of the function
# after the other, the calls stopping at the first that finds none. Each call reads in a
# snapshot of its own (the function is volatile), which holds the jobs the calls before
# it took: as many calls one after the other, in one round trip. Its rows are the jobs
# taken, in order, or one row of nulls if there was none; its columns the names of the
# job's columns procrastinate reads (`procrastinate.jobs.Job.from_row`).
#
# The statement's transaction commits without waiting for its WAL flush
# (`synchronous_commit` off for it alone, set before the first call): a fetch lost in a
# crash of the database is lost whole, jobs and claims, and runs again; any durable
# write of the run after it (a step kept, the end) flushes it first, the WAL being one
# sequence. A run no longer waits for that flush before it starts (docs/decisions.md,
# "The fetch's commit without its flush").
_JOB_COLUMNS = (
    "id",
    "status",
    "task_name",
    "priority",
    "lock",
    "queueing_lock",
    "args",
    "scheduled_at",
    "queue_name",
    "attempts",
    "worker_id",
)
_CALL = "procrastinate_fetch_job_v2(CAST(:queues AS varchar[]), :worker_id)"
FETCHED_PREFIX = "fetched_"
FETCHED = (
    text(
        f"WITH RECURSIVE calls (n, job) AS (SELECT 1, {_CALL}"  # noqa: S608 (names, not values)
        " WHERE set_config('synchronous_commit', 'off', true) = 'off'"
        f" UNION ALL SELECT n + 1, {_CALL} FROM calls"
        " WHERE n < :batch AND (job).id IS NOT NULL)"
        f" SELECT {', '.join(f'(job).{name}' for name in _JOB_COLUMNS)} FROM calls"
        " WHERE (job).id IS NOT NULL OR n = 1"
    )
    .columns(*(column(name, JSONB) if name == "args" else column(name) for name in _JOB_COLUMNS))
    .cte("job")
    .prefix_with("MATERIALIZED")
)
FETCHED_COLUMNS = tuple(FETCHED.c[name].label(FETCHED_PREFIX + name) for name in _JOB_COLUMNS)


def fetched(row: Row) -> Row | None:
    """The job's own row in a row of a statement over `FETCHED`; None if none was due."""
    if row[FETCHED_PREFIX + "id"] is None:
        return None
    return {name: row[FETCHED_PREFIX + name] for name in _JOB_COLUMNS}


def lock(tenant_id: str, execution_id: str) -> str:
    """The lock of an execution's job (`defer_params`; the accepting statements spell it
    in SQL, `queue.queue_by_keys`)."""
    return f"execution:{tenant_id}:{execution_id}"


def defer_params(tenant_id: str, execution_id: str, *, at_ms: int | None = None) -> dict[str, Any]:
    """The parameters of `_DEFER` for the job of a queued execution, to run no sooner than
    `at_ms` (ms since the epoch).

    The job's lock is the execution: procrastinate does not run two jobs with one lock at
    once. (A worker wrongly presumed dead may still be running the execution's previous
    job; the lease keeps it from writing.)
    """
    return {
        "queue": QUEUE,
        "task": TASK,
        "lock": lock(tenant_id, execution_id),
        "args": orjson.dumps({"tenant_id": tenant_id, "execution_id": execution_id}).decode(),
        "at": None if at_ms is None else datetime.fromtimestamp(at_ms / 1000, UTC),
    }


# procrastinate's own function. (The accept calls it too, in its one statement, with the
# lock and the arguments spelled in SQL: `queue._queue_on_postgres`.)
_DEFER = Prepared(
    text(
        "SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[ROW("
        ":queue, :task, 0, :lock, NULL, CAST(:args AS jsonb), :at"
        ")::procrastinate_job_to_defer_v1])) AS job_id"
    )
)


async def defer(
    conn: Reader, tenant_id: str, execution_id: str, *, at_ms: int | None = None
) -> int | None:
    """Defer the job of a queued execution (`defer_params`); its id, for the execution's
    `job_id` (None on SQLite: no job)."""
    if not on_postgres(conn):
        return None
    deferred = await fetch_one(conn, _DEFER, **defer_params(tenant_id, execution_id, at_ms=at_ms))
    assert deferred is not None
    job_id: int = deferred["job_id"]
    return job_id


# procrastinate's workers listen on the queue's channel and fetch on any notification
# whose type is `job_inserted`. Its trigger no longer sends one per job (migration 0012):
# `solder.workers.Waker` sends this one after the runs are committed. Its `turn` says
# which of the live workers fetches at once (`solder.workers._JobManager.my_turn`); a
# notification without one (procrastinate's own) wakes them all.
CHANNEL = f"procrastinate_queue_v1#{QUEUE}"
_WAKE = Prepared(text("SELECT pg_notify(:channel, :payload)"))


async def wake(conn: Reader, turn: int) -> None:
    """Wake the workers waiting on the queue, the one whose `turn` it is first. A
    statement of its own: a transaction that writes nothing else does not wait for a WAL
    flush, and holds PostgreSQL's notification lock for a few microseconds."""
    payload = orjson.dumps({"type": "job_inserted", "turn": turn}).decode()
    await execute(conn, _WAKE, channel=CHANNEL, payload=payload)


_LIVE_WORKERS = Prepared(
    text(
        "SELECT id FROM procrastinate_workers"
        " WHERE last_heartbeat >= NOW() - make_interval(secs => :seconds) ORDER BY id"
    )
)


async def live_workers(conn: Reader, dead_after_seconds: float) -> tuple[int, ...]:
    """The ids of the workers that sent a heartbeat within `dead_after_seconds`, in order:
    the ones a wake's turn is counted among."""
    return tuple(
        int(row["id"]) for row in await fetch(conn, _LIVE_WORKERS, seconds=dead_after_seconds)
    )


_WAITING = Prepared(
    text(
        "SELECT count(*) AS waiting FROM (SELECT 1 FROM procrastinate_jobs"
        " WHERE queue_name = :queue AND status = 'todo'"
        " AND (scheduled_at IS NULL OR scheduled_at <= now()) LIMIT :cap) AS due"
    )
)


async def waiting(conn: Reader, cap: int) -> int:
    """How many runs wait for a worker now (due jobs not taken), counted up to `cap`."""
    row = await fetch_one(conn, _WAITING, queue=QUEUE, cap=cap)
    return 0 if row is None else int(row["waiting"])


async def stalled(
    conn: AsyncConnection, dead_after_seconds: float
) -> Sequence[tuple[int, str, str]]:
    """Jobs being run by workers that stopped sending heartbeats: (job, tenant, execution).

    procrastinate's own definition: a `doing` job whose worker's last heartbeat is older
    than `dead_after_seconds`, or whose worker was already removed as dead.
    """
    result = await conn.execute(
        text(
            "SELECT job.id, job.args->>'tenant_id', job.args->>'execution_id'"
            " FROM procrastinate_jobs job"
            " LEFT JOIN procrastinate_workers worker ON worker.id = job.worker_id"
            " WHERE job.status = 'doing' AND job.task_name = :task"
            " AND (worker.id IS NULL"
            "  OR worker.last_heartbeat < NOW() - make_interval(secs => :seconds))"
        ),
        {"task": TASK, "seconds": dead_after_seconds},
    )
    return [(row[0], row[1], row[2]) for row in result]


async def retry(conn: AsyncConnection, job_id: int) -> bool:
    """Put a stalled job back in the queue; False if it is no longer `doing`."""
    locked = (
        await conn.execute(
            text(
                "SELECT id FROM procrastinate_jobs WHERE id = :id AND status = 'doing'"
                " FOR UPDATE SKIP LOCKED"
            ),
            {"id": job_id},
        )
    ).first()
    if locked is None:
        return False
    await conn.execute(
        text("SELECT procrastinate_retry_job_v2(:id, NOW(), NULL, NULL, NULL)"), {"id": job_id}
    )
    return True


_UNFINISHED = "('queued', 'running', 'crashed')"
_LIVE = "('todo', 'doing')"


async def orphans(conn: AsyncConnection, idle_since: int) -> Sequence[tuple[str, str]]:
    """Unfinished executions, untouched since `idle_since`, whose job procrastinate ended
    (failed, cancelled, aborted: any status but waiting or running), up to 100.

    Nothing in Solder makes one (each queued execution is given its job, and a stalled
    job is retried), so this is the net under the net: a job procrastinate ended for a
    reason Solder did not foresee, or an operator cancelled. It reads from the jobs'
    side, through the execution's primary key: the executions table has no index on its
    status on PostgreSQL (migration 0013). A job deleted outright is found by `walk`.
    """
    result = await conn.execute(
        text(
            "SELECT e.tenant_id, e.id FROM procrastinate_jobs job"  # noqa: S608 (constants)
            " JOIN executions e ON e.id = job.args->>'execution_id'"
            "  AND e.tenant_id = job.args->>'tenant_id'"
            f" WHERE job.task_name = :task AND job.status NOT IN {_LIVE}"
            f" AND e.job_id = job.id AND e.status IN {_UNFINISHED}"
            " AND COALESCE(e.claimed_at, e.started_at) < :idle_since"
            " LIMIT 100"
        ),
        {"task": TASK, "idle_since": idle_since},
    )
    return [(row[0], row[1]) for row in result]


async def walk(
    conn: AsyncConnection, after: str, count: int, idle_since: int
) -> tuple[str | None, Sequence[tuple[str, str]]]:
    """The next `count` executions by id after `after`: the last id read (None past the
    last execution: the walk starts again), and those of them unfinished, untouched since
    `idle_since`, whose job is neither waiting nor running (deleted, or ended).

    The slow net under `orphans`: a job deleted outright leaves nothing on the jobs' side
    to find its execution by. The walk reads the primary key in order, a bounded stretch
    at each sweep, and so finds such an execution within one walk of the whole table.
    """
    result = await conn.execute(
        text(
            "WITH chunk AS MATERIALIZED (SELECT tenant_id, id, status, claimed_at,"  # noqa: S608
            " started_at, job_id FROM executions WHERE id > :after ORDER BY id LIMIT :count)"
            " SELECT walked.last, lost.tenant_id, lost.id"
            " FROM (SELECT max(id) AS last FROM chunk) walked"
            f" LEFT JOIN chunk lost ON lost.status IN {_UNFINISHED}"
            " AND COALESCE(lost.claimed_at, lost.started_at) < :idle_since"
            " AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs job"
            f"  WHERE job.id = lost.job_id AND job.status IN {_LIVE})"
        ),
        {"after": after, "count": count, "idle_since": idle_since},
    )
    rows = result.all()
    return rows[0][0], [(row[1], row[2]) for row in rows if row[2] is not None]


async def alive(conn: AsyncConnection, job_id: int | None) -> bool:
    """Whether the job is still waiting or running."""
    if job_id is None:
        return False
    found = await conn.execute(
        text("SELECT 1 FROM procrastinate_jobs WHERE id = :id AND status IN ('todo', 'doing')"),
        {"id": job_id},
    )
    return found.first() is not None
