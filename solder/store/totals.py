"""What `GET /workflows/{id}/analytics` counts, without reading a listing's whole history.

A workflow's logs listings (schema.py `log_listings`: of one user, and of all its users)
count their runs already: `last_position - deleted`. Their errors and calls to other apps
are summed in `listing_totals` up to a position, `summed_to`; an answer adds those of the
executions above it (recorded since the last sum: the tail) and of the few at or below it
that had not ended when they were summed (`listing_unsummed`). An ended execution's
error and calls never change, and an unended one counts none yet.

`fold` sums a listing's tail, at most `FOLD_CHUNK` positions a transaction, when an
answer would otherwise read more than `FOLD_AFTER` executions: a listing nobody asks
about costs nothing, and one asked about often is summed every few hundred runs. It
writes the listing's `listing_totals` row, never `log_listings`' row, which every run
request updates: run requests never wait on it.

Deleting executions (retention, a user's erasure) takes what they counted back out of
the totals, in the transaction that deletes them (`forget`).

On PostgreSQL, `fold` and `forget` both take their listings' workflow's advisory lock
(one of `_LOCKS`, by its number) before they read any position or execution: a fold
that reads an execution a purge is deleting either commits before the purge's `forget`
reads `summed_to` (which then takes the execution back out), or waits for the purge to
commit (and finds it gone). `listing_totals` and `listing_unsummed` are written only
under that lock. A lock, not the totals row: the two meet on it even for a listing that
has no row yet, and a purge makes and locks no row for each listing it walks. SQLite
has one writer at a time. Answers read one snapshot (`Database.read`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    Integer,
    and_,
    bindparam,
    cast,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    union_all,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from solder.store.numbers import user_number, workflow_number
from solder.store.schema import (
    ENDED,
    executions,
    listing_totals,
    listing_unsummed,
    log_listings,
)

Conn = AsyncConnection

# An answer reads at most this many executions above `summed_to` before it sums them.
FOLD_AFTER = 256
# A fold's transaction sums at most this many positions (on SQLite, it holds the write
# lock meanwhile: 10 to 20 ms).
FOLD_CHUNK = 20_000

Key = tuple[int, int]
"""A listing: its workflow's number and its user's (0: all of the workflow's users)."""


class Totals(NamedTuple):
    runs: int
    errors: int
    app_actions: int


def _position(user: int) -> Any:
    return executions.c.workflow_position if user == 0 else executions.c.user_position


def _in_listing(workflow: int, user: int) -> list[Any]:
    """The listing's executions: a range of its logs index."""
    conditions = [executions.c.workflow_number == workflow]
    if user:
        conditions.append(executions.c.user_number == user)
    return conditions


def _unsummed(workflow: int, user: int) -> list[Any]:
    return [
        listing_unsummed.c.workflow_number == workflow,
        listing_unsummed.c.user_number == user,
    ]


def _unsummed_joined(workflow: int, user: int, *, outer: bool = False) -> Any:
    """The listing's unsummed positions joined to their executions (by the logs index)."""
    on = and_(*_in_listing(workflow, user), _position(user) == listing_unsummed.c.position)
    return listing_unsummed.join(executions, on, isouter=outer)


async def read(
    conn: Conn, tenant_id: str, workflow_id: str, user_id: str | None, *, or_fold: bool = True
) -> tuple[Key | None, Totals | None]:
    """The listing of a workflow's executions, of one user or of all (None: it has none),
    and its totals; with `or_fold`, None instead of the totals when more than
    `FOLD_AFTER` executions are above its `summed_to` (then `fold` first)."""
    listing, totals = log_listings.c, listing_totals.c
    user_of = literal(0) if user_id is None else user_number(tenant_id, user_id)
    row = (
        await conn.execute(
            select(
                listing.workflow_number,
                listing.user_number,
                listing.last_position - listing.deleted,
                listing.last_position,
                func.coalesce(totals.summed_to, 0),
                func.coalesce(totals.errors, 0),
                func.coalesce(totals.app_actions, 0),
            )
            .select_from(
                log_listings.outerjoin(
                    listing_totals,
                    and_(
                        totals.workflow_number == listing.workflow_number,
                        totals.user_number == listing.user_number,
                    ),
                )
            )
            .where(
                listing.workflow_number == workflow_number(tenant_id, workflow_id),
                listing.user_number == user_of,
            )
        )
    ).first()
    if row is None:
        return None, Totals(0, 0, 0)
    workflow, user, runs, last, summed_to, errors, app_actions = (int(value) for value in row)
    if or_fold and last - summed_to > FOLD_AFTER:
        return (workflow, user), None
    counted = union_all(
        select(executions.c.failed, executions.c.app_actions).where(
            *_in_listing(workflow, user), _position(user) > summed_to
        ),
        select(executions.c.failed, executions.c.app_actions)
        .select_from(_unsummed_joined(workflow, user))
        .where(*_unsummed(workflow, user)),
    ).subquery()
    more_errors, more_app_actions = (
        await conn.execute(
            select(func.count(counted.c.failed), func.coalesce(func.sum(counted.c.app_actions), 0))
        )
    ).one()
    return (workflow, user), Totals(
        runs, errors + int(more_errors), app_actions + int(more_app_actions)
    )


# Rows a statement names at most (SQLite binds at most 32,766 values a statement,
# PostgreSQL 65,535).
_ROWS_A_STATEMENT = 1_000


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), _ROWS_A_STATEMENT):
        yield items[start : start + _ROWS_A_STATEMENT]


