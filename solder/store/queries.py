"""Every SQL statement Solder runs. Each takes a connection and, for tenant data, a tenant id."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    Select,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    literal_column,
    null,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from solder.store import numbers, totals
from solder.store.numbers import user_number, workflow_number
from solder.store.prepared import Prepared, Row, execute, fetch, fetch_one
from solder.store.prepared import Reader as Reader  # re-exported: q.Reader
from solder.store.schema import (
    ENDED,
    api_keys,
    credentials,
    executions,
    idempotency_keys,
    installations,
    log_dictionaries,
    log_listings,
    steps,
    tenants,
    user_numbers,
    users,
    workflow_numbers,
    workflow_versions,
    workflows,
)

Conn = AsyncConnection

# --- tenants and API keys ----------------------------------------------------------


async def tenant_by_name(conn: Conn, name: str) -> RowMapping | None:
    result = await conn.execute(select(tenants).where(tenants.c.name == name))
    return result.mappings().first()


async def insert_tenant(conn: Conn, *, id: str, name: str, created_at: int) -> None:
    await conn.execute(insert(tenants).values(id=id, name=name, created_at=created_at))


_TENANT_BY_KEY_HASH = Prepared(
    select(tenants.c.id, tenants.c.name)
    .join(api_keys, api_keys.c.tenant_id == tenants.c.id)
    .where(api_keys.c.key_hash == bindparam("key_hash"), api_keys.c.revoked_at.is_(None))
)


async def tenant_by_key_hash(conn: Reader, key_hash: str) -> Row | None:
    return await fetch_one(conn, _TENANT_BY_KEY_HASH, key_hash=key_hash)


async def insert_api_key(conn: Conn, **values: Any) -> None:
    await conn.execute(insert(api_keys).values(**values))


async def list_api_keys(conn: Conn) -> Sequence[RowMapping]:
    result = await conn.execute(
        select(api_keys, tenants.c.name.label("tenant_name"))
        .join(tenants, tenants.c.id == api_keys.c.tenant_id)
        .order_by(tenants.c.name, api_keys.c.created_at)
    )
    return result.mappings().all()


async def revoke_api_key(conn: Conn, key_id: str, revoked_at: int) -> int:
    result = await conn.execute(
        update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=revoked_at)
    )
    return result.rowcount


# --- users -------------------------------------------------------------------------


_USER_BY_ID = Prepared(
    select(users).where(users.c.tenant_id == bindparam("tenant_id"), users.c.id == bindparam("id"))
)
_USER_BY_USERNAME = Prepared(
    select(users).where(
        users.c.tenant_id == bindparam("tenant_id"), users.c.username == bindparam("username")
    )
)


async def user_by_id(conn: Reader, tenant_id: str, user_id: str) -> Row | None:
    return await fetch_one(conn, _USER_BY_ID, tenant_id=tenant_id, id=user_id)


async def user_by_username(conn: Reader, tenant_id: str, username: str) -> Row | None:
    return await fetch_one(conn, _USER_BY_USERNAME, tenant_id=tenant_id, username=username)


async def insert_user(conn: Conn, **values: Any) -> None:
    await conn.execute(insert(users).values(**values))
    await numbers.draw_user(conn, values["tenant_id"], values["id"])


async def list_users(
    conn: Conn, tenant_id: str, *, limit: int, offset: int
) -> Sequence[RowMapping]:
    result = await conn.execute(
        select(users)
        .where(users.c.tenant_id == tenant_id)
        .order_by(users.c.created_at, users.c.id)
        .limit(limit)
        .offset(offset)
    )
    return result.mappings().all()


async def update_user(conn: Conn, tenant_id: str, user_id: str, **values: Any) -> None:
    await conn.execute(
        update(users).where(users.c.tenant_id == tenant_id, users.c.id == user_id).values(**values)
    )


async def delete_user(conn: Conn, tenant_id: str, user_id: str) -> None:
    await conn.execute(
        delete(installations).where(
            installations.c.tenant_id == tenant_id, installations.c.user_id == user_id
        )
    )
    await conn.execute(
        delete(credentials).where(
            credentials.c.tenant_id == tenant_id, credentials.c.user_id == user_id
        )
    )
    await conn.execute(delete(users).where(users.c.tenant_id == tenant_id, users.c.id == user_id))


# --- workflows ---------------------------------------------------------------------


_WORKFLOW_BY_ID = Prepared(
    select(workflows).where(
        workflows.c.tenant_id == bindparam("tenant_id"), workflows.c.id == bindparam("id")
    )
)
_WORKFLOW_BY_NAME = Prepared(
    select(workflows).where(
        workflows.c.tenant_id == bindparam("tenant_id"), workflows.c.name == bindparam("name")
    )
)


async def workflow_by_id(conn: Reader, tenant_id: str, workflow_id: str) -> Row | None:
    return await fetch_one(conn, _WORKFLOW_BY_ID, tenant_id=tenant_id, id=workflow_id)


async def workflow_by_name(conn: Reader, tenant_id: str, name: str) -> Row | None:
    return await fetch_one(conn, _WORKFLOW_BY_NAME, tenant_id=tenant_id, name=name)


async def list_workflows(conn: Conn, tenant_id: str) -> Sequence[RowMapping]:
    result = await conn.execute(
        select(workflows)
        .where(workflows.c.tenant_id == tenant_id)
        .order_by(workflows.c.created_at, workflows.c.id)
    )
    return result.mappings().all()


async def insert_workflow(conn: Conn, **values: Any) -> None:
    await conn.execute(insert(workflows).values(**values))
    await numbers.draw_workflow(conn, values["tenant_id"], values["id"])


async def update_workflow(conn: Conn, tenant_id: str, workflow_id: str, **values: Any) -> None:
    await conn.execute(
        update(workflows)
        .where(workflows.c.tenant_id == tenant_id, workflows.c.id == workflow_id)
        .values(**values)
    )


async def delete_workflow(conn: Conn, tenant_id: str, workflow_id: str) -> None:
    for table in (installations, workflow_versions):
        await conn.execute(
            delete(table).where(table.c.tenant_id == tenant_id, table.c.workflow_id == workflow_id)
        )
    await conn.execute(delete(executions).where(*_of_workflow(tenant_id, workflow_id, None)))
    await conn.execute(
        delete(log_listings).where(
            log_listings.c.workflow_number == workflow_number(tenant_id, workflow_id)
        )
    )
    await totals.drop_workflow(conn, workflow_number(tenant_id, workflow_id))
    await conn.execute(
        delete(workflows).where(workflows.c.tenant_id == tenant_id, workflows.c.id == workflow_id)
    )


async def insert_version(conn: Conn, **values: Any) -> None:
    await conn.execute(insert(workflow_versions).values(**values))


_WORKFLOW_VERSION = Prepared(
    select(workflow_versions).where(
        workflow_versions.c.tenant_id == bindparam("tenant_id"),
        workflow_versions.c.workflow_id == bindparam("workflow_id"),
        workflow_versions.c.version == bindparam("version"),
    )
)


async def workflow_version(
    conn: Reader, tenant_id: str, workflow_id: str, version: int
) -> Row | None:
    return await fetch_one(
        conn, _WORKFLOW_VERSION, tenant_id=tenant_id, workflow_id=workflow_id, version=version
    )


async def list_versions(conn: Conn, tenant_id: str, workflow_id: str) -> Sequence[RowMapping]:
    result = await conn.execute(
        select(workflow_versions.c.version, workflow_versions.c.created_at)
        .where(
            workflow_versions.c.tenant_id == tenant_id,
            workflow_versions.c.workflow_id == workflow_id,
        )
        .order_by(workflow_versions.c.version)
    )
    return result.mappings().all()


# --- installations (a user's copy of a workflow) -----------------------------------


_INSTALLATION = Prepared(
    select(installations).where(
        installations.c.tenant_id == bindparam("tenant_id"),
        installations.c.workflow_id == bindparam("workflow_id"),
        installations.c.user_id == bindparam("user_id"),
    )
)


async def installation(conn: Reader, tenant_id: str, workflow_id: str, user_id: str) -> Row | None:
    return await fetch_one(
        conn, _INSTALLATION, tenant_id=tenant_id, workflow_id=workflow_id, user_id=user_id
    )


# A webhook run's target, read in one statement: the user's active installation of the
# workflow, and its version's definition, when both are named by id and the version is
# triggered by a webhook. Anything else (a name, a missing row, an inactive one) is read
# again step by step, which says what is wrong (`executions.run_workflow`).
# A user's (by id) active installation of a workflow (by id) triggered by a webhook.
_TARGET = (
    installations.join(
        users,
        and_(users.c.tenant_id == installations.c.tenant_id, users.c.id == installations.c.user_id),
    )
    .join(
        workflows,
        and_(
            workflows.c.tenant_id == installations.c.tenant_id,
            workflows.c.id == installations.c.workflow_id,
        ),
    )
    .join(
        workflow_versions,
        and_(
            workflow_versions.c.tenant_id == installations.c.tenant_id,
            workflow_versions.c.workflow_id == installations.c.workflow_id,
            workflow_versions.c.version == installations.c.version,
        ),
    )
)
_TARGET_WHERE = (
    installations.c.workflow_id == bindparam("workflow_id"),
    installations.c.user_id == bindparam("user_id"),
    installations.c.active.is_(True),
    workflow_versions.c.trigger_type == "webhook",
)
_WEBHOOK_TARGET = Prepared(
    select(installations.c.version, workflow_versions.c.definition)
    .select_from(_TARGET)
    .where(installations.c.tenant_id == bindparam("tenant_id"), *_TARGET_WHERE)
)


async def webhook_target(
    conn: Reader, tenant_id: str, workflow_id: str, user_id: str
) -> Row | None:
    """The installed version and its definition, if the user (by id) has the workflow (by
    id) active and that version is triggered by a webhook; else None."""
    return await fetch_one(
        conn, _WEBHOOK_TARGET, tenant_id=tenant_id, workflow_id=workflow_id, user_id=user_id
    )


# The same, found from an API key (its hash): the request's tenant and its target in one
# read, for the usual run request (`executions.run_workflow_by_key`).
_KEYED_WEBHOOK_TARGET = Prepared(
    select(
        tenants.c.id.label("tenant_id"),
        tenants.c.name.label("tenant_name"),
        installations.c.version,
        workflow_versions.c.definition,
    )
    .select_from(
        api_keys.join(tenants, tenants.c.id == api_keys.c.tenant_id).join(
            _TARGET, installations.c.tenant_id == api_keys.c.tenant_id
        )
    )
    .where(
        api_keys.c.key_hash == bindparam("key_hash"),
        api_keys.c.revoked_at.is_(None),
        *_TARGET_WHERE,
    )
)


async def keyed_webhook_target(
    conn: Reader, key_hash: str, workflow_id: str, user_id: str
) -> Row | None:
    """The tenant of the active API key whose hash is `key_hash` (`tenant_id`,
    `tenant_name`) and, as `webhook_target` gives them, the installed version and its
    definition; None if the key is unknown or revoked, or there is no such target."""
    return await fetch_one(
        conn,
        _KEYED_WEBHOOK_TARGET,
        key_hash=key_hash,
        workflow_id=workflow_id,
        user_id=user_id,
    )


async def insert_installation(conn: Conn, **values: Any) -> None:
    await conn.execute(insert(installations).values(**values))


async def update_installation(
    conn: Conn, tenant_id: str, workflow_id: str, user_id: str, **values: Any
) -> None:
    await conn.execute(
        update(installations)
        .where(
            installations.c.tenant_id == tenant_id,
            installations.c.workflow_id == workflow_id,
            installations.c.user_id == user_id,
        )
        .values(**values)
    )


async def delete_installation(conn: Conn, tenant_id: str, workflow_id: str, user_id: str) -> int:
    result = await conn.execute(
        delete(installations).where(
            installations.c.tenant_id == tenant_id,
            installations.c.workflow_id == workflow_id,
            installations.c.user_id == user_id,
        )
    )
    return result.rowcount


async def workflow_users(conn: Conn, tenant_id: str, workflow_id: str) -> Sequence[RowMapping]:
    result = await conn.execute(
        select(
            users.c.id,
            users.c.username,
            users.c.full_name,
            installations.c.active,
            installations.c.version,
            installations.c.installed_at,
        )
        .join(
            installations,
            and_(
                installations.c.tenant_id == users.c.tenant_id,
                installations.c.user_id == users.c.id,
            ),
        )
        .where(installations.c.tenant_id == tenant_id, installations.c.workflow_id == workflow_id)
        .order_by(installations.c.installed_at, users.c.id)
    )
    return result.mappings().all()


# --- event and schedule triggers ---------------------------------------------------

# An installation runs the trigger of its installed version, not of the latest one.
_INSTALLED_VERSION = and_(
    workflow_versions.c.tenant_id == installations.c.tenant_id,
    workflow_versions.c.workflow_id == installations.c.workflow_id,
    workflow_versions.c.version == installations.c.version,
)


_EVENT_SUBSCRIBERS = Prepared(
    select(
        installations.c.workflow_id,
        installations.c.version,
        workflow_versions.c.definition,
        workflow_numbers.c.number,
    )
    .join(workflow_versions, _INSTALLED_VERSION)
    .join(
        workflow_numbers,
        and_(
            workflow_numbers.c.tenant_id == installations.c.tenant_id,
            workflow_numbers.c.workflow_id == installations.c.workflow_id,
        ),
    )
    .where(
        installations.c.tenant_id == bindparam("tenant_id"),
        installations.c.user_id == bindparam("user_id"),
        installations.c.active.is_(True),
        workflow_versions.c.trigger_type == "event",
        workflow_versions.c.trigger_event == bindparam("event"),
    )
    .order_by(installations.c.installed_at, installations.c.workflow_id)
)


async def event_subscribers(conn: Reader, tenant_id: str, user_id: str, event: str) -> list[Row]:
    """The user's active installations whose installed version is triggered by `event`,
    in the order they were installed, each with its workflow's number."""
    return await fetch(conn, _EVENT_SUBSCRIBERS, tenant_id=tenant_id, user_id=user_id, event=event)


