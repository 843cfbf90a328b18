"""Embedded dispatch (SQLite): an asyncio worker pool inside the server process.

The queue is the `executions` table itself: a run request is answered only once its
execution row is committed as `queued`, and workers claim rows from it. Nothing is held
only in memory, so a process that dies loses no accepted run: the executions it left
`running` are marked `crashed`, claimed again, and resume after their last finished step,
at the next start or, when several processes serve the file (`solder serve --processes`),
within seconds by a sibling (`reclaim`: a claim's lease names its process, whose
liveness a lock file tells, `store/lock.py`). Each process runs the runs it accepted,
woken at once; a run queued elsewhere is found by the next poll. PostgreSQL dispatches
through procrastinate instead (`solder/workers.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from typing import Protocol

from solder.engine import Engine
from solder.errors import Unavailable
from solder.ids import lease_id, now_ms
from solder.store import queue
from solder.store.database import Database
from solder.store.lock import ProcessMarks

log = logging.getLogger("solder.dispatch")

_POLL_SECONDS = 1.0
# How often a process looks for executions left running by a sibling that died.
_RECLAIM_SECONDS = 5.0
# Backpressure: while the event loop is saturated (its lag over _BUSY_LAG_SECONDS) and
# as many runs are queued as there are workers, accepting one more waits for a worker to
# take one, for at most _MAX_WAIT_SECONDS (then it is queued all the same). Without it,
# clients sending runs as fast as they are answered take the loop from the workers and
# the queue only grows: 32 such clients got 90 runs a second done of 1,100 accepted;
# with it, 400 done as accepted (bench/RESULTS.md). Only a busy loop counts: workers
# waiting on a slow API leave the loop idle, and then a burst of runs is queued at once,
# however long the queue. A loop saturated by many short tasks is late by only a few ms
# at each wake-up: with 5 ms as the mark, 32 such clients got 650 runs a second accepted
# and 60 done over minutes, the queue growing without end; with 1 ms, as many done as
# accepted (bench/RESULTS.md, scenario 6). Shorter tasks still, as cheaper accepting
# made them, slip under any mark of lag: the loop's thread busy for more than
# _BUSY_SHARE of the time counts as saturated too (its CPU time over the probe's
# interval), which a loop waiting on slow APIs never is. With several processes sharing
# the cores (`solder serve --processes`), a loop waiting for a core is as saturated as one
# running: counted by its CPU time alone, two processes on two cores looked 75 % busy,
# and accepted 1,300 runs a second while they ended 400 (bench/RESULTS.md); so the time
# the thread spent ready to run, waiting for a core, counts too (`_Demand`).
_QUEUED_PER_WORKER = 1
_MAX_WAIT_SECONDS = 1.0
_LAG_PROBE_SECONDS = 0.05
_BUSY_LAG_SECONDS = 0.001
_BUSY_SHARE = 0.8


class Dispatcher(Protocol):
    """What runs queued executions in this process: embedded, or procrastinate's worker."""

    def notify(self, runs: int = 1) -> None:
        """`runs` executions were queued."""

    async def room(self) -> None:
        """Return when the workers can take another run soon (backpressure)."""

    async def quiet(self) -> None:
        """Return once no run waits for a worker in this process (background writes wait)."""

    def notify_at(self, wake_at: int) -> None:
        """A waiting execution is due at `wake_at` (ms since the epoch)."""

    async def start(self) -> None: ...

    async def stop(self, grace_seconds: float) -> None:
        """Stop taking work; give running executions `grace_seconds` to finish."""


class _Demand:
    """Seconds this thread has run, or waited for a core to run on: Linux's schedstat
    of the thread (two reads of a file kept open), else its CPU time alone."""

    def __init__(self) -> None:
        self._fd: int | None = None
        with contextlib.suppress(OSError):
            self._fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        try:
            # This thread has run: a kernel that does not account for it reads 0.
            usable = self._fd is not None and self() > 0
        except (OSError, ValueError):
            usable = False
        if not usable and self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __call__(self) -> float:
        if self._fd is None:
            return time.thread_time()
        running, waiting = os.pread(self._fd, 128, 0).split()[:2]
        return (int(running) + int(waiting)) / 1e9

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)