def _of(table: Any, keys: Iterable[Key]) -> Any:
    """The rows of `table` of these listings, as each workflow's number and the list of
    its users' (a search of the key's index on both databases, where SQLite scans the
    table for a list of row values)."""
    users: dict[int, list[int]] = defaultdict(list)
    for workflow, user in keys:
        users[workflow].append(user)
    return or_(
        *(
            and_(table.c.workflow_number == workflow, table.c.user_number.in_(of_workflow))
            for workflow, of_workflow in users.items()
        )
    )


def _made(insert_of: Any) -> Any:
    """A listing's totals row, made unless it is there (`fold`), in a dialect's words."""
    return (
        insert_of(listing_totals)
        .values(
            workflow_number=bindparam("b_workflow"),
            user_number=bindparam("b_user"),
            summed_to=0,
            errors=0,
            app_actions=0,
        )
        .on_conflict_do_nothing()
    )


_MADE = {"postgresql": _made(postgresql.insert), "sqlite": _made(sqlite.insert)}

# PostgreSQL: the advisory locks `fold` and `forget` meet on, a listing's by its
# workflow's number. A few dozen, so that erasing a user of a thousand workflows takes
# at most that many (the server's lock table holds 64 a connection by default); two
# workflows sharing one only wait for each other's folds and purges. The two-int keys:
# "sold" in ASCII, then the lock's number (the one-bigint keys of `Database.try_lock`
# and the migrations are another space).
_LOCKS = 64
_LOCK_SPACE = 0x736F6C64
# Taken in the array's order, one row at a time (a function scan), so two takers queue
# rather than deadlock.
_LOCK = text(
    "SELECT pg_advisory_xact_lock(:space, lock) FROM unnest(CAST(:locks AS integer[])) AS lock"
)


async def _take(conn: Conn, keys: Collection[Key], *, make: bool = False) -> dict[Key, int]:
    """Hold the listings' locks (on PostgreSQL), until the transaction ends; each
    listing's `summed_to` (0 for a listing never summed). With `make` (a fold, which
    writes its row), make the rows that are missing."""
    if conn.dialect.name == "postgresql":
        locks = sorted({workflow % _LOCKS for workflow, _ in keys})
        await conn.execute(_LOCK, {"space": _LOCK_SPACE, "locks": locks})
    totals = listing_totals.c
    summed: dict[Key, int] = {}
    for some in _chunks(sorted(set(keys))):
        if make:
            made = _MADE[conn.dialect.name]
            await conn.execute(made, [{"b_workflow": w, "b_user": u} for w, u in some])
        rows = await conn.execute(
            select(totals.workflow_number, totals.user_number, totals.summed_to).where(
                _of(listing_totals, some)
            )
        )
        summed.update({(int(w), int(u)): int(summed_to) for w, u, summed_to in rows.all()})
    return {key: summed.get(key, 0) for key in keys}


async def fold(conn: Conn, key: Key) -> bool:
    """Sum the listing's executions above its `summed_to`, at most `FOLD_CHUNK` positions
    of them, and those it had left unsummed that have ended since. Whether positions are
    left above the new `summed_to` (then fold again, in a new transaction)."""
    workflow, user = key
    summed_to = (await _take(conn, [key], make=True))[key]
    last = (
        await conn.execute(
            select(log_listings.c.last_position).where(
                log_listings.c.workflow_number == workflow, log_listings.c.user_number == user
            )
        )
    ).scalar()
    if last is None:
        return False
    errors = app_actions = 0
    # Those left unsummed before: folded once ended, dropped once deleted.
    done: list[int] = []
    for position, status, failed, calls in await conn.execute(
        select(
            listing_unsummed.c.position,
            executions.c.status,
            executions.c.failed,
            executions.c.app_actions,
        )
        .select_from(_unsummed_joined(workflow, user, outer=True))
        .where(*_unsummed(workflow, user))
    ):
        if status is None or status in ENDED:
            done.append(int(position))
            errors += failed is not None
            app_actions += calls or 0
    if done:
        await conn.execute(
            delete(listing_unsummed).where(
                *_unsummed(workflow, user), listing_unsummed.c.position.in_(done)
            )
        )
    upto = min(int(last), summed_to + FOLD_CHUNK)
    if upto > summed_to:
        # One statement, so one snapshot on PostgreSQL too: the ended executions of the
        # range summed, and the positions of the others, to be left unsummed.
        position = _position(user)
        in_range = [*_in_listing(workflow, user), position > summed_to, position <= upto]
        zero = literal(0, BigInteger)
        rows = await conn.execute(
            union_all(
                select(
                    zero,
                    func.count(executions.c.failed),
                    func.coalesce(func.sum(executions.c.app_actions), 0),
                ).where(*in_range, executions.c.status.in_(ENDED)),
                select(position, zero, zero).where(*in_range, executions.c.status.not_in(ENDED)),
            )
        )
        unended: list[int] = []
        for at, failed_count, calls in rows.all():
            if at:
                unended.append(int(at))
            else:
                errors += int(failed_count)
                app_actions += int(calls)
        if unended:
            await conn.execute(
                insert(listing_unsummed),
                [
                    {"workflow_number": workflow, "user_number": user, "position": p}
                    for p in unended
                ],
            )
    totals = listing_totals.c
    await conn.execute(
        listing_totals.update()
        .where(totals.workflow_number == workflow, totals.user_number == user)
        .values(
            summed_to=max(upto, summed_to),
            errors=totals.errors + errors,
            app_actions=totals.app_actions + app_actions,
        )
    )
    return upto < int(last)