async def scheduled_installations(conn: Conn) -> Sequence[RowMapping]:
    """Every active installation, of every tenant, whose installed version runs on a cron."""
    result = await conn.execute(
        select(
            installations.c.tenant_id,
            tenants.c.name.label("tenant_name"),
            installations.c.workflow_id,
            installations.c.user_id,
            installations.c.version,
            installations.c.installed_at,
            installations.c.last_tick_at,
            workflow_versions.c.trigger_cron,
        )
        .join(workflow_versions, _INSTALLED_VERSION)
        .join(tenants, tenants.c.id == installations.c.tenant_id)
        .where(installations.c.active.is_(True), workflow_versions.c.trigger_type == "schedule")
    )
    return result.mappings().all()


async def claim_tick(
    conn: Conn, tenant_id: str, workflow_id: str, user_id: str, *, version: int, tick: int
) -> bool:
    """Record `tick` as run for an installation; False if another sweep already did.

    Also False when the installation was deactivated or moved to another version since
    it was read: the tick then belongs to no run.
    """
    result = await conn.execute(
        update(installations)
        .where(
            installations.c.tenant_id == tenant_id,
            installations.c.workflow_id == workflow_id,
            installations.c.user_id == user_id,
            installations.c.active.is_(True),
            installations.c.version == version,
            or_(installations.c.last_tick_at.is_(None), installations.c.last_tick_at < tick),
        )
        .values(last_tick_at=tick)
    )
    return result.rowcount == 1