class EmbeddedDispatcher:
    """Runs queued executions on `concurrency` asyncio tasks."""

    def __init__(self, db: Database, engine: Engine, concurrency: int) -> None:
        self.db = db
        self.engine = engine
        self.concurrency = concurrency
        # The processes serving the file, this one among them (none for a database in
        # memory); the leases of this process's claims start with its token.
        self.marks = None if db.sqlite_file is None else ProcessMarks(db.sqlite_file)
        self._token = ""
        self._reclaimer: asyncio.Task[None] | None = None
        # Idle workers, each waiting on its own future: a queued run wakes one of them, not
        # all. Woken all at once, each claimed (a write transaction) and all but one found
        # nothing: at 100 runs a second that was a fifth of the server's CPU per run
        # (bench/RESULTS.md, scenario 2).
        self._idle_workers: deque[asyncio.Future[None]] = deque()
        # Notifications so far: a worker whose claim found nothing while one came in looks
        # again rather than going idle, as no idle worker was there to be woken for it.
        self._notified = 0
        self._queued = 0  # queued and not claimed yet, as far as this process can tell
        self._room = asyncio.Event()
        self._room.set()
        self._empty = asyncio.Event()  # nothing queued: set while self._queued == 0
        self._empty.set()
        self._lag = 0.0  # the event loop's recent lag, smoothed, in seconds
        self._busy = 0.0  # the share of the time its thread was busy of late, smoothed
        self._stopping = False
        self._workers: list[asyncio.Task[None]] = []
        self._lag_probe: asyncio.Task[None] | None = None
        engine.on_park = self.notify_at

    async def start(self) -> None:
        if self.marks is not None:
            self._token = self.marks.hold()
            await self.reclaim()
        else:  # a database in memory: this process is its only one
            async with self.db.write() as conn:
                crashed = await queue.crash_running(conn)
            if crashed:
                log.warning("%d executions were left running by a process that died", crashed)
        async with self.db.write() as conn:
            wake_at = await queue.next_wake(conn)
        if wake_at is not None:
            self.notify_at(wake_at)
        self._workers = [
            asyncio.create_task(self._work(), name=f"solder-worker-{n}")
            for n in range(self.concurrency)
        ]
        self._lag_probe = asyncio.create_task(self.watch_lag(), name="solder-lag-probe")
        if self.marks is not None:
            self._reclaimer = asyncio.create_task(self._reclaim_forever(), name="solder-reclaim")

    async def reclaim(self) -> int:
        """Take back the executions left running by processes that died: marked crashed,
        they are claimed again and resume after their last finished step. How many."""
        assert self.marks is not None
        async with self.db.read() as conn:
            running = await queue.running(conn)
        dead = [
            (tenant_id, execution_id, lease)
            for tenant_id, execution_id, lease in running
            if not self.marks.alive((lease or "")[: ProcessMarks.TOKEN_LENGTH])
        ]
        crashed = 0
        if dead:
            async with self.db.write() as conn:
                for claim in dead:
                    crashed += await queue.crash_claim(conn, *claim)
        if crashed:
            log.warning("%d executions were left running by a process that died: resuming", crashed)
            self.notify(crashed)
        await asyncio.to_thread(self.marks.forget_dead)
        return crashed

    async def _reclaim_forever(self) -> None:
        while True:
            await asyncio.sleep(_RECLAIM_SECONDS)
            try:
                await self.reclaim()
            except Unavailable:
                pass  # the next round tries again
            except Exception:
                log.exception("taking back the executions of a dead process failed")

    async def watch_lag(self) -> None:
        """Measure how saturated the event loop is: how late it wakes a sleeper, and how
        much of the time its thread is busy (or waiting for a core)."""
        loop = asyncio.get_running_loop()
        demand = _Demand()
        while True:
            before, demand_before = loop.time(), demand()
            await asyncio.sleep(_LAG_PROBE_SECONDS)
            elapsed = loop.time() - before
            lag = max(0.0, elapsed - _LAG_PROBE_SECONDS)
            self._lag = 0.7 * self._lag + 0.3 * lag
            busy = (demand() - demand_before) / elapsed
            self._busy = 0.7 * self._busy + 0.3 * busy

    def notify(self, runs: int = 1) -> None:
        """`runs` executions were queued: wake as many idle workers, at most."""
        if runs <= 0:
            return
        self._queued += runs
        self._empty.clear()
        if self._queued >= _QUEUED_PER_WORKER * self.concurrency:
            self._room.clear()
        self._wake(runs)

    def _wake(self, workers: int) -> None:
        """Wake up to `workers` idle workers; busy ones look for work when they finish."""
        self._notified += 1
        while workers > 0 and self._idle_workers:
            waiter = self._idle_workers.popleft()
            if not waiter.done():
                waiter.set_result(None)
                workers -= 1

    async def room(self) -> None:
        """Return at once while the queue is short or the event loop has time to spare;
        else when a worker takes a run, or after _MAX_WAIT_SECONDS: a run is never
        refused, only slowed."""
        if not self._room.is_set() and (self._lag > _BUSY_LAG_SECONDS or self._busy > _BUSY_SHARE):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), _MAX_WAIT_SECONDS)

    async def quiet(self) -> None:
        """Return once every run accepted here is taken by a worker (the compaction
        sweep's writes wait for it)."""
        await self._empty.wait()

    def _taken(self, claimed: bool) -> None:
        # Runs queued elsewhere (a schedule, an event starting several) make the count
        # drift: an empty queue sets it right.
        self._queued = max(0, self._queued - 1) if claimed else 0
        if self._queued == 0:
            self._empty.set()
        if self._queued < _QUEUED_PER_WORKER * self.concurrency:
            self._room.set()

    def notify_at(self, wake_at: int) -> None:
        """Wake an idle worker when a waiting execution is due (ms since the epoch)."""
        delay = max(0.0, (wake_at - now_ms()) / 1000)
        asyncio.get_running_loop().call_later(delay, self._due, wake_at)

    def _due(self, wake_at: int) -> None:
        # uvloop's timers count whole milliseconds of its own clock: one in ten fired
        # before `wake_at` by the wall clock the claim compares with, and the worker
        # woken found nothing due (the run then waited for the next poll, a second).
        if now_ms() < wake_at:
            self.notify_at(wake_at)
        else:
            self._wake(1)

    async def stop(self, grace_seconds: float) -> None:
        """Stop claiming; give running executions `grace_seconds` to finish, then cancel."""
        self._stopping = True
        self._wake(len(self._idle_workers))
        for task in (self._lag_probe, self._reclaimer):
            if task is not None:
                task.cancel()
        if self._workers:
            _, pending = await asyncio.wait(self._workers, timeout=grace_seconds)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if pending:
                log.info(
                    "%d executions interrupted: they resume elsewhere or at the next start",
                    len(pending),
                )
        if self.marks is not None:
            self.marks.release()  # what it left running is taken back by the others

    async def _work(self) -> None:
        while not self._stopping:
            notified = self._notified
            try:
                claimed = await self.claim()
            except Unavailable:
                await asyncio.sleep(_POLL_SECONDS)
                continue
            if claimed is None:
                if self._notified == notified:  # else a run came in while it looked
                    await self._idle()
                continue
            try:
                await self.engine.run_or_fail(*claimed)
            except Unavailable:
                # Left `running`: it resumes after its last finished step at the next start.
                await asyncio.sleep(_POLL_SECONDS)
            except Exception:  # failing it failed too: keep this worker going
                log.exception("execution %s could not be marked failed", claimed[1])

    async def claim(self) -> tuple[str, str, str] | None:
        """Claim the next runnable execution, if any: (tenant id, execution id, lease)."""
        lease = lease_id(self._token)
        async with self.db.write_inline() as conn:
            row = await queue.claim_next(conn, lease, now_ms())
        self._taken(row is not None)
        return None if row is None else (row["tenant_id"], row["id"], lease)

    async def _idle(self) -> None:
        """Wait to be woken; look anyway after _POLL_SECONDS (runs queued unannounced)."""
        waiter = asyncio.get_running_loop().create_future()
        self._idle_workers.append(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, _POLL_SECONDS)
        finally:
            with contextlib.suppress(ValueError):
                self._idle_workers.remove(waiter)