class Deleted(NamedTuple):
    """What `forget` needs of a deleted execution (`DELETED`'s columns, in order)."""

    workflow_number: int
    user_number: int
    workflow_position: int
    user_position: int
    failed: bool | None
    app_actions: int


DELETED = (
    executions.c.workflow_number,
    executions.c.user_number,
    executions.c.workflow_position,
    executions.c.user_position,
    executions.c.failed,
    executions.c.app_actions,
)


async def forget(conn: Conn, deleted: Sequence[Any], lowest: dict[Key, int]) -> None:
    """Take the executions `deleted` (rows of `DELETED`) back out of their listings'
    totals, in the transaction that deleted them: those summed, not those above
    `summed_to` or left unsummed (whose unsummed rows go). `lowest`: each listing's
    lowest position among them (most purges delete none summed: nothing more to read)."""
    if not lowest:
        return
    summed = await _take(conn, lowest)
    reached = {key for key, low in lowest.items() if low <= summed[key]}
    if not reached:
        return
    below: dict[tuple[Key, int], tuple[bool, int]] = {}
    for row in deleted:
        gone = Deleted(*row)
        counted = (gone.failed is not None, gone.app_actions or 0)
        for key, position in (
            ((gone.workflow_number, 0), gone.workflow_position),
            ((gone.workflow_number, gone.user_number), gone.user_position),
        ):
            if key in reached and position <= summed[key]:
                below[(key, position)] = counted
    # The unsummed rows of these listings are few (their executions had not ended when
    # summed): read them all, and drop those of the deleted executions, which were not
    # in the totals.
    unsummed = listing_unsummed.c
    left = [
        (int(w), int(u), int(position))
        for some in _chunks(sorted(reached))
        for w, u, position in await conn.execute(
            select(unsummed.workflow_number, unsummed.user_number, unsummed.position).where(
                _of(listing_unsummed, some)
            )
        )
    ]
    dropped = [(w, u, position) for w, u, position in left if ((w, u), position) in below]
    for some in _chunks(dropped):
        await conn.execute(
            delete(listing_unsummed).where(
                or_(
                    *(
                        and_(
                            unsummed.workflow_number == w,
                            unsummed.user_number == u,
                            unsummed.position == position,
                        )
                        for w, u, position in some
                    )
                )
            )
        )
    for w, u, position in dropped:
        del below[((w, u), position)]
    taken: dict[Key, tuple[int, int]] = {}
    for (key, _), (failed, calls) in below.items():
        errors, app_actions = taken.get(key, (0, 0))
        taken[key] = (errors + failed, app_actions + calls)
    if taken:
        totals = listing_totals.c
        await conn.execute(
            listing_totals.update()
            .where(
                totals.workflow_number == _bound("b_workflow"),
                totals.user_number == _bound("b_user"),
            )
            .values(
                errors=totals.errors - _bound("b_errors"),
                app_actions=totals.app_actions - _bound("b_app_actions"),
            ),
            [
                {"b_workflow": w, "b_user": u, "b_errors": errors, "b_app_actions": calls}
                for (w, u), (errors, calls) in sorted(taken.items())
            ],
        )


def _bound(name: str) -> Any:
    return bindparam(name, type_=BigInteger)


async def drop_workflow(conn: Conn, workflow: Any) -> None:
    """Drop a deleted workflow's totals (`workflow`: its number, or a scalar subquery),
    under its lock: a fold under way commits first, the rows it wrote then dropped."""
    if conn.dialect.name == "postgresql":
        lock = cast(workflow % _LOCKS, Integer)
        await conn.execute(select(func.pg_advisory_xact_lock(_LOCK_SPACE, lock)))
    for table in (listing_totals, listing_unsummed):
        await conn.execute(delete(table).where(table.c.workflow_number == workflow))