# --- executions and their steps ----------------------------------------------------


_INSERT_STEP = Prepared(insert(steps).values({c.name: bindparam(c.name) for c in steps.c}))


STEP_DEFAULTS: dict[str, Any] = {"error": None, "meta": None, "app_actions": 0}


async def insert_step(conn: Reader, **values: Any) -> None:
    """Record a finished step."""
    await execute(conn, _INSERT_STEP, **{**STEP_DEFAULTS, **values})


_EXECUTION = Prepared(
    select(*numbers.COLUMNS)
    .select_from(numbers.WITH_IDS)
    .where(executions.c.tenant_id == bindparam("tenant_id"), executions.c.id == bindparam("id"))
)


async def execution(conn: Reader, tenant_id: str, execution_id: str) -> Row | None:
    return await fetch_one(conn, _EXECUTION, tenant_id=tenant_id, id=execution_id)


_EXECUTION_TO_RUN = Prepared(
    select(*numbers.COLUMNS, users.c.username)
    .select_from(
        numbers.WITH_IDS.outerjoin(
            users,
            and_(
                users.c.tenant_id == executions.c.tenant_id,
                users.c.id == user_numbers.c.user_id,
            ),
        )
    )
    .where(executions.c.tenant_id == bindparam("tenant_id"), executions.c.id == bindparam("id"))
)


async def execution_to_run(conn: Reader, tenant_id: str, execution_id: str) -> Row | None:
    """The execution, with its user's username (None if the user is gone): what the
    engine starts a run from."""
    return await fetch_one(conn, _EXECUTION_TO_RUN, tenant_id=tenant_id, id=execution_id)


_EXECUTION_STEPS = Prepared(
    select(steps)
    .where(steps.c.tenant_id == bindparam("tenant_id"), steps.c.execution_id == bindparam("id"))
    .order_by(steps.c.seq)
)


async def execution_steps(conn: Reader, tenant_id: str, execution_id: str) -> list[Row]:
    return await fetch(conn, _EXECUTION_STEPS, tenant_id=tenant_id, id=execution_id)


