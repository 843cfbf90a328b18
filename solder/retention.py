"""Retention: execution logs are purged once older than the retention period.

Purging runs in small batches, each its own short transaction, so the API and the
workers are never held up behind one long delete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from solder.errors import Unavailable
from solder.ids import now_ms
from solder.settings import Settings
from solder.store import queries as q
from solder.store.database import Database

log = logging.getLogger("solder.retention")

BATCH = 500
# A retried request can find its first answer for a day (Stripe keeps keys as long).
IDEMPOTENCY_MS = 24 * 3600 * 1000


class Retention:
    """Purges expired logs every `retention_sweep_seconds`."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._sweep_forever(), name="solder-retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def purge(self) -> int:
        """Purge every expired log now; the number purged."""
        cutoff = now_ms() - int(self.settings.log_retention_days * 86_400_000)
        purged = 0
        while True:
            async with self.db.write() as conn:
                deleted = await q.purge_executions(conn, cutoff, BATCH)
            purged += deleted
            if deleted < BATCH:
                break
            await asyncio.sleep(0)  # let waiting requests take the write lock between batches
        async with self.db.write() as conn:
            await q.purge_idempotency_keys(conn, now_ms() - IDEMPOTENCY_MS)
        return purged

    async def _sweep_forever(self) -> None:
        while True:
            try:
                purged = await self.purge()
                if purged:
                    log.info("purged %d execution logs past retention", purged)
            except Unavailable:
                log.warning("retention sweep skipped: the database is unavailable")
            except Exception:
                log.exception("retention sweep failed")
            await asyncio.sleep(self.settings.retention_sweep_seconds)
