"""Retention: execution logs are purged once older than their retention period.

A workflow's logs are kept for its own retention if it has one, else its tenant's, else
the server's `SOLDER_LOG_RETENTION_DAYS`. Purging runs workflow by workflow in small
batches, each its own short transaction, so the API and the workers are never held up
behind one long delete. On SQLite the pages freed are then given back to the file system
in small steps (incremental vacuum), so the file stays as large as the logs kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from solder.errors import InvalidRequest, Unavailable
from solder.ids import now_ms
from solder.keys import Tenant
from solder.settings import Settings
from solder.store import queries as q
from solder.store.database import Database

log = logging.getLogger("solder.retention")

DAY_MS = 86_400_000
MIN_MS = 3_600_000  # one hour: less would purge logs before anyone looks at a failure
MAX_DAYS = 3650  # ten years
BATCH = 500
# Pages given back per write transaction: 256 pages (1 MiB at SQLite's default 4 KiB)
# take a few milliseconds, so requests waiting for the write lock barely notice.
VACUUM_STEP = 256
# Free pages the sweep leaves in the file: new logs reuse them, instead of the file
# shrinking at every sweep to grow again at the next runs.
RESERVE_PAGES = 1024
# A retried request can find its first answer for a day (Stripe keeps keys as long).
IDEMPOTENCY_MS = 24 * 3600 * 1000

OnProgress = Callable[[int], None]


def requested_ms(body: Any) -> int | None:
    """The retention a `{"days": ...}` body asks for, in ms; None asks to inherit."""
    if not isinstance(body, Mapping) or "days" not in body:
        raise InvalidRequest(
            'the body must be {"days": <number of days>}, or {"days": null} to inherit'
        )
    return days_to_ms(body["days"])


def days_to_ms(value: Any) -> int | None:
    """A number of days (fractions allowed) as ms, within bounds; None stays None."""
    if value is None:
        return None
    # bool is an int to Python, not a number of days to a client.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"days must be a number of days or null, got {value!r}")
    if not 0 < value <= MAX_DAYS or round(value * DAY_MS) < MIN_MS:
        raise InvalidRequest(
            f"days must be at least 1/24 (one hour) and at most {MAX_DAYS} (ten years), "
            f"got {value!r}"
        )
    return round(value * DAY_MS)


def days(ms: int) -> int | float:
    """`ms` in days, as a whole number when it is one (30, not 30.0)."""
    value = ms / DAY_MS
    return int(value) if value.is_integer() else value


def default_ms(settings: Settings) -> int:
    return int(settings.log_retention_days * DAY_MS)


def _effective(
    own_ms: int | None, own_source: str, inherited_ms: int, inherited_source: str
) -> dict[str, Any]:
    if own_ms is None:
        return {"days": days(inherited_ms), "source": inherited_source}
    return {"days": days(own_ms), "source": own_source}


async def tenant_view(conn: AsyncConnection, tenant: Tenant, settings: Settings) -> dict[str, Any]:
    """The tenant's retention, the server's default, and every workflow's own."""
    server_ms = default_ms(settings)
    tenant_ms = await q.tenant_retention(conn, tenant.id)
    inherited = (server_ms, "default") if tenant_ms is None else (tenant_ms, "tenant")
    return {
        **_effective(tenant_ms, "tenant", server_ms, "default"),
        "tenantDays": None if tenant_ms is None else days(tenant_ms),
        "defaultDays": days(server_ms),
        "workflows": [
            _workflow(row, *inherited) for row in await q.workflow_retentions(conn, tenant.id)
        ],
    }


async def workflow_view(
    conn: AsyncConnection, tenant: Tenant, workflow: Mapping[Any, Any], settings: Settings
) -> dict[str, Any]:
    """A workflow's retention: how long its logs are kept, and where that comes from."""
    tenant_ms = await q.tenant_retention(conn, tenant.id)
    if tenant_ms is None:
        return _workflow(workflow, default_ms(settings), "default")
    return _workflow(workflow, tenant_ms, "tenant")