_LIVE_LOG = Prepared(
    select(
        executions.c.log,
        executions.c.status,
        executions.c.stopped_at,
        executions.c.trigger_id,
        executions.c.trigger_data,
        *(column.label(f"step_{column.name}") for column in steps.c),
    )
    .select_from(
        executions.outerjoin(
            steps,
            and_(
                steps.c.tenant_id == executions.c.tenant_id, steps.c.execution_id == executions.c.id
            ),
        )
    )
    .where(executions.c.tenant_id == bindparam("tenant_id"), executions.c.id == bindparam("id"))
    .order_by(steps.c.seq)
)


def joined_steps(rows: Sequence[Row]) -> list[Row]:
    """The steps in rows that carry one each as `step_*` columns beside their execution's
    (`live_log`, `queue.take`): none where the execution has none (a row of nulls)."""
    return [
        {
            name.removeprefix("step_"): value
            for name, value in row.items()
            if name.startswith("step_")
        }
        for row in rows
        if row["step_seq"] is not None
    ]


async def live_log(conn: Reader, tenant_id: str, execution_id: str) -> list[Row]:
    """An unfinished execution as it is now: its log, status and stop (in case it has
    just ended) and its trigger, each beside one of its recorded steps (`step_*`, in
    order; null if none).

    One statement, so one snapshot even outside a transaction: the steps of an execution
    are dropped when it ends and its log is stored.
    """
    return await fetch(conn, _LIVE_LOG, tenant_id=tenant_id, id=execution_id)


_LOG_COLUMNS = (
    executions.c.id,
    # Only an unfinished execution's log is rendered from its row (a finished one's is
    # stored whole): only its user is looked up.
    case(
        (
            executions.c.log.is_(None),
            select(user_numbers.c.user_id)
            .where(user_numbers.c.number == executions.c.user_number)
            .scalar_subquery(),
        ),
        else_=null(),
    ).label("user_id"),
    executions.c.workflow_version,
    executions.c.status,
    executions.c.started_at,
    executions.c.stopped_at,
    executions.c.rerun_of,
    executions.c.log,
)


async def page_of_logs(
    conn: Reader,
    key_hash: str,
    workflow_ref: str,
    user_ref: str | None,
    *,
    descending: bool,
    limit: int,
    offset: int = 0,
    after: int | None = None,
) -> list[Row]:
    """A page of logs, and who asks for it, in one statement (one round trip).

    Every row names the key's tenant (`asker_tenant_id`, `asker_tenant_name`), the
    workflow whose id or else name is `workflow_ref` (`asker_workflow_id`, null if none)
    and the user whose id or else username is `user_ref` (`asker_user_id`, null if none).
    Each also holds one execution of the page (`id` null when the page is empty, on its
    only row) with its `position` in the listing, newest (or oldest) first, past `offset`
    executions or after the position `after` where the previous page ended. No row at
    all: no active key has that hash.
    """
    start = "after" if after is not None else "offset" if offset else "first"
    statement = _page_statement(descending, user_ref is not None, start)
    return await fetch(
        conn,
        statement,
        key_hash=key_hash,
        workflow=workflow_ref,
        **({} if user_ref is None else {"user": user_ref}),
        **({"after": after} if start == "after" else {}),
        **({"offset": offset} if start == "offset" else {}),
        limit=limit,
    )


def _page_start(listing: Any, descending: bool) -> tuple[Any, Any]:
    """Where the page at an offset starts in a listing (`log_listings`' columns):
    the first position it may hold, and how many executions from there it skips.

    Every position above `deleted_top` holds an execution, so newest first, the page at
    offset n while n < last - deleted_top starts at position last - n exactly, and
    skips nothing: one seek. Past that, it starts at `deleted_top` and skips what is
    left of n among the executions below, a walk over no more than those. Oldest first,
    `deleted_top - deleted` executions are left at or below `deleted_top`: the page past
    them starts at deleted_top + 1 + (n - those); one inside them walks from the oldest.
    """
    n: Any = bindparam("offset")
    last, deleted, top = listing.last_position, listing.deleted, listing.deleted_top
    if descending:
        above = last - top
        return (
            case((n < above, last - n), else_=top),
            case((n < above, literal(0)), else_=n - above),
        )
    below = top - deleted
    return (
        case((n >= below, top + 1 + n - below), else_=literal(0)),
        case((n >= below, literal(0)), else_=n),
    )


PageStart = Literal["first", "after", "offset"]


