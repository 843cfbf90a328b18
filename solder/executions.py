"""Executions: accepting runs and reruns, and reading their logs, errors and totals."""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

import orjson

from solder import keys, logs, users, workflows
from solder.cursors import Cursor
from solder.dictionaries import Dictionaries
from solder.errors import InvalidRequest, LogUnreadable, NotFound
from solder.ids import OBJECT_ID, execution_id, iso_ms, now_ms
from solder.keys import Tenant
from solder.store import queries as q
from solder.store import queue, totals
from solder.store.database import Database
from solder.store.grouped import Grouped
from solder.store.prepared import INTEGRITY_ERRORS


@dataclass(frozen=True, slots=True)
class Idempotency:
    """An `Idempotency-Key` header and a fingerprint of the request it came with."""

    key: str
    request_hash: str


async def once(
    db: Database,
    tenant: Tenant,
    idempotency: Idempotency | None,
    action: Callable[[q.Reader], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    """Run `action` in a write transaction, or return its first answer for a reused key."""
    for attempt in (1, 2):
        try:
            async with db.write_inline() as conn:
                if idempotency is not None:
                    prior = await q.idempotent_response(conn, tenant.id, idempotency.key)
                    if prior is not None:
                        if prior["request_hash"] != idempotency.request_hash:
                            raise InvalidRequest(
                                "this Idempotency-Key was already used with a different "
                                "request; use a new key for a new request"
                            )
                        answer: dict[str, Any] = orjson.loads(prior["response"])
                        return answer
                response = await action(conn)
                if idempotency is not None:
                    await q.insert_idempotent_response(
                        conn,
                        tenant_id=tenant.id,
                        key=idempotency.key,
                        request_hash=idempotency.request_hash,
                        response=orjson.dumps(response).decode(),
                        created_at=now_ms(),
                    )
                return response
        except INTEGRITY_ERRORS:
            # A concurrent request with the same key won the race: answer as it did.
            if idempotency is None or attempt == 2:
                raise
    raise AssertionError("unreachable")


async def enqueue(
    conn: q.Reader,
    tenant: Tenant,
    *,
    workflow_id: str,
    user_id: str,
    version: int,
    trigger_id: str,
    trigger_data: str,
    rerun_of: str | None = None,
) -> str:
    """Record a queued execution; the dispatcher picks it up."""
    new_id = execution_id()
    await queue.insert_execution(
        conn,
        tenant_id=tenant.id,
        id=new_id,
        workflow_id=workflow_id,
        user_id=user_id,
        workflow_version=version,
        status="queued",
        trigger_id=trigger_id,
        trigger_data=trigger_data,
        rerun_of=rerun_of,
    )
    return new_id


async def run_workflow(
    conn: q.Reader,
    tenant: Tenant,
    *,
    user_ref: str,
    workflow_ref: str,
    data: Any,
) -> dict[str, Any]:
    """Queue a run of a webhook-triggered workflow for a user, with `data` as its payload."""
    target = None
    if OBJECT_ID.match(user_ref) and OBJECT_ID.match(workflow_ref):
        # The usual request names both by id: one read instead of four.
        target = await q.webhook_target(conn, tenant.id, workflow_ref, user_ref)
    if target is not None:
        user_id, workflow_id = user_ref, workflow_ref
    else:  # read step by step, to say what is wrong, or to find them by name
        user = await users.resolve(conn, tenant, user_ref)
        workflow = await workflows.resolve(conn, tenant, workflow_ref)
        installed = await _active_installation(conn, tenant, workflow, user)
        # The stored version, not a fresh parse of its definition: it was validated then.
        target = await q.workflow_version(conn, tenant.id, workflow["id"], installed["version"])
        if target is None:
            raise NotFound(f"workflow {workflow['id']} has no version {installed['version']}")
        if target["trigger_type"] != "webhook":
            raise InvalidRequest(
                f"workflow {workflow['name']!r} is triggered by {target['trigger_type']!r}, "
                "not by a webhook; it cannot be run with POST /run/workflow"
            )
        user_id, workflow_id = user["id"], workflow["id"]
    return await _queue_run(conn, tenant, workflow_id, user_id, target, data)


async def _queue_run(
    conn: q.Reader,
    tenant: Tenant,
    workflow_id: str,
    user_id: str,
    target: Mapping[str, Any],
    data: Any,
) -> dict[str, Any]:
    """Queue a webhook run of `target` (the installed `version` and its `definition`)."""
    new_id = await enqueue(
        conn,
        tenant,
        workflow_id=workflow_id,
        user_id=user_id,
        version=target["version"],
        trigger_id=workflows.trigger_id(target["definition"]),
        trigger_data=orjson.dumps(data).decode(),
    )
    return {"message": "success", "executionId": new_id}


class Accepted(NamedTuple):
    answer: dict[str, Any]
    here: bool = False
    """Claimed at its accept for this process's own worker (`KeyedAccepts`): no worker
    needs waking for it."""


async def run_workflow_by_key(
    db: Database, key_hash: str, *, user_id: str, workflow_id: str, data: Any
) -> Accepted | None:
    """The usual run request (user and workflow by id, no idempotency key), its API key
    found with its target as the accept's first read: queued, and the answer. Or None,
    nothing written, when that read finds nothing (an unknown or revoked key, no such
    active installation, another trigger): the caller then asks again the usual way
    (`keys.authenticate`, `run_workflow`), which says what is wrong.

    On PostgreSQL the requests waiting together are one statement (`KeyedAccepts`: those
    of a loop turn, or those that came while the one before was in flight). On SQLite a
    transaction as before (the loop turn's shared commit).
    """
    if not db.is_sqlite:
        trigger_data = orjson.dumps(data).decode()
        run = queue.KeyedRun(key_hash, workflow_id, user_id, execution_id(), trigger_data)
        queued = await keyed_accepts(db).accept(run)
        if queued is None:
            return None
        return Accepted({"message": "success", "executionId": run.id}, here=queued == "here")
    async with db.write_inline(single=True) as conn:
        target = await q.keyed_webhook_target(conn, key_hash, workflow_id, user_id)
        if target is None:
            return None
        tenant = Tenant(target["tenant_id"], target["tenant_name"])
        return Accepted(await _queue_run(conn, tenant, workflow_id, user_id, target, data))


class OwnWorker(Protocol):
    """The accepting process's own worker, which runs what it accepts when it has slots
    free (`workers._JobManager`)."""

    def reserve(self, runs: int) -> queue.Here | None: ...

    def release(self, here: queue.Here) -> None: ...

    def hand(self, here: queue.Here, claimed: Iterable[queue.Taken]) -> None: ...


Queued = Literal["queued", "here"]
"""How a run request by key was queued (`KeyedAccepts`): for any worker, or claimed for
the accepting process's own."""


class KeyedAccepts(Grouped[queue.KeyedRun, Queued | None]):
    """PostgreSQL: the run requests by key that wait, queued in one statement
    (`queue.queue_by_keys`), its own transaction: each request's answer is how it was
    queued (`Queued`), or None if it was not (its key or its target not found, nothing
    written).

    A process that serves with a worker (`here`) has the runs it accepts claimed for
    that worker in the accepting statement, as many as it has slots free, and runs them
    with no wake and no fetch: the wake's statement, the fetch's, and the hops between
    the processes and PostgreSQL's backends they cost (docs/decisions.md, "Runs claimed
    where they are accepted"). The rest are queued for any worker, and woken.

    A statement a request cost PostgreSQL 1.86 ms of CPU an accept with 32 clients on one
    workflow, eight a statement 0.22 (bench/RESULTS.md, "a loop turn's accepts in one
    statement"): the statement's start, its commit and WAL flush, and the turns on the
    workflow's listing row, which each accept held through its commit, are shared. The
    statement goes when the loop comes round, with whatever else arrived meanwhile, or,
    while one is in flight, when it is done; under load (a statement carried three or
    more), `LINGER` later (`Grouped`; docs/decisions.md, "Accepts linger under load").
    """

    # At 700 run requests a second on two cores, accepts about eight to a statement (and
    # the wakes and job fetches they set off) cost the API, the workers and PostgreSQL 6
    # to 21 % less CPU a run than four or five, which kept the machine 98 % busy
    # (bench/RESULTS.md, "Accepts that linger under load").
    LINGER = 0.008

    def __init__(self, db: Database) -> None:
        super().__init__()
        self.db = db
        self.here: OwnWorker | None = None

    async def accept(self, run: queue.KeyedRun) -> Queued | None:
        return await self.ask(run)

    async def _answer(self, runs: list[queue.KeyedRun]) -> list[Queued | None]:
        own = self.here
        here = None if own is None else own.reserve(len(runs))
        try:
            queued = await self._queue(runs, here)
        finally:
            if own is not None and here is not None:
                own.release(here)
        if own is not None and here is not None:
            own.hand(here, [taken for taken in queued.values() if taken is not None])
        return [
            None if run.id not in queued else "queued" if queued[run.id] is None else "here"
            for run in runs
        ]

    async def _queue(
        self, runs: list[queue.KeyedRun], here: queue.Here | None
    ) -> dict[str, queue.Taken | None]:
        async with self.db.write_inline(single=True) as conn:
            return await queue.queue_by_keys(conn, runs, here)


_KEYED_ACCEPTS: weakref.WeakKeyDictionary[Database, KeyedAccepts] = weakref.WeakKeyDictionary()


def keyed_accepts(db: Database) -> KeyedAccepts:
    accepts = _KEYED_ACCEPTS.get(db)
    if accepts is None:
        accepts = _KEYED_ACCEPTS[db] = KeyedAccepts(db)
    return accepts


async def run_event(
    conn: q.Reader, tenant: Tenant, *, user_ref: str, event: str, data: Any
) -> dict[str, Any]:
    """Queue a run of every active workflow of the user whose installed version awaits `event`.

    No such workflow is not an error: the event simply starts nothing.

    The executions are queued in the order of their workflows' numbers, the order every
    other writer takes the workflows' logs listings in (`queue.queue_by_keys`, retention's
    `_forget_positions`): on PostgreSQL, an event that starts several workflows queues
    behind a concurrent writer of the same listings rather than deadlocking with it. They
    are answered in the order the workflows were installed.
    """
    user = await users.resolve(conn, tenant, user_ref)
    trigger_data = orjson.dumps(data).decode()
    subscribers = await q.event_subscribers(conn, tenant.id, user["id"], event)
    started: dict[int, str] = {}
    for row in sorted(subscribers, key=lambda row: int(row["number"])):
        started[row["number"]] = await enqueue(
            conn,
            tenant,
            workflow_id=row["workflow_id"],
            user_id=user["id"],
            version=row["version"],
            trigger_id=workflows.trigger_id(row["definition"]),
            trigger_data=trigger_data,
        )
    return {
        "message": "Event successfully triggered",
        "executionIds": [started[row["number"]] for row in subscribers],
    }


async def rerun(
    conn: q.Reader,
    tenant: Tenant,
    dictionaries: Dictionaries,
    *,
    workflow_ref: str,
    execution_ref: str,
    user_ref: str | None,
) -> dict[str, Any]:
    """Queue a new execution with the trigger data and workflow version of an earlier one."""
    workflow = await workflows.resolve(conn, tenant, workflow_ref)
    original = await q.execution(conn, tenant.id, execution_ref)
    if original is None or original["workflow_id"] != workflow["id"]:
        raise NotFound(f"no execution {execution_ref!r} of this workflow")
    user = await users.resolve(conn, tenant, user_ref or original["user_id"])
    if user["id"] != original["user_id"]:
        raise NotFound(f"no execution {execution_ref!r} of this workflow for this user")
    await _active_installation(conn, tenant, workflow, user)
    trigger_id, trigger_data = original["trigger_id"], original["trigger_data"]
    if not trigger_data:
        trigger_id, trigger_data = await _stored_trigger(conn, tenant, dictionaries, original)
    new_id = await enqueue(
        conn,
        tenant,
        workflow_id=workflow["id"],
        user_id=user["id"],
        version=original["workflow_version"],
        trigger_id=trigger_id,
        trigger_data=trigger_data,
        rerun_of=original["id"],
    )
    return {"message": "success", "executionId": new_id}


async def _stored_trigger(
    conn: q.Reader, tenant: Tenant, dictionaries: Dictionaries, execution: Mapping[Any, Any]
) -> tuple[str, str]:
    """The trigger's id and data of a finished execution whose row no longer holds them:
    its log's first result (the trigger's step) does (solder/compaction.py)."""
    document = orjson.loads(
        await dictionaries.unpack(conn, tenant.id, execution["log"], execution["id"])
    )
    try:
        trigger = document["results"][0]
        return trigger["connectorId"], orjson.dumps(trigger["data"][0][0]["json"]).decode()
    except (KeyError, IndexError, TypeError) as exc:
        raise LogUnreadable(
            f"the log of execution {execution['id']} does not hold its trigger data"
        ) from exc


async def _active_installation(
    conn: q.Reader, tenant: Tenant, workflow: Mapping[Any, Any], user: Mapping[Any, Any]
) -> Mapping[Any, Any]:
    installed = await q.installation(conn, tenant.id, workflow["id"], user["id"])
    if installed is None or not installed["active"]:
        raise InvalidRequest(
            f"workflow {workflow['name']!r} is not active for user {user['username']!r}; "
            "activate it first with PUT /workflows/activate"
        )
    return installed


async def page_of_logs(
    conn: q.Reader,
    dictionaries: Dictionaries,
    key: str,
    workflow_ref: str,
    user_ref: str | None,
    *,
    page: int,
    limit: int,
    descending: bool,
    cursor: Cursor | None = None,
) -> bytes:
    """One page of logs as the JSON document `{"data": [...], "nextCursor": ...}`: the
    page `page`, or the one after `cursor`, for the holder of API key `key`.

    The key, the workflow, the user and the page are read in one statement: on
    PostgreSQL each statement is a round trip. `nextCursor` is null on the last page.
    """
    if cursor is not None:
        descending = cursor.descending
    rows = await q.page_of_logs(
        conn,
        keys.hash_key(key),
        workflow_ref,
        user_ref or None,  # an empty userId means all users, as everywhere
        descending=descending,
        limit=limit + 1,  # one more says whether there is a next page
        offset=0 if cursor is not None else (page - 1) * limit,
        after=None if cursor is None else cursor.position,
    )
    if not rows:
        raise keys.unknown()
    if rows[0]["asker_workflow_id"] is None:
        raise workflows.unknown(workflow_ref)
    if user_ref and rows[0]["asker_user_id"] is None:
        raise users.unknown(user_ref)
    tenant_id = rows[0]["asker_tenant_id"]
    rows = [row for row in rows if row["id"] is not None]
    rows, more = rows[:limit], len(rows) > limit
    last = rows[-1] if rows and more else None
    return logs.page_document(
        [
            await dictionaries.unpack(conn, tenant_id, row["log"], row["id"])
            if row["log"] is not None  # a finished execution's log is stored whole
            else await _live_log(conn, dictionaries, tenant_id, row)
            for row in rows
        ],
        None if last is None else Cursor(descending, bool(user_ref), last["position"]).encode(),
    )


async def _live_log(
    conn: q.Reader, dictionaries: Dictionaries, tenant_id: str, execution: Mapping[Any, Any]
) -> bytes:
    """The log of an execution that had not ended when its page was read: its steps so
    far, or its stored log if it has ended since."""
    rows = await q.live_log(conn, tenant_id, execution["id"])
    if not rows:  # deleted since (with its user or its workflow)
        return orjson.dumps(logs.render(execution, []))
    now = rows[0]
    if now["log"] is not None:
        return await dictionaries.unpack(conn, tenant_id, now["log"], execution["id"])
    steps = q.joined_steps(rows)
    trigger = {name: now[name] for name in ("trigger_id", "trigger_data")}
    execution = {**execution, "tenant_id": tenant_id, **trigger}
    return orjson.dumps(
        logs.render({**execution, "status": now["status"]}, logs.with_trigger(execution, steps))
    )


async def errors(
    db: Database,
    tenant: Tenant,
    workflow_ref: str,
    user_ref: str | None,
    *,
    page: int,
    limit: int,
) -> dict[str, Any]:
    async with db.read() as conn:
        workflow = await workflows.resolve(conn, tenant, workflow_ref)
        user_id = await users.optional_id(conn, tenant, user_ref)
        rows = await q.failed_executions(
            conn, tenant.id, workflow["id"], user_id, limit=limit, offset=(page - 1) * limit
        )
    return {
        "data": [
            {
                "workflowId": workflow["id"],
                "executionId": row["id"],
                "block": row["error_block"],
                "errorOccurredAt": iso_ms(row["stopped_at"]),
                "message": row["error_message"],
            }
            for row in rows
        ]
    }


async def analytics(
    db: Database, tenant: Tenant, workflow_ref: str, user_ref: str | None
) -> dict[str, Any]:
    """The runs, errors and calls to other apps of a workflow's executions, of one user
    or of all: from its listing's totals, summed first if many executions were
    recorded since they last were (store/totals.py)."""
    async with db.read() as conn:
        workflow = await workflows.resolve(conn, tenant, workflow_ref)
        user_id = await users.optional_id(conn, tenant, user_ref)
        listing, counted = await totals.read(conn, tenant.id, workflow["id"], user_id)
    if listing is not None and counted is None:
        more = True
        while more:
            async with db.write() as conn:
                more = await totals.fold(conn, listing)
        async with db.read() as conn:
            _, counted = await totals.read(conn, tenant.id, workflow["id"], user_id, or_fold=False)
    runs, errors, app_actions = counted or totals.Totals(0, 0, 0)
    return {
        "totalWorkflowRuns": runs,
        "totalErrors": errors,
        "totalAppActions": app_actions,
    }
