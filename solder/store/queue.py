"""An execution's life in the queue: queued, claimed, parked, crashed, finished.

States: `queued -> running -> succeeded | failed | canceled`. A delay parks a running
execution back to `queued` with `wake_at`. `crashed` marks one whose worker died while
running it; it is claimed again like a queued one and resumes after its last finished
step. Each claim draws a new `lease`; a run writes only while it holds its lease.

On PostgreSQL, queueing an execution also defers its procrastinate job, in the same
transaction (`store/jobs.py`); on SQLite the embedded dispatcher claims from this table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy import (
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from solder.ids import now_ms
from solder.store import jobs, numbers, queries
from solder.store.prepared import Prepared, Reader, Row, execute, fetch, fetch_one, on_postgres
from solder.store.schema import executions, steps, user_numbers, users, workflow_numbers

Conn = AsyncConnection

RUNNABLE = ("queued", "crashed")
UNFINISHED = ("queued", "running", "crashed")


def _one(tenant_id: str, execution_id: str) -> tuple[Any, ...]:
    return (executions.c.tenant_id == tenant_id, executions.c.id == execution_id)


_QUEUED = (
    "tenant_id",
    "id",
    "workflow_version",
    "status",
    "trigger_id",
    "trigger_data",
    "started_at",
    "rerun_of",
    "job_id",
)
# The next position of the workflow's logs pages of all users, then of the user's: the
# same order everywhere (the workflow's row first), so that on PostgreSQL concurrent
# writers queue on the first row rather than deadlock. The row stays locked to the end
# of the transaction, so positions are taken in the order executions are committed, and
# one that rolls back gives its positions back. Both rows come back with their numbers.
_POSITIONS = (
    "INSERT INTO log_listings"
    " (workflow_number, user_number, last_position, deleted, deleted_top)"
    " VALUES ((SELECT number FROM workflow_numbers"
    " WHERE tenant_id = :tenant_id AND workflow_id = :workflow_id), 0, 1, 0, 0),"
    " ((SELECT number FROM workflow_numbers"
    " WHERE tenant_id = :tenant_id AND workflow_id = :workflow_id),"
    " (SELECT number FROM user_numbers WHERE tenant_id = :tenant_id AND user_id = :user_id),"
    " 1, 0, 0)"
    " ON CONFLICT (workflow_number, user_number)"
    " DO UPDATE SET last_position = log_listings.last_position + 1"
    " RETURNING workflow_number, user_number, last_position"
)
_NEXT_POSITIONS = Prepared(text(_POSITIONS))

_EXECUTION_VALUES: dict[str, Any] = {
    name: bindparam(name)
    for name in (*_QUEUED, "workflow_number", "user_number", "workflow_position", "user_position")
}
_INSERT_EXECUTION = Prepared(insert(executions).values(_EXECUTION_VALUES))


def _queue_on_postgres(target: str) -> Prepared:
    """The accept on PostgreSQL, all of it one statement, one round trip: the positions,
    the job deferred, and the execution, whose start time PostgreSQL reads once the
    positions are taken (their rows locked to the end of the transaction).

    `target` is a query of at most one row, `tenant_id`, `version` and `trigger_id`: what
    to queue. Every write is made from its row: when it has none, nothing is written (the
    positions are inserted from no rows; the job's CTE is not read). The job is
    `jobs.defer_params`' (its lock and its arguments spelled here in SQL).
    """
    return Prepared(
        text(  # constants of this code, no value: the values are bound
            f"WITH target AS MATERIALIZED ({target}),"  # noqa: S608
            " job AS MATERIALIZED (SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[ROW("
            " :queue, :task, 0,"
            " 'execution:' || target.tenant_id || ':' || CAST(:id AS TEXT), NULL,"
            " jsonb_build_object('tenant_id', target.tenant_id, 'execution_id',"
            " CAST(:id AS TEXT)), NULL)::procrastinate_job_to_defer_v1])) AS job_id"
            " FROM target),"
            " positions AS (INSERT INTO log_listings"
            " (workflow_number, user_number, last_position, deleted, deleted_top)"
            " SELECT listing.* FROM target, LATERAL (VALUES"
            " ((SELECT number FROM workflow_numbers"
            " WHERE tenant_id = target.tenant_id AND workflow_id = :workflow_id), 0, 1, 0, 0),"
            " ((SELECT number FROM workflow_numbers"
            " WHERE tenant_id = target.tenant_id AND workflow_id = :workflow_id),"
            " (SELECT number FROM user_numbers"
            " WHERE tenant_id = target.tenant_id AND user_id = :user_id), 1, 0, 0)) AS listing"
            " WHERE true"  # the ON below is the conflict's, not a join's
            " ON CONFLICT (workflow_number, user_number)"
            " DO UPDATE SET last_position = log_listings.last_position + 1"
            " RETURNING workflow_number, user_number, last_position)"
            " INSERT INTO executions (tenant_id, id, workflow_version, status, trigger_id,"
            " trigger_data, rerun_of, started_at, job_id, workflow_number, user_number,"
            " workflow_position, user_position)"
            " SELECT target.tenant_id, :id, target.version, :status, target.trigger_id,"
            " :trigger_data, :rerun_of, coalesce(CAST(:started_at AS BIGINT),"
            " CAST(floor(extract(epoch FROM clock_timestamp()) * 1000) AS BIGINT)),"
            " (SELECT job_id FROM job), of_workflow.workflow_number, of_user.user_number,"
            " of_workflow.last_position, of_user.last_position"
            " FROM target, positions AS of_workflow JOIN positions AS of_user"
            " ON of_workflow.user_number = 0 AND of_user.user_number <> 0"
            " RETURNING started_at"
        )
    )


_QUEUE_ON_POSTGRES = _queue_on_postgres(
    "SELECT CAST(:tenant_id AS VARCHAR) AS tenant_id,"
    " CAST(:workflow_version AS INTEGER) AS version, CAST(:trigger_id AS VARCHAR) AS trigger_id"
)
# The usual run requests (`executions.run_workflow_by_key`), those waiting together in
# the API in one statement (`queue_by_keys`, sent by `executions.KeyedAccepts`). Each
# request's target is its API key's, read as `queries.keyed_webhook_target` reads it
# (the tenant from the key, the trigger's id from the version's stored definition); a
# request whose key or target is not found queues nothing. The listing rows are taken
# once each for all the batch's executions (`last_position` moved by their count, the
# rows in one order, the workflow's first, as a single accept takes them: no deadlock),
# each execution at its rank among them in the order of the requests; start times are
# read as the executions are inserted, in that order. The jobs are procrastinate's
# `defer_jobs` insert spelled here, each tied to its execution by its arguments. The
# targets' eight joins are split in two CTEs: PostgreSQL plans one CTE of eight in 48
# ms, its exhaustive join search.
#
# The first `:here` of them (in the requests' order) are claimed for the accepting
# process's own worker, `:worker_id`, if that worker is registered: each job inserted
# `doing` for it, as procrastinate's fetch leaves a job, and its execution `running`
# under `:lease`, as the fetch's claim does (`fetch_and_take`); they come back with what
# the engine starts a run from (`here`). The others are queued for any worker. A
# process without a worker sends the statement without the claims, which returns ids.
_RUN_COLUMNS = tuple(c.name for c in numbers.COLUMNS if c.table is executions)


def _queue_by_keys_on_postgres(claims: bool) -> Prepared:
    here = (
        "row_number() OVER (ORDER BY n) <= :here"
        " AND EXISTS (SELECT FROM procrastinate_workers WHERE id = :worker_id)"
        if claims
        else "false"
    )
    returning = (
        f" RETURNING {', '.join(_RUN_COLUMNS)})"  # noqa: S608
        " SELECT inserted.*, r.workflow_id, r.user_id, r.username, r.here"
        " FROM inserted JOIN ranked AS r ON r.id = inserted.id"
        if claims
        else " RETURNING id) SELECT id, false AS here FROM inserted"
    )
    return Prepared(
        text(  # constants of this code, no value: the values are bound
            "WITH request AS MATERIALIZED (SELECT * FROM unnest(CAST(:key_hashes AS TEXT[]),"  # noqa: S608
            " CAST(:workflow_ids AS TEXT[]), CAST(:user_ids AS TEXT[]), CAST(:ids AS TEXT[]),"
            " CAST(:trigger_data AS TEXT[])) WITH ORDINALITY"
            " AS r(key_hash, workflow_id, user_id, id, trigger_data, n)),"
            " keyed AS MATERIALIZED (SELECT r.*, k.tenant_id, i.version, u.username"
            " FROM request AS r"
            " JOIN api_keys AS k ON k.key_hash = r.key_hash AND k.revoked_at IS NULL"
            " JOIN installations AS i ON i.tenant_id = k.tenant_id"
            " AND i.workflow_id = r.workflow_id AND i.user_id = r.user_id AND i.active"
            " JOIN users AS u ON u.tenant_id = i.tenant_id AND u.id = i.user_id),"
            " target AS MATERIALIZED (SELECT r.n, r.id, r.trigger_data, r.tenant_id, r.version,"
            " r.workflow_id, r.user_id, r.username,"
            " CAST(v.definition AS json) -> 'trigger' ->> 'id' AS trigger_id,"
            " wn.number AS workflow_number, un.number AS user_number"
            " FROM keyed AS r"
            " JOIN workflows AS w ON w.tenant_id = r.tenant_id AND w.id = r.workflow_id"
            " JOIN workflow_versions AS v ON v.tenant_id = r.tenant_id"
            " AND v.workflow_id = r.workflow_id AND v.version = r.version"
            " AND v.trigger_type = 'webhook'"
            " JOIN workflow_numbers AS wn ON wn.tenant_id = r.tenant_id"
            " AND wn.workflow_id = r.workflow_id"
            " JOIN user_numbers AS un ON un.tenant_id = r.tenant_id AND un.user_id = r.user_id),"
            " ranked AS (SELECT t.*,"
            " row_number() OVER (PARTITION BY workflow_number ORDER BY n) AS of_workflow,"
            " count(*) OVER (PARTITION BY workflow_number) AS in_workflow,"
            " row_number() OVER (PARTITION BY workflow_number, user_number ORDER BY n) AS of_user,"
            " count(*) OVER (PARTITION BY workflow_number, user_number) AS in_user,"
            f" {here} AS here FROM target AS t),"
            " job AS MATERIALIZED (INSERT INTO procrastinate_jobs"
            " (queue_name, task_name, priority, lock, queueing_lock, args, scheduled_at, status,"
            " worker_id)"
            " SELECT :queue, :task, 0, 'execution:' || r.tenant_id || ':' || r.id, NULL,"
            " jsonb_build_object('tenant_id', r.tenant_id, 'execution_id', r.id), NULL,"
            " CAST(CASE WHEN r.here THEN 'doing' ELSE 'todo' END AS procrastinate_job_status),"
            " CASE WHEN r.here THEN CAST(:worker_id AS BIGINT) END"
            " FROM ranked AS r ORDER BY r.n"
            " RETURNING id AS job_id, args ->> 'execution_id' AS execution_id),"
            " positions AS (INSERT INTO log_listings"
            " (workflow_number, user_number, last_position, deleted, deleted_top)"
            " SELECT counted.workflow_number, counted.user_number, counted.taken, 0, 0 FROM ("
            " SELECT workflow_number, 0 AS user_number, count(*) AS taken FROM target"
            " GROUP BY workflow_number UNION ALL"
            " SELECT workflow_number, user_number, count(*) FROM target"
            " GROUP BY workflow_number, user_number) AS counted"
            " ORDER BY counted.workflow_number, counted.user_number"
            " ON CONFLICT (workflow_number, user_number)"
            " DO UPDATE SET last_position = log_listings.last_position + EXCLUDED.last_position"
            " RETURNING workflow_number, user_number, last_position),"
            " inserted AS (INSERT INTO executions (tenant_id, id, workflow_version, status,"
            " trigger_id, trigger_data, rerun_of, started_at, job_id, workflow_number,"
            " user_number, workflow_position, user_position, lease, claimed_at)"
            " SELECT r.tenant_id, r.id, r.version,"
            " CASE WHEN r.here THEN 'running' ELSE 'queued' END, r.trigger_id, r.trigger_data,"
            " NULL, CAST(floor(extract(epoch FROM clock_timestamp()) * 1000) AS BIGINT),"
            " job.job_id, r.workflow_number, r.user_number,"
            " of_workflow.last_position - r.in_workflow + r.of_workflow,"
            " of_user.last_position - r.in_user + r.of_user,"
            " CASE WHEN r.here THEN CAST(:lease AS VARCHAR) END,"
            " CASE WHEN r.here THEN CAST(:claimed_at AS BIGINT) END"
            " FROM ranked AS r JOIN job ON job.execution_id = r.id"
            " JOIN positions AS of_workflow ON of_workflow.workflow_number = r.workflow_number"
            " AND of_workflow.user_number = 0"
            " JOIN positions AS of_user ON of_user.workflow_number = r.workflow_number"
            " AND of_user.user_number = r.user_number"
            " ORDER BY r.n" + returning
        )
    )


_QUEUE_BY_KEYS_ON_POSTGRES = _queue_by_keys_on_postgres(claims=False)
_QUEUE_BY_KEYS_CLAIMING = _queue_by_keys_on_postgres(claims=True)


class KeyedRun(NamedTuple):
    """A run request by API key (`queue_by_keys`): new execution `id`, its trigger's
    data as JSON text."""

    key_hash: str
    workflow_id: str
    user_id: str
    id: str
    trigger_data: str


async def insert_execution(conn: Reader, *, started_at: int | None = None, **values: Any) -> int:
    """Record a queued execution (`tenant_id`, `id`, `workflow_id`, `user_id`, ...) at the
    next positions of its workflow's and its user's logs pages, and on PostgreSQL its job,
    in the caller's transaction; its start time (now, unless `started_at`).

    Its trigger's step is not stored: the row holds the trigger (`logs.trigger_step`).
    The start time is read once the positions are taken: on PostgreSQL taking them waits
    for any other transaction that took the workflow's to end, so that start times follow
    positions. On PostgreSQL one statement (`_QUEUE_ON_POSTGRES`); on SQLite, which has no
    writes in `WITH`, two.
    """
    values.setdefault("rerun_of", None)
    if on_postgres(conn):
        queued = await fetch_one(
            conn,
            _QUEUE_ON_POSTGRES,
            **values,
            started_at=started_at,
            queue=jobs.QUEUE,
            task=jobs.TASK,
        )
        assert queued is not None
        started: int = queued["started_at"]
        return started
    ids = {name: values.pop(name) for name in ("workflow_id", "user_id")}
    taken = await fetch(conn, _NEXT_POSITIONS, tenant_id=values["tenant_id"], **ids)
    listing = {row["user_number"] == 0: row for row in taken}
    of_workflow, of_user = listing[True], listing[False]
    started = now_ms() if started_at is None else started_at
    await execute(
        conn,
        _INSERT_EXECUTION,
        **{
            **values,
            "started_at": started,
            "job_id": None,
            "workflow_number": of_workflow["workflow_number"],
            "user_number": of_user["user_number"],
            "workflow_position": of_workflow["last_position"],
            "user_position": of_user["last_position"],
        },
    )
    return started


class Here(NamedTuple):
    """Runs claimed at their accept for the accepting process's own worker
    (`queue_by_keys`): at most `slots` of them, for worker `worker_id`, under `lease`."""

    worker_id: int
    slots: int
    lease: str
    claimed_at: int


async def queue_by_keys(
    conn: Reader, runs: Sequence[KeyedRun], here: Here | None = None
) -> dict[str, Taken | None]:
    """PostgreSQL: queue each run, a webhook-triggered workflow (by id) for a user (by
    id) found from an API key (its hash) as `queries.keyed_webhook_target` finds it, all
    in one statement. The runs queued, by id (one not there: nothing written for it, its
    key, the user's active installation or its webhook trigger not found): each None,
    or, for the first `here.slots` of them if `here` is given, the run claimed for
    `here`'s worker as `fetch_and_take` claims one (its job `doing` for that worker, its
    id the execution's `job_id`), if that worker is registered."""
    rows = await fetch(
        conn,
        _QUEUE_BY_KEYS_ON_POSTGRES if here is None else _QUEUE_BY_KEYS_CLAIMING,
        key_hashes=[run.key_hash for run in runs],
        workflow_ids=[run.workflow_id for run in runs],
        user_ids=[run.user_id for run in runs],
        ids=[run.id for run in runs],
        trigger_data=[run.trigger_data for run in runs],
        queue=jobs.QUEUE,
        task=jobs.TASK,
        here=0 if here is None else here.slots,
        worker_id=None if here is None else here.worker_id,
        lease=None if here is None else here.lease,
        claimed_at=None if here is None else here.claimed_at,
    )
    queued: dict[str, Taken | None] = {}
    for row in rows:
        claimed = row.pop("here")
        queued[row["id"]] = (row, []) if claimed else None
    return queued


def _pending() -> Any:
    """The pending index's own condition, word for word: SQLite uses a partial index only
    for a query that repeats it (else it walks every finished execution, oldest first)."""
    return executions.c.status.in_([literal_column(f"'{status}'") for status in UNFINISHED])


def _claim_statement() -> Prepared:
    """Embedded dispatch: mark the oldest runnable execution running under `lease`.

    The candidate is picked in a materialized CTE: in `UPDATE ... WHERE key IN (SELECT
    ... LIMIT 1 FOR UPDATE SKIP LOCKED)` PostgreSQL may run the subquery more than once,
    each time skipping the row it just locked, and so claim several executions at once.
    """
    runnable = or_(*(executions.c.status == status for status in RUNNABLE))
    oldest = (
        select(executions.c.tenant_id, executions.c.id)
        .where(
            _pending(),
            runnable,
            or_(executions.c.wake_at.is_(None), executions.c.wake_at <= bindparam("claimed_at")),
        )
        # In the index's order: the crashed first (they were running), then the queued,
        # each oldest first.
        .order_by(executions.c.status, executions.c.started_at)
        .limit(1)
        .with_for_update(skip_locked=True)
        .cte("oldest")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    return Prepared(
        update(executions)
        .where(
            executions.c.tenant_id == oldest.c.tenant_id,
            executions.c.id == oldest.c.id,
            runnable,
        )
        .values(status="running", claimed_at=bindparam("claimed_at"), lease=bindparam("lease"))
        .returning(executions.c.tenant_id, executions.c.id)
    )


_CLAIM = _claim_statement()


async def claim_next(conn: Reader, lease: str, claimed_at: int) -> Row | None:
    """Mark the oldest runnable execution running under `lease` (embedded dispatch)."""
    return await fetch_one(conn, _CLAIM, lease=lease, claimed_at=claimed_at)


def _taken(tenant_id: Any, execution_id: Any) -> Any:
    """The claim of an unfinished execution under a new lease, as a CTE of its row."""
    return (
        update(executions)
        .where(
            executions.c.tenant_id == tenant_id,
            executions.c.id == execution_id,
            or_(*(executions.c.status == status for status in UNFINISHED)),
        )
        .values(status="running", claimed_at=bindparam("claimed_at"), lease=bindparam("lease"))
        .returning(*executions.c)
        .cte("taken")
    )


def _to_run(taken: Any) -> tuple[list[Any], Any]:
    """What the engine reads to start the run taken (`queries.execution_to_run`, and its
    steps, `step_*`: one row each, or one row of nulls): columns and the join."""
    columns = [
        *(taken.c[c.name] for c in numbers.COLUMNS if c.table is executions),
        workflow_numbers.c.workflow_id,
        user_numbers.c.user_id,
        users.c.username,
        *(column.label(f"step_{column.name}") for column in steps.c),
    ]
    joined = (
        taken.join(workflow_numbers, workflow_numbers.c.number == taken.c.workflow_number)
        .join(user_numbers, user_numbers.c.number == taken.c.user_number)
        .outerjoin(
            users,
            and_(users.c.tenant_id == taken.c.tenant_id, users.c.id == user_numbers.c.user_id),
        )
        .outerjoin(
            steps,
            and_(steps.c.tenant_id == taken.c.tenant_id, steps.c.execution_id == taken.c.id),
        )
    )
    return columns, joined


_TAKEN = _taken(bindparam("tenant_id"), bindparam("id"))
_TAKE_COLUMNS, _TAKE_JOIN = _to_run(_TAKEN)
# The claim and what the engine reads to start the run, in one statement: on PostgreSQL
# one round trip where there were four.
_TAKE = Prepared(select(*_TAKE_COLUMNS).select_from(_TAKE_JOIN).order_by(steps.c.seq))

Taken = tuple[Row, list[Row]]
"""An execution claimed, as the engine starts from it, and its stored steps in order."""


def _split(rows: list[Row]) -> Taken | None:
    if not rows or rows[0]["id"] is None:
        return None
    execution = {
        k: v for k, v in rows[0].items() if not k.startswith(("step_", jobs.FETCHED_PREFIX))
    }
    return execution, queries.joined_steps(rows)


async def take(
    conn: Reader, tenant_id: str, execution_id: str, lease: str, claimed_at: int
) -> Taken | None:
    """procrastinate dispatch: claim the execution of the job this worker just fetched;
    the execution as the engine starts from it and its stored steps (in order), or None
    if it has ended (or is gone).

    A `running` one is taken over too: its job is being run again, so whoever ran it
    before is gone (procrastinate runs one job per lock at a time), and its lease ends.
    """
    params = {"tenant_id": tenant_id, "id": execution_id}
    return _split(await fetch(conn, _TAKE, **params, lease=lease, claimed_at=claimed_at))


# procrastinate's job fetch (`jobs.FETCHED`, up to `batch` jobs) and `take`'s claim of
# each job's execution, in one statement (one round trip, one commit): each job,
# `fetched_*`, beside each row `take` returns, or beside one row of nulls if the job's
# execution has ended (or is gone); one row of nulls if no job was due.
_FETCHED_TAKEN = _taken(
    jobs.FETCHED.c.args["tenant_id"].astext, jobs.FETCHED.c.args["execution_id"].astext
)
_FETCH_TAKE_COLUMNS, _FETCH_TAKE_JOIN = _to_run(_FETCHED_TAKEN)
_FETCH_AND_TAKE = Prepared(
    select(*jobs.FETCHED_COLUMNS, *_FETCH_TAKE_COLUMNS)
    .select_from(
        jobs.FETCHED.outerjoin(
            _FETCH_TAKE_JOIN,
            and_(
                _FETCHED_TAKEN.c.tenant_id == jobs.FETCHED.c.args["tenant_id"].astext,
                _FETCHED_TAKEN.c.id == jobs.FETCHED.c.args["execution_id"].astext,
            ),
        )
    )
    .order_by(jobs.FETCHED.c.id, steps.c.seq)
)


async def fetch_and_take(
    conn: Reader,
    queues: list[str] | None,
    worker_id: int | None,
    lease: str,
    claimed_at: int,
    batch: int = 1,
) -> list[tuple[Row, Taken | None]]:
    """procrastinate dispatch: fetch the next jobs, up to `batch` of them, as
    procrastinate's own fetch does (one call of it after the other), and claim each job's
    execution under `lease` as `take` does, all in one statement: each job's row (for
    `procrastinate.jobs.Job.from_row`) and what `take` returns, in the order they were
    fetched; none if no job waits.

    Each job's row is locked first, then its execution's, as the crash sweep does
    (`jobs.retry`, then `crash`); nothing locks them the other way round.
    """
    rows = await fetch(
        conn,
        _FETCH_AND_TAKE,
        queues=queues,
        worker_id=worker_id,
        lease=lease,
        claimed_at=claimed_at,
        batch=batch,
    )
    by_job: dict[int, tuple[Row, list[Row]]] = {}
    for row in rows:
        job = jobs.fetched(row)
        if job is None:
            break
        by_job.setdefault(job["id"], (job, []))[1].append(row)
    return [(job, _split(job_rows)) for job, job_rows in by_job.values()]


_HOLDING = Prepared(
    select(*numbers.COLUMNS)
    .select_from(numbers.WITH_IDS)
    .where(
        executions.c.tenant_id == bindparam("tenant_id"),
        executions.c.id == bindparam("id"),
        executions.c.status == "running",
        executions.c.lease == bindparam("lease"),
    )
    .with_for_update(of=executions)
)


async def holding(conn: Reader, tenant_id: str, execution_id: str, lease: str) -> Row | None:
    """The execution, locked for this transaction, if it still runs under `lease`."""
    return await fetch_one(conn, _HOLDING, tenant_id=tenant_id, id=execution_id, lease=lease)


# One statement: the step goes in only while the execution runs under the lease, which
# it holds locked (FOR SHARE) until the commit, so a claim by another worker (an UPDATE
# of the lease) waits for it, as it waits for `holding`'s lock. On its own it is one round
# trip and one commit.
_RECORD_STEP = Prepared(
    insert(steps).from_select(
        [c.name for c in steps.c],
        select(*(bindparam(c.name, type_=c.type) for c in steps.c)).where(
            exists(
                select(literal(1))
                .select_from(executions)
                .where(
                    executions.c.tenant_id == bindparam("tenant_id"),
                    executions.c.id == bindparam("execution_id"),
                    executions.c.status == "running",
                    executions.c.lease == bindparam("lease"),
                )
                .with_for_update(read=True)
            )
        ),
    )
)


async def record_step(conn: Reader, lease: str, **step: Any) -> bool:
    """Record a finished step (every column of `steps`) if the execution still runs
    under `lease`; whether it did."""
    return await execute(conn, _RECORD_STEP, lease=lease, **step) == 1


async def park(
    conn: Conn, tenant_id: str, execution_id: str, lease: str, *, wake_at: int, since: int
) -> bool:
    """Queue a running execution again, to be claimed no sooner than `wake_at`."""
    result = await conn.execute(
        update(executions)
        .where(
            *_one(tenant_id, execution_id),
            executions.c.status == "running",
            executions.c.lease == lease,
        )
        .values(status="queued", wake_at=wake_at, wait_started_at=since, claimed_at=None)
    )
    if result.rowcount != 1:
        return False
    await _give_job(conn, tenant_id, execution_id, at_ms=wake_at)
    return True


async def _give_job(conn: Conn, tenant_id: str, execution_id: str, *, at_ms: int | None) -> None:
    """On PostgreSQL, a new job for an execution already recorded (see `jobs.defer`)."""
    job_id = await jobs.defer(conn, tenant_id, execution_id, at_ms=at_ms)
    if job_id is not None:
        await conn.execute(
            update(executions).where(*_one(tenant_id, execution_id)).values(job_id=job_id)
        )


_CLEAR_WAIT = Prepared(
    update(executions)
    .where(executions.c.tenant_id == bindparam("tenant_id"), executions.c.id == bindparam("id"))
    .values(wake_at=None, wait_started_at=None)
)


async def clear_wait(conn: Reader, tenant_id: str, execution_id: str) -> None:
    await execute(conn, _CLEAR_WAIT, tenant_id=tenant_id, id=execution_id)


async def next_wake(conn: Conn) -> int | None:
    """When the earliest waiting execution wants to run again."""
    result = await conn.execute(
        select(func.min(executions.c.wake_at)).where(executions.c.status == "queued")
    )
    value = result.scalar_one()
    return None if value is None else int(value)


async def crash_running(conn: Conn) -> int:
    """Embedded dispatch, at start: what a dead process left running has crashed."""
    result = await conn.execute(
        update(executions)
        .where(executions.c.status == "running")
        .values(status="crashed", lease=None, claimed_at=None)
    )
    return result.rowcount


async def running(conn: Conn) -> list[tuple[str, str, str | None]]:
    """Embedded dispatch: the executions running now, (tenant id, id, lease) each (through
    the pending index only)."""
    result = await conn.execute(
        select(executions.c.tenant_id, executions.c.id, executions.c.lease).where(
            _pending(), executions.c.status == "running"
        )
    )
    return [(row.tenant_id, row.id, row.lease) for row in result]


async def crash_claim(conn: Conn, tenant_id: str, execution_id: str, lease: str | None) -> bool:
    """Embedded dispatch: mark an execution crashed if it still runs under `lease`, the
    claim of a process that died; whether it did."""
    result = await conn.execute(
        update(executions)
        .where(
            *_one(tenant_id, execution_id),
            executions.c.status == "running",
            executions.c.lease.is_(None) if lease is None else executions.c.lease == lease,
        )
        .values(status="crashed", lease=None, claimed_at=None)
    )
    return result.rowcount > 0


async def crash(conn: Conn, tenant_id: str, execution_id: str) -> None:
    """Mark one running execution crashed: its worker died (its job is run again)."""
    await conn.execute(
        update(executions)
        .where(*_one(tenant_id, execution_id), executions.c.status == "running")
        .values(status="crashed", lease=None)
    )


async def requeue_orphan(conn: Conn, tenant_id: str, execution_id: str) -> bool:
    """Give an unfinished execution that lost its job a new one (crashed if it ran)."""
    row = (
        await conn.execute(
            select(executions.c.wake_at, executions.c.job_id)
            .where(*_one(tenant_id, execution_id), executions.c.status.in_(UNFINISHED))
            .with_for_update()
        )
    ).first()
    if row is None or await jobs.alive(conn, row.job_id):
        return False
    await crash(conn, tenant_id, execution_id)
    await _give_job(conn, tenant_id, execution_id, at_ms=row.wake_at)
    return True


# What an execution's end sets: only an unfinished execution needs who runs it, since
# when, and its job, so a finished row keeps none of them (bench/storage.py writes rows
# so); the log holds the trigger (its first result), so the row need not keep it twice
# (a rerun reads it from the log: executions.rerun).
_ENDING: dict[str, Any] = {
    "lease": None,
    "claimed_at": None,
    "job_id": None,
    "trigger_id": "",
    "trigger_data": "",
    **{
        name: bindparam(name)
        for name in (
            *("status", "failed", "stopped_at", "error_block", "error_message"),
            *("app_actions", "log"),
        )
    },
}
# The end of an execution still running under the lease (its parameter is not named
# `lease`: that is a column the end sets).
_END_HELD = (
    update(executions)
    .where(
        executions.c.tenant_id == bindparam("tenant_id"),
        executions.c.id == bindparam("id"),
        executions.c.status == "running",
        executions.c.lease == bindparam("held"),
    )
    .values(**_ENDING)
)
_ENDED = _END_HELD.returning(executions.c.id).cte("ended")
# On PostgreSQL one statement, so one round trip in autocommit: the end; the steps
# dropped and the job that ran it deleted, only if the end was written (procrastinate
# is then told not to finish the job: workers.QueueWorker). SQLite has no writes in
# WITH: the end, then the drop.
_FINISHED = (
    delete(jobs.JOBS)
    .where(
        jobs.JOBS.c.id == bindparam("job"),
        jobs.JOBS.c.status == literal_column("'doing'"),
        exists(select(_ENDED.c.id)),
    )
    .returning(jobs.JOBS.c.id)
    .cte("finished")
)
_END = Prepared(
    select(
        select(func.count()).select_from(_ENDED).scalar_subquery().label("ended"),
        select(_FINISHED.c.id).scalar_subquery().label("job"),
    ).add_cte(
        delete(steps)
        .where(
            # By the key, not joined to `ended`: a join may be planned as a scan of steps.
            steps.c.tenant_id == bindparam("tenant_id"),
            steps.c.execution_id == bindparam("id"),
            exists(select(_ENDED.c.id)),
        )
        .cte("dropped")
    ),
    sqlite=_END_HELD,
)
_DROP_STEPS = Prepared(
    delete(steps).where(
        steps.c.tenant_id == bindparam("tenant_id"), steps.c.execution_id == bindparam("id")
    )
)


class Ended(NamedTuple):
    written: bool
    """Whether the execution still ran under the lease (else nothing was written)."""
    job: int | None = None
    """The job that ran it, deleted with the end (PostgreSQL, when the end was given it)."""


async def end(
    conn: Reader,
    tenant_id: str,
    execution_id: str,
    lease: str,
    *,
    status: str,
    stopped_at: int,
    error_block: str | None,
    error_message: str | None,
    app_actions: int,
    log: bytes,
    job: int | None = None,
) -> Ended:
    """Record the end of an execution that runs under `lease`, its log document included,
    and drop its steps; on PostgreSQL, also delete `job`, the procrastinate job running
    it, while it is `doing`: a successful job's finish, in the same statement."""
    params = {
        "tenant_id": tenant_id,
        "id": execution_id,
        "held": lease,
        "status": status,
        # Null unless it failed: a successful end leaves the failures' indexes alone and
        # stays a heap-only update on PostgreSQL (schema.executions).
        "failed": True if status == "failed" else None,
        "stopped_at": stopped_at,
        "error_block": error_block,
        "error_message": error_message,
        "app_actions": app_actions,
        "log": log,
    }
    if on_postgres(conn):
        ended = await fetch_one(conn, _END, **params, job=job)
        assert ended is not None
        return Ended(ended["ended"] == 1, ended["job"])
    if await execute(conn, _END, **params) != 1:
        return Ended(False)
    await execute(conn, _DROP_STEPS, tenant_id=tenant_id, id=execution_id)
    return Ended(True)