@functools.cache
def _page_statement(descending: bool, by_user: bool, start: PageStart) -> Prepared:
    """The page query, one per shape (12 in all), prepared once.

    Who asks, the workflow's and the user's numbers and where the page starts in their
    listing are found once (`asker`, then `target`: each CTE is computed once, as both
    databases do with a CTE used more than once); the page is then a range of a positions
    index from where it starts, and only its rows are read. Only a page at an offset
    reads its listing's row (`target`, `_page_start`): the first page starts at the
    index's first entry from the listing's end, holes or not, and a page after a cursor
    next to the cursor's position. On SQLite
    the page's rowids are picked from the index alone first (each of its entries ends
    with one), so the executions a page skips past holes are counted, not read: 2.6
    against 6 ms for 30,000 of them. PostgreSQL reads a row to know it is visible
    either way, and its index entries hold no key of the row: it reads the range.
    """

    def named(column: Any, table: Any, key: Any, ref: str) -> Any:
        """The id of the row of `table` whose id, or else `key` column, is `ref`."""
        of_tenant = table.c.tenant_id == tenants.c.id
        return func.coalesce(
            select(table.c.id).where(of_tenant, table.c.id == bindparam(ref)).scalar_subquery(),
            select(table.c.id).where(of_tenant, key == bindparam(ref)).scalar_subquery(),
        ).label(column)

    asker = (
        select(
            tenants.c.id.label("asker_tenant_id"),
            tenants.c.name.label("asker_tenant_name"),
            named("asker_workflow_id", workflows, workflows.c.name, "workflow"),
            named("asker_user_id", users, users.c.username, "user")
            if by_user
            else null().label("asker_user_id"),
        )
        .join_from(api_keys, tenants, api_keys.c.tenant_id == tenants.c.id)
        .where(api_keys.c.key_hash == bindparam("key_hash"), api_keys.c.revoked_at.is_(None))
        .cte("asker")
    )
    asker_tenant = select(asker.c.asker_tenant_id).scalar_subquery()
    the_workflow = workflow_number(
        asker_tenant, select(asker.c.asker_workflow_id).scalar_subquery()
    )
    the_user = (
        user_number(asker_tenant, select(asker.c.asker_user_id).scalar_subquery())
        if by_user
        else literal(0)
    )
    position = executions.c.user_position if by_user else executions.c.workflow_position
    if start == "offset":
        # No row: the workflow (or the user) has no execution, and the page is empty.
        first, skip = _page_start(log_listings.c, descending)
        target = (
            select(
                log_listings.c.workflow_number,
                log_listings.c.user_number,
                first.label("start"),
                skip.label("skip"),
            )
            .where(
                log_listings.c.workflow_number == the_workflow,
                log_listings.c.user_number == the_user,
            )
            .cte("target")
        )

        def of_target(column: Any) -> Any:
            return select(column).scalar_subquery()

        the_workflow, the_user = (
            of_target(target.c.workflow_number),
            of_target(target.c.user_number),
        )
        bound = of_target(target.c.start)
        # No listing: no row, and SQLite takes no null OFFSET.
        offset: Any = func.coalesce(of_target(target.c.skip), 0)
    elif start == "after":
        # Next to the cursor's position; holes are index entries that are not there.
        cursor: Any = bindparam("after")
        bound, offset = (cursor - 1 if descending else cursor + 1), None
    else:
        # The listing's newest (or oldest) end: the index's first entry from that end.
        bound, offset = None, None
    conditions = [executions.c.workflow_number == the_workflow]
    if by_user:
        conditions.append(executions.c.user_number == the_user)
    if bound is not None:
        conditions.append(position <= bound if descending else position >= bound)

    def in_page(*columns: Any) -> Any:
        page = (
            select(*columns, position.label("position"))
            .where(*conditions)
            .order_by(position.desc() if descending else position.asc())
            .limit(bindparam("limit"))
        )
        return page if offset is None else page.offset(offset)

    rowid: Any = literal_column("executions.rowid")
    keys = in_page(rowid.label("row")).subquery("page")
    pages = (
        in_page(*_LOG_COLUMNS).subquery("logs"),
        select(*_LOG_COLUMNS, keys.c.position)
        .join_from(executions, keys, rowid == keys.c.row)
        .subquery("logs"),
    )
    postgres, sqlite = (
        select(asker, *page.c)
        .select_from(asker.outerjoin(page, true()))
        .order_by(page.c.position.desc() if descending else page.c.position.asc())
        for page in pages
    )
    return Prepared(postgres, sqlite=sqlite)


def _of_workflow(tenant_id: str, workflow_id: str, user_id: str | None) -> list[Any]:
    """A workflow's executions, of one user or of all: a range of a logs index."""
    conditions = [executions.c.workflow_number == workflow_number(tenant_id, workflow_id)]
    if user_id is not None:
        conditions.append(executions.c.user_number == user_number(tenant_id, user_id))
    return conditions


def failed_executions_page(
    tenant_id: str, workflow_id: str, user_id: str | None, *, limit: int, offset: int
) -> Select[Any]:
    """A page of a workflow's failed executions (of one user, or of all), newest first."""
    conditions = [*_of_workflow(tenant_id, workflow_id, user_id), executions.c.failed.is_not(None)]
    # Newest first as the logs pages are: by position, through the failures' own index
    # (migration 0016), which holds the failed executions only.
    position = executions.c.workflow_position if user_id is None else executions.c.user_position
    return (
        select(
            executions.c.id,
            executions.c.error_block,
            executions.c.error_message,
            executions.c.stopped_at,
        )
        .where(*conditions)
        .order_by(position.desc())
        .limit(limit)
        .offset(offset)
    )


async def failed_executions(
    conn: Conn, tenant_id: str, workflow_id: str, user_id: str | None, *, limit: int, offset: int
) -> Sequence[RowMapping]:
    page = failed_executions_page(tenant_id, workflow_id, user_id, limit=limit, offset=offset)
    rows: Sequence[RowMapping] = (await conn.execute(page)).mappings().all()
    return rows


async def purge_idempotency_keys(conn: Conn, created_before: int) -> int:
    result = await conn.execute(
        delete(idempotency_keys).where(idempotency_keys.c.created_at < created_before)
    )
    return result.rowcount


async def erase_user_logs(conn: Conn, tenant_id: str, user_id: str) -> None:
    result = await conn.execute(
        delete(executions)
        .where(
            numbers.of_tenant_workflows(tenant_id),
            executions.c.user_number == user_number(tenant_id, user_id),
        )
        .returning(*_POSITIONS)
    )
    await _forget_positions(conn, result.all())


# What a deleted execution leaves in its logs pages and their totals (`_forget_positions`).
_POSITIONS = totals.DELETED


_FORGET_POSITIONS = (
    update(log_listings)
    .where(
        log_listings.c.workflow_number == bindparam("b_workflow"),
        log_listings.c.user_number == bindparam("b_user"),
    )
    .values(
        deleted=log_listings.c.deleted + bindparam("b_count", type_=BigInteger),
        deleted_top=case(
            (
                log_listings.c.deleted_top < bindparam("b_top", type_=BigInteger),
                bindparam("b_top", type_=BigInteger),
            ),
            else_=log_listings.c.deleted_top,
        ),
    )
)


async def _forget_positions(conn: Conn, deleted: Sequence[Any]) -> None:
    """Say in `log_listings` which positions the executions `deleted` (rows of
    `_POSITIONS`) left, in the transaction that deleted them: one statement for them all;
    then take them out of their listings' totals (`totals.forget`).

    The listings' rows are updated in their key's order, as recording an execution
    takes them: on PostgreSQL, concurrent writers queue rather than deadlock.
    """
    # Each listing's count of holes, its highest and its lowest.
    holes: dict[tuple[int, int], tuple[int, int, int]] = {}
    for workflow, user, in_workflow, in_user, *_ in deleted:
        for key, position in (((workflow, 0), in_workflow), ((workflow, user), in_user)):
            count, top, low = holes.get(key, (0, 0, position))
            holes[key] = (count + 1, max(top, position), min(low, position))
    if holes:
        await conn.execute(
            _FORGET_POSITIONS,
            [
                {"b_workflow": workflow, "b_user": user, "b_count": count, "b_top": top}
                for (workflow, user), (count, top, _) in sorted(holes.items())
            ],
        )
    await totals.forget(conn, deleted, {key: low for key, (_, _, low) in holes.items()})


