"""Schedules: Solder runs schedule-triggered workflows itself, once per cron tick per user.

Every `schedule_poll_seconds` a sweep finds the active installations whose installed
version runs on a cron, and runs each one whose latest tick (at or before now) is later
than the last tick it ran. Claiming the tick (a conditional update of the installation's
`last_tick_at`) and queueing its run happen in one write transaction: however many
sweeps, of however many processes, see the same tick, exactly one of them runs it. Only
the latest tick counts, so the ticks missed while Solder was down collapse into one run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

import orjson
from croniter import CroniterError, croniter
from sqlalchemy.engine import RowMapping

from solder import executions, workflows
from solder.errors import Unavailable
from solder.ids import iso_ms, now_ms
from solder.keys import Tenant
from solder.settings import Settings
from solder.store import queries as q
from solder.store.database import Database

log = logging.getLogger("solder.schedule")


def latest_tick(cron: str, now: int) -> int | None:
    """The latest tick of `cron` (read in UTC) at or before `now`, in ms; None if none."""
    # croniter looks strictly before its start time: start just after `now`.
    start = datetime.fromtimestamp((now + 1) / 1000, UTC)
    try:
        tick: datetime = croniter(cron, start).get_prev(datetime)
    except (CroniterError, ValueError):
        # Valid but never matching (`0 0 31 2 *`), or past its last year.
        return None
    return round(tick.timestamp() * 1000)


def scheduled_payload(tick: int) -> str:
    """The trigger payload of a scheduled run: the tick it runs for."""
    return orjson.dumps({"scheduledAt": iso_ms(tick)}).decode()


class Scheduler:
    """Queues the runs of schedule-triggered workflows every `schedule_poll_seconds`."""

    def __init__(self, db: Database, settings: Settings, notify: Callable[[], None]) -> None:
        self.db = db
        self.settings = settings
        self.notify = notify  # wakes the workers once a run is queued
        self._task: asyncio.Task[None] | None = None
        self._database_down = False

    async def start(self) -> None:
        """Run what ticked while Solder was down (once per installation), then keep polling."""
        await self._sweep_logged()
        self._task = asyncio.create_task(self._sweep_forever(), name="solder-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def sweep(self) -> int:
        """Queue a run for each installation whose schedule ticked since its last run."""
        now = now_ms()
        async with self.db.read() as conn:
            rows = await q.scheduled_installations(conn)
        ticks = {cron: latest_tick(cron, now) for cron in {row["trigger_cron"] for row in rows}}
        started = 0
        for row in rows:
            tick = ticks[row["trigger_cron"]]
            # Installations from before schedules existed have no last tick yet.
            last = row["last_tick_at"] if row["last_tick_at"] is not None else row["installed_at"]
            if tick is not None and tick > last and await self._run_tick(row, tick):
                started += 1
                self.notify()
        return started

    async def _run_tick(self, row: RowMapping, tick: int) -> bool:
        """Claim `tick` for the installation and queue its run; False if it was claimed."""
        tenant = Tenant(row["tenant_id"], row["tenant_name"])
        async with self.db.write() as conn:
            claimed = await q.claim_tick(
                conn,
                tenant.id,
                row["workflow_id"],
                row["user_id"],
                version=row["version"],
                tick=tick,
            )
            if not claimed:
                return False
            version = await q.workflow_version(conn, tenant.id, row["workflow_id"], row["version"])
            if version is None:  # unreachable: versions are deleted with their installations
                return False
            await executions.enqueue(
                conn,
                tenant,
                workflow_id=row["workflow_id"],
                user_id=row["user_id"],
                version=row["version"],
                trigger_id=workflows.trigger_id(version["definition"]),
                trigger_data=scheduled_payload(tick),
            )
        log.debug("queued the run of %s for %s at %s", row["workflow_id"], row["user_id"], tick)
        return True

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.schedule_poll_seconds)
            await self._sweep_logged()

    async def _sweep_logged(self) -> None:
        try:
            await self.sweep()
        except Unavailable:
            if not self._database_down:
                log.warning("schedule sweeps skipped while the database is unavailable")
            self._database_down = True
            return
        except Exception:
            log.exception("schedule sweep failed")
        self._database_down = False
