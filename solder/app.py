"""The running Solder: database, engine and dispatcher, started and stopped together."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from solder import executions
from solder.compaction import Compaction
from solder.connectors import Connector, registry
from solder.credentials import Box, lookup
from solder.dictionaries import Dictionaries
from solder.dispatch import Dispatcher, EmbeddedDispatcher
from solder.engine import Engine
from solder.executions import Idempotency
from solder.keys import Tenant
from solder.network import HttpClient
from solder.retention import Retention
from solder.schedule import Scheduler
from solder.settings import Settings
from solder.store.database import Database
from solder.store.lock import ServeLock
from solder.store.prepared import Reader
from solder.workers import Backlog, QueueWorker, Waker

log = logging.getLogger("solder")


class Solder:
    """What every request handler and worker shares.

    `worker=False` (PostgreSQL only) makes an API-only process: it queues executions and
    leaves running them, their schedules and retention to `solder worker` processes.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        worker: bool = True,
        concurrency: int | None = None,
        supervised: bool = False,
    ) -> None:
        self.settings = settings
        self.db = Database(
            settings.database_url,
            sqlite_synchronous=settings.sqlite_synchronous,
            pool_size=settings.database_pool_size,
            shared=supervised,
        )
        if not worker and self.db.is_sqlite:
            raise ValueError("on SQLite the server runs its executions itself")
        self.connectors: Mapping[str, Connector] = registry()
        # Every worker keeps its connection alive between calls.
        concurrency = concurrency or settings.concurrency
        self.http = HttpClient(
            allow_private=settings.http_allow_private_networks,
            connections=max(100, concurrency),
        )
        self.box = Box.from_settings(settings)
        self.dictionaries = Dictionaries(self.db, enabled=settings.log_dictionaries)
        self.engine = Engine(
            self.db,
            settings,
            self.http,
            self.connectors,
            credentials_for=lambda tenant_id, user_id: lookup(
                self.db, self.box, tenant_id, user_id
            ),
            dictionaries=self.dictionaries,
        )
        self.dispatcher: Dispatcher | None = None
        # On PostgreSQL the workers of every process are woken by a NOTIFY of this one's.
        self.waker = None if self.db.is_sqlite else Waker(self.db)
        if self.waker is None:
            self.dispatcher = EmbeddedDispatcher(self.db, self.engine, concurrency)
        elif worker:
            self.dispatcher = QueueWorker(self.db, self.engine, settings, concurrency, self.waker)
            # The runs this process accepts are claimed for its own worker while it has
            # slots free (`executions.KeyedAccepts`).
            executions.keyed_accepts(self.db).here = self.dispatcher.jobs
        self.backlog = None if self.db.is_sqlite else Backlog(self.db, settings.queue_high_water)
        self.retention = Retention(self.db, settings)
        self.compaction = Compaction(
            self.db, settings, quiet=None if self.dispatcher is None else self.dispatcher.quiet
        )
        self.scheduler = Scheduler(self.db, settings, self._notify)
        # One of the processes of `solder serve --processes`: its supervisor holds the
        # database's serve lock for them all.
        self.supervised = supervised
        self._serve_lock: ServeLock | None = None

    async def _room(self) -> None:
        """Return when another run may be accepted (backpressure)."""
        if self.dispatcher is not None:
            await self.dispatcher.room()
        if self.backlog is not None:
            await self.backlog.room()

    def _notify(self, runs: int = 1) -> None:
        if self.waker is not None:
            self.waker.wake()
        elif self.dispatcher is not None:
            self.dispatcher.notify(runs)

    async def accept(
        self,
        tenant: Tenant,
        idempotency: Idempotency | None,
        action: Callable[[Reader], Awaitable[dict[str, Any]]],
    ) -> dict[str, Any]:
        """Run `action`, which queues executions, once per idempotency key; wake the workers."""
        await self._room()
        answer = await executions.once(self.db, tenant, idempotency, action)
        # An event starts a run for each workflow awaiting it: a worker is woken for each.
        started = answer.get("executionIds")
        self._notify(len(started) if isinstance(started, list) else 1)
        return answer

    async def accept_by_key(
        self, key_hash: str, *, user_id: str, workflow_id: str, data: Any
    ) -> dict[str, Any] | None:
        """`executions.run_workflow_by_key`, as `accept` runs an action: after the
        dispatcher has room, and waking a worker."""
        await self._room()
        accepted = await executions.run_workflow_by_key(
            self.db, key_hash, user_id=user_id, workflow_id=workflow_id, data=data
        )
        if accepted is None:
            return None
        if not accepted.here:
            self._notify()
        return accepted.answer

    async def start(self) -> None:
        if self.db.sqlite_file is not None and not self.supervised:
            self._serve_lock = ServeLock(self.db.sqlite_file)
            self._serve_lock.acquire()
        await asyncio.to_thread(self.db.migrate)
        if self.dispatcher is not None:
            await self.dictionaries.start()
            await self.dispatcher.start()
            await self.scheduler.start()
            self.retention.start()
            self.compaction.start()
        _freeze_what_startup_built()

    async def stop(self) -> None:
        if self.dispatcher is not None:
            await self.compaction.stop()
            await self.retention.stop()
            await self.scheduler.stop()
            await self.dispatcher.stop(self.settings.shutdown_grace_seconds)
            await self.dictionaries.stop()
        if self.waker is not None:
            await self.waker.stop()
        await self.http.close()
        if self._serve_lock is not None:
            self._serve_lock.release()
        await self.db.dispose()


@functools.cache
def _freeze_what_startup_built() -> None:
    """Leave the objects startup built (modules, the app, its routes and models: some
    170,000) out of every later garbage collection: they live as long as the process.

    Each full collection walked them all, 104 to 155 ms with the event loop stopped, six
    to eight times a minute under a steady load of runs (bench/memtrace); the objects
    created from here on are still collected. Once a process: one that starts several
    apps (the tests) freezes what the first one built.
    """
    gc.collect()
    gc.freeze()