async def any_execution(conn: Conn, tenant_id: str, workflow_id: str) -> bool:
    result = await conn.execute(
        select(executions.c.id).where(*_of_workflow(tenant_id, workflow_id, None)).limit(1)
    )
    return result.first() is not None


# --- idempotency -------------------------------------------------------------------


_IDEMPOTENT_RESPONSE = Prepared(
    select(idempotency_keys).where(
        idempotency_keys.c.tenant_id == bindparam("tenant_id"),
        idempotency_keys.c.key == bindparam("key"),
    )
)
_INSERT_IDEMPOTENT_RESPONSE = Prepared(
    insert(idempotency_keys).values({c.name: bindparam(c.name) for c in idempotency_keys.c})
)


async def idempotent_response(conn: Reader, tenant_id: str, key: str) -> Row | None:
    return await fetch_one(conn, _IDEMPOTENT_RESPONSE, tenant_id=tenant_id, key=key)


async def insert_idempotent_response(conn: Reader, **values: Any) -> None:
    """Keep a response for its key; every column of `idempotency_keys` must be given."""
    await execute(conn, _INSERT_IDEMPOTENT_RESPONSE, **values)


# --- credentials -------------------------------------------------------------------


async def insert_credential(conn: Conn, **values: Any) -> None:
    await conn.execute(insert(credentials).values(**values))


async def credentials_of(conn: Conn, tenant_id: str, user_id: str) -> Sequence[RowMapping]:
    result = await conn.execute(
        select(credentials.c.id, credentials.c.type, credentials.c.name, credentials.c.created_at)
        .where(credentials.c.tenant_id == tenant_id, credentials.c.user_id == user_id)
        .order_by(credentials.c.created_at, credentials.c.id)
    )
    return result.mappings().all()


async def credential_by_name(
    conn: Conn, tenant_id: str, user_id: str, name: str
) -> RowMapping | None:
    result = await conn.execute(
        select(credentials.c.secret).where(
            credentials.c.tenant_id == tenant_id,
            credentials.c.user_id == user_id,
            credentials.c.name == name,
        )
    )
    return result.mappings().first()


async def delete_credential(conn: Conn, tenant_id: str, user_id: str, credential_id: str) -> int:
    result = await conn.execute(
        delete(credentials).where(
            credentials.c.tenant_id == tenant_id,
            credentials.c.user_id == user_id,
            credentials.c.id == credential_id,
        )
    )
    return result.rowcount


# --- retention ---------------------------------------------------------------------
# A workflow's logs are kept for its own retention, else its tenant's, else the server's
# (`default_ms`). Everything in milliseconds.


async def tenant_retention(conn: Conn, tenant_id: str) -> int | None:
    """The tenant's own retention; None: it inherits the server's."""
    result = await conn.execute(select(tenants.c.retention_ms).where(tenants.c.id == tenant_id))
    retention_ms: int | None = result.scalar()
    return retention_ms


async def set_tenant_retention(conn: Conn, tenant_id: str, retention_ms: int | None) -> None:
    await conn.execute(
        update(tenants).where(tenants.c.id == tenant_id).values(retention_ms=retention_ms)
    )


async def set_workflow_retention(
    conn: Conn, tenant_id: str, workflow_id: str, retention_ms: int | None
) -> None:
    await conn.execute(
        update(workflows)
        .where(workflows.c.tenant_id == tenant_id, workflows.c.id == workflow_id)
        .values(retention_ms=retention_ms)
    )


async def workflow_retentions(conn: Conn, tenant_id: str) -> Sequence[RowMapping]:
    """The tenant's workflows that have a retention of their own, by name."""
    result = await conn.execute(
        select(workflows.c.id, workflows.c.name, workflows.c.retention_ms)
        .where(workflows.c.tenant_id == tenant_id, workflows.c.retention_ms.is_not(None))
        .order_by(workflows.c.name)
    )
    return result.mappings().all()


async def tenants_retention(conn: Conn) -> Sequence[RowMapping]:
    """Every tenant with its own retention (null when it has none), by name."""
    result = await conn.execute(
        select(tenants.c.id, tenants.c.name, tenants.c.retention_ms).order_by(tenants.c.name)
    )
    return result.mappings().all()


def _cutoff(now: int, default_ms: int) -> Any:
    """Per workflow (joined to its tenant): executions that started before it are expired."""
    return literal(now, BigInteger) - func.coalesce(
        workflows.c.retention_ms, tenants.c.retention_ms, literal(default_ms, BigInteger)
    )


def _oldest_started(workflow: Any) -> Any:
    """When the oldest execution left in `workflow`'s logs started: one probe of its
    positions index (null if it has none)."""
    return (
        select(executions.c.started_at)
        .where(executions.c.workflow_number == workflow)
        .order_by(executions.c.workflow_position)
        .limit(1)
        .scalar_subquery()
    )


async def expired_workflows(conn: Conn, now: int, default_ms: int) -> Sequence[RowMapping]:
    """The workflows whose oldest execution is past their retention, with their cutoff.

    One probe of the positions index per workflow. The purge then walks each one's
    executions oldest first by position from there (`purge_workflow_executions`), and
    stops at the first it keeps: it never reads the rows a longer retention keeps.
    """
    cutoff = _cutoff(now, default_ms)
    oldest = _oldest_started(
        workflow_number(workflows.c.tenant_id, workflows.c.id).correlate(workflows)
    )
    result = await conn.execute(
        select(workflows.c.tenant_id, workflows.c.id, cutoff.label("cutoff"))
        .join(tenants, tenants.c.id == workflows.c.tenant_id)
        .where(oldest < cutoff)
        .order_by(workflows.c.tenant_id, workflows.c.id)
    )
    return result.mappings().all()