def _workflow(row: Mapping[Any, Any], inherited_ms: int, inherited_source: str) -> dict[str, Any]:
    own = row["retention_ms"]
    return {
        "workflowId": row["id"],
        "name": row["name"],
        **_effective(own, "workflow", inherited_ms, inherited_source),
        "workflowDays": None if own is None else days(own),
    }


async def set_for_tenant(conn: AsyncConnection, tenant: Tenant, retention_ms: int | None) -> None:
    await q.set_tenant_retention(conn, tenant.id, retention_ms)


async def set_for_workflow(
    conn: AsyncConnection, tenant: Tenant, workflow: Mapping[Any, Any], retention_ms: int | None
) -> None:
    await q.set_workflow_retention(conn, tenant.id, workflow["id"], retention_ms)


class Retention:
    """Purges expired logs every `retention_sweep_seconds`, then gives their space back."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._task: asyncio.Task[None] | None = None
        self._warned = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._sweep_forever(), name="solder-retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def expired(self) -> int:
        """How many ended executions are past their retention now."""
        async with self.db.read() as conn:
            return await q.count_expired(conn, now_ms(), default_ms(self.settings))

    async def purge(self, on_batch: OnProgress | None = None, *, paced: bool = False) -> int:
        """Purge every expired log now; the number purged (`on_batch` gets each batch's).

        `paced` (the background sweep): after each batch, wait as long as it took, so the
        purge takes at most half of the database's time and the reads keep their tail
        (bench/RESULTS.md, scenario 5). It only has to keep up with what expires.
        """
        async with self.db.read() as conn:
            due = await q.expired_workflows(conn, now_ms(), default_ms(self.settings))
        purged = 0
        for workflow in due:
            after: int | None = 0
            while after is not None:
                started = time.monotonic()
                async with self.db.write() as conn:
                    deleted, after = await q.purge_workflow_executions(
                        conn,
                        workflow["tenant_id"],
                        workflow["id"],
                        workflow["cutoff"],
                        after,
                        BATCH,
                    )
                purged += deleted
                if on_batch is not None and deleted:
                    on_batch(deleted)
                # Let waiting requests take the write lock; paced, leave them as long.
                await asyncio.sleep(time.monotonic() - started if paced else 0)
        async with self.db.write() as conn:
            await q.purge_idempotency_keys(conn, now_ms() - IDEMPOTENCY_MS)
        return purged

    async def free_pages(self) -> int | None:
        """SQLite: the file's free pages, or None when it cannot give them back (or is
        not SQLite)."""
        if not self.db.is_sqlite:
            return None
        async with self.db.read() as conn:
            if await q.auto_vacuum_mode(conn) != 2:
                return None
            return await q.free_pages(conn)

    async def reclaim(self, keep: int = RESERVE_PAGES, on_step: OnProgress | None = None) -> int:
        """SQLite: give free pages beyond `keep` back to the file system, in small steps;
        the number given back. PostgreSQL leaves this to autovacuum."""
        if await self.free_pages() is None:
            if self.db.is_sqlite and not self._warned:
                self._warned = True
                log.warning(
                    "this SQLite database predates incremental vacuum: purged logs leave "
                    "free pages but the file never shrinks. Run `solder vacuum` once "
                    "(docs/cli.md) to switch it."
                )
            return 0
        reclaimed = 0
        while True:
            async with self.db.write() as conn:
                step = min(await q.free_pages(conn) - keep, VACUUM_STEP)
                if step > 0:
                    await q.incremental_vacuum(conn, step)
            if step <= 0:
                return reclaimed
            reclaimed += step
            if on_step is not None:
                on_step(step)
            await asyncio.sleep(0)

    async def sweep(self) -> int:
        """One sweep: purge what expired, then give back the space; the number purged."""
        purged = await self.purge(paced=True)
        await self.reclaim()
        return purged

    async def _sweep_forever(self) -> None:
        while True:
            try:
                purged = await self.sweep()
                if purged:
                    log.info("purged %d execution logs past retention", purged)
            except Unavailable:
                log.warning("retention sweep skipped: the database is unavailable")
            except Exception:
                log.exception("retention sweep failed")
            await asyncio.sleep(self.settings.retention_sweep_seconds)