async def count_expired(conn: Conn, now: int, default_ms: int) -> int:
    """How many ended executions are past their retention (for a progress bar).

    It reads every execution once (no index orders them by start time across a
    workflow's users any more: docs/decisions.md, "Lean executions"); only `solder
    retention purge` asks, before it starts.
    """
    cutoff = _cutoff(now, default_ms)
    result = await conn.execute(
        select(func.count())
        .select_from(workflows)
        .join(tenants, tenants.c.id == workflows.c.tenant_id)
        .join(
            executions,
            and_(
                executions.c.workflow_number
                == workflow_number(workflows.c.tenant_id, workflows.c.id).correlate(workflows),
                executions.c.started_at < cutoff,
                executions.c.status.in_(ENDED),
            ),
        )
    )
    return int(result.scalar_one())


async def purge_workflow_executions(
    conn: Conn, tenant_id: str, workflow_id: str, started_before: int, after: int, limit: int
) -> tuple[int, int | None]:
    """Delete the ended executions started before a cutoff among a workflow's next
    `limit`, oldest first by position past `after`. How many were deleted, and the
    position to go on from, or None: this workflow is done.

    Positions follow start times (both are taken in the order executions are
    recorded), so the walk stops at the first execution started at or after the cutoff:
    one a few milliseconds older behind it (another host's clock) waits for the next
    sweep. Executions not yet ended are stepped over, and kept. Their steps go with
    them (ON DELETE CASCADE). On PostgreSQL, the window skips rows another worker's
    purge holds; the delete waits for any within its range, then finds them gone.
    """
    # The window, summed up in SQL (a batch's 500 rows never come to Python): how many,
    # the last, and the first execution to keep, if any.
    position = executions.c.workflow_position
    window = (
        select(position, executions.c.started_at)
        .where(*_of_workflow(tenant_id, workflow_id, None), position > after)
        .order_by(position)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .subquery()
    )
    summed = await conn.execute(
        select(
            func.count(),
            func.max(window.c.workflow_position),
            func.min(case((window.c.started_at >= started_before, window.c.workflow_position))),
        )
    )
    size, last, kept = summed.one()
    go_on: int | None = last if size == limit and kept is None else None
    if not size:
        return 0, go_on
    # Those before the first kept, all past the cutoff, less any not ended. (On
    # PostgreSQL one that another purge holds, left out of the window, is waited for
    # here, then found gone.)
    result = await conn.execute(
        delete(executions)
        .where(
            *_of_workflow(tenant_id, workflow_id, None),
            position > after,
            position < kept if kept is not None else position <= last,
            executions.c.started_at < started_before,
            executions.c.status.in_(ENDED),
        )
        .returning(*_POSITIONS)
    )
    deleted = result.all()
    await _forget_positions(conn, deleted)
    return len(deleted), go_on


async def auto_vacuum_mode(conn: Conn) -> int:
    """SQLite: 0 none, 1 full, 2 incremental."""
    return int((await conn.exec_driver_sql("PRAGMA auto_vacuum")).scalar_one())


async def free_pages(conn: Conn) -> int:
    """SQLite: pages of the file that hold nothing (deleted rows' pages, not yet reused)."""
    return int((await conn.exec_driver_sql("PRAGMA freelist_count")).scalar_one())


async def incremental_vacuum(conn: Conn, pages: int) -> None:
    """SQLite: give up to `pages` free pages back to the file system.

    One `incremental_vacuum(1)` per page: Python's sqlite3 runs a pragma statement one
    step at a time, and each step frees one page, so one `incremental_vacuum(N)` would
    free a single page.
    """
    await conn.exec_driver_sql("PRAGMA incremental_vacuum(1)", [()] * pages)


# --- log dictionaries (solder/dictionaries.py, solder/compaction.py) ----------------

_DICTIONARY = Prepared(
    select(log_dictionaries.c.tenant_id, log_dictionaries.c.id, log_dictionaries.c.content).where(
        log_dictionaries.c.tenant_id == bindparam("tenant_id"),
        log_dictionaries.c.id == bindparam("id"),
    )
)


async def dictionary(conn: Reader, tenant_id: str, dictionary_id: int) -> Row | None:
    """One of a tenant's dictionaries, with its content."""
    return await fetch_one(conn, _DICTIONARY, tenant_id=tenant_id, id=dictionary_id)


async def newest_dictionaries(conn: Conn) -> dict[str, int]:
    """Every tenant's newest dictionary (the one new logs are written with), by tenant."""
    result = await conn.execute(
        select(log_dictionaries.c.tenant_id, func.max(log_dictionaries.c.id)).group_by(
            log_dictionaries.c.tenant_id
        )
    )
    return {tenant_id: int(newest) for tenant_id, newest in result.all()}


async def tenant_dictionaries(conn: Conn, tenant_id: str) -> Sequence[RowMapping]:
    """A tenant's dictionaries, oldest first, with their content."""
    result = await conn.execute(
        select(log_dictionaries)
        .where(log_dictionaries.c.tenant_id == tenant_id)
        .order_by(log_dictionaries.c.id)
    )
    return result.mappings().all()


async def insert_dictionary(
    conn: Conn, tenant_id: str, *, content: bytes, samples: int, created_at: int
) -> int:
    """Store a tenant's new newest dictionary; its id (the tenant's next)."""
    newest = (
        await conn.execute(
            select(func.coalesce(func.max(log_dictionaries.c.id), 0)).where(
                log_dictionaries.c.tenant_id == tenant_id
            )
        )
    ).scalar_one()
    new_id = int(newest) + 1
    await conn.execute(
        insert(log_dictionaries).values(
            tenant_id=tenant_id,
            id=new_id,
            content=content,
            samples=samples,
            created_at=created_at,
        )
    )
    return new_id


async def update_dictionary(conn: Conn, tenant_id: str, dictionary_id: int, **values: Any) -> None:
    await conn.execute(
        update(log_dictionaries)
        .where(log_dictionaries.c.tenant_id == tenant_id, log_dictionaries.c.id == dictionary_id)
        .values(**values)
    )


async def dictionary_used(conn: Conn, tenant_id: str, prefix: bytes) -> bool:
    """Whether a stored log of the tenant needs a dictionary: starts with `prefix`, its
    tag and id. It reads every log of the tenant: the sweep asks rarely (docs/decisions.md).
    """
    result = await conn.execute(
        select(executions.c.id)
        .where(
            executions.c.tenant_id == tenant_id,
            func.substr(executions.c.log, 1, len(prefix)) == prefix,
        )
        .limit(1)
    )
    return result.first() is not None


async def delete_dictionary(conn: Conn, tenant_id: str, dictionary_id: int) -> None:
    await conn.execute(
        delete(log_dictionaries).where(
            log_dictionaries.c.tenant_id == tenant_id, log_dictionaries.c.id == dictionary_id
        )
    )


async def tenant_ids(conn: Conn) -> list[str]:
    result = await conn.execute(select(tenants.c.id).order_by(tenants.c.id))
    return [row[0] for row in result.all()]


async def count_executions(conn: Conn, tenant_id: str) -> int:
    """How many executions a tenant has: what its workflows' logs pages hold
    (`logs_by_workflow`), not counted."""
    return sum(count for _, count, _ in await logs_by_workflow(conn, tenant_id))


async def logs_by_workflow(conn: Conn, tenant_id: str) -> list[tuple[int, int, int]]:
    """Each of a tenant's workflows that has executions, as (its number, how many, its
    last position in its logs pages), from `log_listings`."""
    listing = log_listings.c
    result = await conn.execute(
        select(
            listing.workflow_number, listing.last_position - listing.deleted, listing.last_position
        )
        .join(workflow_numbers, workflow_numbers.c.number == listing.workflow_number)
        .where(
            workflow_numbers.c.tenant_id == tenant_id,
            listing.user_number == 0,
            listing.last_position > listing.deleted,
        )
        .order_by(listing.workflow_number)
    )
    return [(row[0], int(row[1]), int(row[2])) for row in result.all()]


async def sample_stretches(
    conn: Conn, stretches: Sequence[tuple[int, int, int]]
) -> list[tuple[int, int, bytes]]:
    """Stored logs of stretches of workflows' histories, in one statement: from each
    (workflow number, position, how many), up to that many of the workflow's logs from
    that position on in its logs pages, through `ix_executions_workflow_positions`.
    Rows: (workflow number, position, stored log), the log `bytes` on every database
    (psycopg reads PostgreSQL's as memoryviews)."""
    parts = [
        select(executions.c.workflow_number, executions.c.workflow_position, executions.c.log)
        .where(
            executions.c.workflow_number == workflow,
            executions.c.workflow_position >= position,
            executions.c.log.is_not(None),
        )
        .order_by(executions.c.workflow_position)
        .limit(limit)
        .subquery()
        for workflow, position, limit in stretches
    ]
    # Each stretch is a subquery of its own: SQLite takes no LIMIT in a compound
    # SELECT's members.
    result = await conn.execute(union_all(*(select(*part.c) for part in parts)))
    return [(int(row[0]), int(row[1]), bytes(row[2])) for row in result.all()]


async def tenant_workflow_ids(conn: Conn, tenant_id: str) -> list[str]:
    result = await conn.execute(
        select(workflows.c.id).where(workflows.c.tenant_id == tenant_id).order_by(workflows.c.id)
    )
    return [row[0] for row in result.all()]


async def logs_to_compact(
    conn: Conn,
    tenant_id: str,
    workflow_id: str,
    after: int,
    current_prefix: bytes,
    limit: int,
) -> Sequence[RowMapping]:
    """A workflow's next stored logs past position `after` (`workflow_position`), oldest
    first, that are not yet compressed with the tenant's current dictionary
    (`current_prefix`).

    A range scan of the workflow's positions index, as a page of logs is.
    """
    result = await conn.execute(
        select(executions.c.id, executions.c.workflow_position, executions.c.log)
        .where(
            *_of_workflow(tenant_id, workflow_id, None),
            executions.c.workflow_position > after,
            executions.c.log.is_not(None),
            func.substr(executions.c.log, 1, len(current_prefix)) != current_prefix,
        )
        .order_by(executions.c.workflow_position)
        .limit(limit)
    )
    return result.mappings().all()


_REWRITE_LOG = (
    update(executions)
    .where(
        executions.c.tenant_id == bindparam("b_tenant_id"),
        executions.c.id == bindparam("b_id"),
        executions.c.log.is_not(None),
    )
    # The trigger is in the log's first result: a finished execution's row need not
    # keep it too (`executions.rerun` reads it from the log).
    .values(log=bindparam("b_log"), trigger_id="", trigger_data="")
)


# SQLite: each rewritten row also moves to the end of the table (a new rowid), as if
# inserted now. Shrunk in place, the rows would leave their pages mostly empty, and new
# rows never go there (they are appended): moved, the old pages empty out entirely and
# retention's incremental vacuum gives them back.
_REWRITE_LOG_SQLITE = (
    "UPDATE executions SET log = :b_log, trigger_id = '', trigger_data = '', "
    "rowid = (SELECT max(rowid) + 1 FROM executions) "
    "WHERE tenant_id = :b_tenant_id AND id = :b_id AND log IS NOT NULL"
)


async def rewrite_logs(conn: Conn, tenant_id: str, logs: Sequence[tuple[str, bytes]]) -> None:
    """Store finished executions' logs again, as (execution id, stored log)."""
    rows = [{"b_tenant_id": tenant_id, "b_id": id_, "b_log": log} for id_, log in logs]
    if not rows:
        return
    if conn.dialect.name == "sqlite":
        await conn.exec_driver_sql(_REWRITE_LOG_SQLITE, rows)
    else:
        await conn.execute(_REWRITE_LOG, rows)
