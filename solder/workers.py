"""Scale-out dispatch (PostgreSQL): executions run as procrastinate jobs.

Every queued execution has a job, deferred in the transaction that queued it
(`store/jobs.py`). Any number of processes (`solder worker`, and `solder serve` unless
`--no-worker`) run a procrastinate worker on the same database; LISTEN/NOTIFY wakes
them as jobs arrive (`Waker`), and each polls the queue every `_POLL_SECONDS`.

Workers heartbeat every sixth of `SOLDER_WORKER_TIMEOUT_SECONDS`. Every worker process
also sweeps at that pace: a job whose worker has sent no heartbeat for two thirds of the
timeout is put back in the queue and its execution marked `crashed`; the next worker to
fetch the job resumes the execution after its last finished step. A dead worker's
executions are so detected within the timeout. The block that was in flight when the
worker died runs again: delivery is at least once for that one step, exactly once for
every other step and for the execution's end (`docs/deploy.md`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import random
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, cast

import psycopg
from procrastinate import App, BaseConnector, PsycopgConnector
from procrastinate.exceptions import JobAborted
from procrastinate.job_context import JobContext
from procrastinate.jobs import Job, Notification, Status
from procrastinate.manager import JobManager, NotificationCallback
from procrastinate.retry import BaseRetryStrategy, RetryDecision
from procrastinate.worker import Worker
from psycopg_pool import AsyncConnectionPool

from solder.engine import Engine
from solder.errors import Unavailable
from solder.ids import lease_id, now_ms
from solder.settings import Settings
from solder.store import jobs, queue
from solder.store.database import CONNECT_TIMEOUT, Database

log = logging.getLogger("solder.worker")

# Backpressure (`Backlog`): how long one accept waits at most for the queue to shrink,
# and how often the queue is counted while runs are accepted: near the mark (half of it
# or more), or far below it, where a count a run would cost a quiet API a round trip
# each.
_MAX_WAIT_SECONDS = 1.0
_COUNT_SECONDS = 0.05
_QUIET_COUNT_SECONDS = 1.0

# A job fetch also happens on every NOTIFY (`Waker`); polling catches delays that come
# due, jobs procrastinate retries itself, and runs whose wake was lost.
_POLL_SECONDS = 1.0
# At most this many jobs fetched in one statement (`_JobManager.fetch_job`): a worker of
# many slots does not take the whole queue at once from the other workers.
_MAX_BATCH = 16
# A wake names the live worker whose turn it is (`Waker`, `_JobManager.listen_for_jobs`):
# that one fetches at once, every other this long after, once for all the wakes meanwhile.
# A run whose worker cannot take it (its slots full, or it died and is not yet known
# dead) waits this long more at most; the others' fetches, which mostly find nothing,
# are one every this long instead of one a wake each.
_OTHERS_WAKE_SECONDS = 0.05
# A worker that lost the database tries again at most this long after its last try: it
# finds a server that is back within two seconds (with 10, a run waited up to 10 s more).
_MAX_RESTART_DELAY = 2.0
# How many executions each crash sweep walks for one whose job was deleted (`jobs.walk`):
# at a sweep every 5 s (the default worker timeout's sixth), a million are walked in
# some 8 minutes.
ORPHAN_WALK = 10_000


class _Worker(Worker):
    """procrastinate's worker, its log records' extras built only for a record made.

    procrastinate builds a job's extras (the job's fields as a dict, the worker's, the
    result's) for each of the four records a job logs, before the logger is asked whether
    it logs them at all; Solder keeps procrastinate's logger at WARNING, and so made them
    for nothing: 3.5 to 6.3 % of a worker's CPU a run (bench/RESULTS.md). The extras are
    built when a record is made, from what they would have been built of then.
    """

    def _log_extra(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        build = functools.partial(super()._log_extra, *args, **kwargs)
        return cast(dict[str, Any], _Extra(build))

    def stopping(self) -> bool:
        return self._stop_event.is_set()

    def new_jobs(self) -> None:
        """Ask the job manager for jobs now, as a wake does (`_JobManager.hand`)."""
        self._new_job_event.set()


class _Extra(Mapping[str, Any]):
    """A log record's extras, built at their first read (`logging.Logger.makeRecord`)."""

    __slots__ = ("_build", "_built")

    def __init__(self, build: Callable[[], Mapping[str, Any]]) -> None:
        self._build = build
        self._built: Mapping[str, Any] | None = None

    def _extras(self) -> Mapping[str, Any]:
        if self._built is None:
            self._built = self._build()
        return self._built

    def __getitem__(self, key: str) -> Any:
        return self._extras()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._extras())

    def __len__(self) -> int:
        return len(self._extras())


class _RunAgain(BaseRetryStrategy):
    """Which interrupted jobs procrastinate runs again: the ones Solder did not end.

    A workflow's own failures are recorded in its execution, not retried here; a job
    stopped by a shutdown or by the database going away resumes its execution.
    """

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if isinstance(exception, asyncio.CancelledError | JobAborted):
            return RetryDecision(retry_in={"seconds": 0})
        if isinstance(exception, Unavailable):
            return RetryDecision(retry_in={"seconds": 1})
        return None


class _JobManager(JobManager):
    """procrastinate's job manager, with round trips a run saved at each end of it.

    - Jobs are fetched in batches, as many as the worker has slots free
      (`_MAX_BATCH` at most): procrastinate's worker asks for one job a slot, one fetch
      after the other, and a short run takes less time than a fetch's round trip on a
      loaded machine, so a worker with a backlog ran one or two runs at a time whatever
      its concurrency (bench/RESULTS.md). The jobs fetched beyond the one asked for wait
      in `fetched`, and are handed out as procrastinate asks for them, which it does at
      once for each free slot. Those still there when the worker stops are put back in
      the queue (`unregister_worker`).
    - A job's fetch also claims its execution, in the same statement
      (`queue.fetch_and_take`): `taken` holds, for each job whose execution it claimed,
      the lease and what the claim returned, until `QueueWorker.run_job` runs it (which
      claims the execution itself if the fetch did not).
    - A fetch that finds nothing is made again if a wake came while it ran
      (`fetch_job`). A batch that came back short found the queue empty: procrastinate's
      asks for the next half of a poll's interval, which would find it empty too, are
      answered without a statement unless a wake came since (a fetch for nothing a
      wake, on every worker; and with the runs claimed at their accept, `hand`, one
      each time a slot came free).
    - Each wake is fetched at once by one worker only: the one whose turn the wake names
      among the live workers (`peers`); the others fetch `_OTHERS_WAKE_SECONDS` after,
      for whatever that one could not take (`listen_for_jobs`). procrastinate wakes every
      worker and every one fetched: with N workers, N - 1 fetches for nothing a wake.
    - The runs this process accepts are claimed for its worker in the accepting
      statement while it has slots free (`reserve`, then `hand`: docs/decisions.md,
      "Runs claimed where they are accepted"); they wait in `fetched` and `taken` as a
      fetched batch's do, and are handed out with no fetch.
    - Nothing is recorded of a job whose execution's end deleted it already
      (`queue.end`). The end deletes the job in its own statement, so the two are
      committed together: no finished execution keeps a job, and no job is deleted for a
      run that did not end. procrastinate would then call its finish function on the
      job, which raises on a job that is gone; `done` holds the jobs so deleted, each
      until procrastinate finishes it.
    """

    def __init__(
        self, connector: BaseConnector, db: Database, concurrency: int, dead_after: float
    ) -> None:
        super().__init__(connector)
        self.db = db
        self.concurrency = concurrency
        self.dead_after = dead_after  # seconds without a heartbeat: a worker presumed dead
        self.fetched: collections.deque[Job] = collections.deque()
        self.in_hand = 0  # jobs handed to the worker that it has not finished or retried
        self.taken: dict[int, tuple[str, queue.Taken]] = {}
        self.done: set[int] = set()
        self.wakes = 0  # the `job_inserted` notifications this worker has acted on
        self.worker_id: int | None = None
        self.peers: tuple[int, ...] = ()  # the live workers' ids (`see_peers`)
        # The wakes count and the loop's time when a fetch last came back short or found
        # nothing, if no fetch has been made since.
        self._drained: tuple[int, float] | None = None
        self._later: asyncio.Task[None] | None = None  # another worker's turn, answered later
        self.worker: _Worker | None = None  # procrastinate's worker running now, if any
        self.reserved = 0  # slots promised to accepts in flight (`reserve`)

    async def register_worker(self) -> int:
        # A worker (re)starts: what the one before held is the crash sweep's now.
        self.fetched.clear()
        self.taken.clear()
        self.in_hand = 0
        self._drained = None
        self.worker_id = await super().register_worker()
        await self.see_peers()
        return self.worker_id

    async def see_peers(self) -> None:
        """Read which workers are alive now (at registration, and at each crash sweep)."""
        async with self.db.read_inline() as conn:
            self.peers = await jobs.live_workers(conn, self.dead_after)

    def my_turn(self, notification: Notification) -> bool:
        """Whether this worker fetches at once for a `job_inserted` wake: when the wake
        names its turn, or names none (procrastinate's own), or this worker does not know
        itself among the live workers yet, or half its slots or more are taken (the load
        is high, and the worker whose turn it is may have none free)."""
        turn = cast(dict[str, Any], notification).get("turn")
        if not isinstance(turn, int) or self.worker_id not in self.peers:
            return True
        if 2 * self.in_hand >= self.concurrency:
            return True  # busy: so may be the one whose turn it is, its slots full
        return self.peers[turn % len(self.peers)] == self.worker_id

    def reserve(self, runs: int) -> queue.Here | None:
        """Slots of this worker for up to `runs` runs that this process is accepting, to
        be claimed for it in the accepting statement (`queue.queue_by_keys`): as many as
        are free, none taken or promised; None if none is, or the worker is not running.
        `release` gives them back once the statement is done, `hand` the runs it claimed.
        """
        if self.worker is None or self.worker_id is None or self.worker.stopping():
            return None
        slots = min(runs, self._free())
        if slots <= 0:
            return None
        self.reserved += slots
        return queue.Here(self.worker_id, slots, lease_id(), now_ms())

    def release(self, here: queue.Here) -> None:
        self.reserved -= here.slots

    def _free(self) -> int:
        """Slots neither running a job, nor holding a fetched one, nor promised to an
        accept in flight (`reserve`)."""
        return self.concurrency - self.in_hand - len(self.fetched) - self.reserved

    def hand(self, here: queue.Here, claimed: Iterable[queue.Taken]) -> None:
        """Run the executions claimed for this worker at their accept (`reserve`): their
        jobs are handed out as fetched ones are, with no fetch. If the worker restarted
        meanwhile, they are left to the crash sweep, as a dead worker's are."""
        if self.worker is None or self.worker_id != here.worker_id:
            return
        for execution, steps in claimed:
            tenant_id, execution_id = execution["tenant_id"], execution["id"]
            job = Job(
                id=execution["job_id"],
                status=Status.DOING.value,
                queue=jobs.QUEUE,
                lock=jobs.lock(tenant_id, execution_id),
                queueing_lock=None,
                task_name=jobs.TASK,
                task_kwargs={"tenant_id": tenant_id, "execution_id": execution_id},
                worker_id=here.worker_id,
            )
            self.taken[execution["job_id"]] = (here.lease, (execution, steps))
            self.fetched.append(job)
        self.worker.new_jobs()

    async def unregister_worker(self, worker_id: int) -> None:
        """Put the jobs fetched but not handed out back in the queue (their executions,
        claimed, are taken over by whoever fetches them next: `queue.take`), then let
        procrastinate forget the worker."""
        while self.fetched:
            job = self.fetched.popleft()
            self.taken.pop(job.id or 0, None)
            await super().retry_job(job)
        self.worker_id = None
        await super().unregister_worker(worker_id)

    async def listen_for_jobs(
        self, *, on_notification: NotificationCallback, queues: Iterable[str] | None = None
    ) -> None:
        async def later(channel: str, notification: Notification) -> None:
            await asyncio.sleep(_OTHERS_WAKE_SECONDS)
            self._later = None
            self.wakes += 1
            await on_notification(channel=channel, notification=notification)

        async def counted(*, channel: str, notification: Notification) -> None:
            if notification["type"] == "job_inserted":
                if not self.my_turn(notification):
                    if self._later is None:
                        self._later = asyncio.create_task(later(channel, notification))
                    return
                self.wakes += 1
            await on_notification(channel=channel, notification=notification)

        try:
            await super().listen_for_jobs(on_notification=counted, queues=queues)
        finally:
            if self._later is not None:
                self._later.cancel()
                self._later = None

    async def fetch_job(self, queues: Iterable[str] | None, worker_id: int) -> Job | None:
        """The next job, its execution claimed: one fetched before if any waits, else the
        first of a new batch, one for each slot free (the one asking included).

        procrastinate's worker clears its wake once a fetch returns, so a wake that came
        while a fetch ran is lost with it: when that fetch could not see the run the wake
        announced (committed after its statement began) and found nothing, the run would
        wait for the worker's next poll, a second, with the worker idle. Such a fetch is
        made again."""
        if not self.fetched:
            if self._drained is not None:
                wakes, at = self._drained
                if wakes == self.wakes and _now() - at < _POLL_SECONDS / 2:
                    return None  # the last fetch, just now, found the queue empty
                self._drained = None
            batch = max(1, min(self._free(), _MAX_BATCH))
            while True:
                wakes = self.wakes
                fetched_at = _now()
                lease = lease_id()
                async with self.db.write_inline(single=True) as conn:
                    batched = await queue.fetch_and_take(
                        conn,
                        None if queues is None else list(queues),
                        worker_id,
                        lease,
                        now_ms(),
                        batch,
                    )
                if batched:
                    break
                if self.wakes == wakes:
                    self._drained = (wakes, fetched_at)
                    return None
            if len(batched) < batch:
                self._drained = (wakes, fetched_at)
            for row, taken in batched:
                job = Job.from_row(row)
                assert job.id is not None
                if taken is not None:
                    self.taken[job.id] = (lease, taken)
                self.fetched.append(job)
        self.in_hand += 1
        return self.fetched.popleft()

    async def finish_job(self, job: Job, status: Status, delete_job: bool) -> None:
        if not self._done(job):
            await super().finish_job(job, status, delete_job)

    async def retry_job(
        self,
        job: Job,
        retry_at: datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        lock: str | None = None,
    ) -> None:
        if not self._done(job):
            await super().retry_job(job, retry_at, priority, queue, lock)

    def _done(self, job: Job) -> bool:
        self.in_hand = max(0, self.in_hand - 1)
        self.taken.pop(job.id or 0, None)  # a job procrastinate did not run (it stopped)
        if job.id not in self.done:
            return False
        self.done.discard(job.id)
        return True


def _now() -> float:
    return asyncio.get_running_loop().time()


def _queue_pool(**kwargs: Any) -> AsyncConnectionPool:
    """procrastinate's pool, without the check it asks for at each checkout.

    The check is a round trip (an empty statement) before each of procrastinate's own:
    fetching a job, finishing it, a heartbeat. What it guards against is a connection
    the server dropped; when the server goes away, procrastinate's listener loses its
    connection too, the worker stops, and `_work_forever` starts it again on a new pool.
    Solder's own pools do without it for the same reason (`store/prepared.py`).

    It also waits 5 s at most for a connection, and for its first one when the worker
    starts (psycopg's default is 30 s for each: a worker that lost the database waited
    that long, twice, before it tried again; it now tries every `_MAX_RESTART_DELAY`
    plus 5 s).
    """
    kwargs["check"] = None
    kwargs["timeout"] = CONNECT_TIMEOUT  # as Solder's own pools (`store/database.py`)
    return _QueuePool(**kwargs)


class _QueuePool(AsyncConnectionPool):
    # psycopg's signature, which procrastinate calls with `wait=True` alone.
    async def open(self, wait: bool = False, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        await super().open(wait=wait, timeout=min(timeout, CONNECT_TIMEOUT))


async def _autocommit(conn: psycopg.AsyncConnection[Any]) -> None:
    # Each of procrastinate's statements is one call of its own SQL functions: in
    # autocommit it is one round trip, not three (BEGIN, the call, COMMIT).
    await conn.set_autocommit(True)


class Backlog:
    """Backpressure for the processes that accept runs on PostgreSQL: while
    `SOLDER_QUEUE_HIGH_WATER` runs already wait for a worker, accepting one more waits
    for the workers to take some, for at most _MAX_WAIT_SECONDS (then it is queued all
    the same: workers that are down do not stop the API).

    Without it the API, which is cheaper than a run, queued runs faster than workers ran
    them, and each job fetch, whose cost grows with the queue, made the workers slower
    still (bench/RESULTS.md, scenario 2). The queue is counted at most every
    _COUNT_SECONDS near the mark and every _QUIET_COUNT_SECONDS far below it, once for
    all the accepts meanwhile.
    """

    def __init__(self, db: Database, high_water: int) -> None:
        self.db = db
        self.high_water = high_water
        self._count: asyncio.Future[int] | None = None
        self._counted_at = 0.0
        self._last = 0

    async def room(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _MAX_WAIT_SECONDS
        while await self._waiting() >= self.high_water:
            if loop.time() >= deadline:
                return
            await asyncio.sleep(_COUNT_SECONDS)

    async def _waiting(self) -> int:
        loop = asyncio.get_running_loop()
        count = self._count
        fresh_for = _COUNT_SECONDS if 2 * self._last >= self.high_water else _QUIET_COUNT_SECONDS
        stale = loop.time() - self._counted_at >= fresh_for
        if count is None or (count.done() and (stale or count.exception() is not None)):
            self._counted_at = loop.time()
            count = self._count = asyncio.ensure_future(self._read())
        return await asyncio.shield(count)

    async def _read(self) -> int:
        # The database unreachable: `Unavailable`, and the accept is refused (503) after
        # this one look, as it is when the key's lookup is its first.
        async with self.db.read_inline() as conn:
            self._last = await jobs.waiting(conn, self.high_water)
        return self._last


class Waker:
    """Wakes the waiting workers of every process once runs are queued on PostgreSQL: a
    NOTIFY on the queue's channel (`jobs.wake`), which procrastinate's listener in each
    worker answers with fetches until the queue is empty.

    procrastinate's trigger sent one from inside every transaction that deferred a job.
    PostgreSQL holds its notification lock from a notifying transaction's commit until
    the commit is flushed to the WAL, so every accept committed after the one before
    (bench/RESULTS.md); migration 0012 dropped the trigger. The NOTIFY is now sent after
    the accept has committed, in a statement of its own. One is in flight at a time in a
    process: the runs queued meanwhile are announced by one more after it. A wake that
    is lost (the database unreachable, a crash) costs the runs at most the workers' poll,
    `_POLL_SECONDS`.

    Each wake names a turn, one more than the last (from a random start in each process):
    the live workers take turns to fetch at once (`_JobManager.my_turn`).
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._turn = random.randrange(1 << 30)
        self._sending: asyncio.Task[None] | None = None
        self._again = False

    def wake(self) -> None:
        if self._sending is not None:
            self._again = True
            return
        self._sending = asyncio.create_task(self._send(), name="solder-wake")

    async def stop(self) -> None:
        """Let the NOTIFY in flight, if any, be sent (the database is closed next)."""
        if self._sending is not None:
            await asyncio.shield(self._sending)

    async def _send(self) -> None:
        try:
            while True:
                self._again = False
                async with self.db.write_inline(single=True) as conn:
                    self._turn += 1
                    await jobs.wake(conn, self._turn)
                if not self._again:
                    return
        except Unavailable:
            log.debug("could not wake the workers: they find the runs at their poll")
        except Exception:
            log.exception("could not wake the workers: they find the runs at their poll")
        finally:
            self._sending = None


class QueueWorker:
    """A procrastinate worker running executions, with the sweeper that rescues crashed ones."""

    def __init__(
        self, db: Database, engine: Engine, settings: Settings, concurrency: int, waker: Waker
    ) -> None:
        self.db = db
        self.engine = engine
        self.waker = waker
        self.settings = settings
        self.concurrency = concurrency
        self.app = App(
            connector=PsycopgConnector(
                conninfo=db.libpq_url,
                min_size=1,
                max_size=concurrency + 3,  # finishing jobs, the listener, heartbeats
                kwargs={"connect_timeout": CONNECT_TIMEOUT},
                configure=_autocommit,
                pool_factory=_queue_pool,
            )
        )
        self.app.task(name=jobs.TASK, queue=jobs.QUEUE, retry=_RunAgain(), pass_context=True)(
            self.run_job
        )
        # A worker silent for two thirds of the timeout is presumed dead: by the crash
        # sweep, by procrastinate's own check, and by the wakes' turns (`dead_after`).
        self.app.job_manager = self.jobs = _JobManager(
            self.app.connector, db, concurrency, settings.worker_timeout_seconds * 2 / 3
        )
        engine.on_job_done = self.jobs.done.add
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._sweeps_failing = False
        # Where the walk for executions whose job was deleted stands (`jobs.walk`).
        self._walked = ""

    # The embedded dispatcher's interface: the API's `Waker` does the waking here.
    def notify(self, runs: int = 1) -> None:
        pass

    async def room(self) -> None:
        pass  # the queue is PostgreSQL's; API processes and workers scale apart

    async def quiet(self) -> None:
        pass  # PostgreSQL has no single writer for background writes to wait on

    def notify_at(self, wake_at: int) -> None:
        pass

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._work_forever(), name="solder-worker"),
            asyncio.create_task(self._sweep_forever(), name="solder-sweeper"),
        ]

    async def stop(self, grace_seconds: float) -> None:
        """Fetch no more jobs; let running ones finish for `grace_seconds`, then interrupt
        them (their jobs go back to the queue and resume after the last finished step)."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run_job(self, context: JobContext, tenant_id: str, execution_id: str) -> None:
        """The task: run the execution claimed under a new lease when its job was fetched
        (`_JobManager.fetch_job`), or claim it now if that claim found nothing.

        It finds nothing when the execution has ended, and also when the execution was
        committed after the fetch's statement began: procrastinate's fetch function,
        which sees the job, reads in a snapshot of its own, newer than the statement's.
        The claim here then sees it.
        """
        assert context.job is not None
        claimed = self.jobs.taken.pop(context.job.id or 0, None)
        taken: queue.Taken | None
        if claimed is not None:
            lease, taken = claimed
        else:
            lease = lease_id()
            async with self.db.write_inline(single=True) as conn:
                taken = await queue.take(conn, tenant_id, execution_id, lease, now_ms())
        if taken is None:
            return  # already finished (or erased): nothing to do
        await self.engine.run_or_fail(tenant_id, execution_id, lease, taken)

    async def sweep(self) -> int:
        """Requeue the jobs of dead workers (their executions `crashed`), and give any
        unfinished execution left without a job a new one; wake the workers for them.
        Returns how many it rescued."""
        timeout = self.settings.worker_timeout_seconds
        rescued = 0
        await self.jobs.see_peers()
        async with self.db.read() as conn:
            stalled = await jobs.stalled(conn, self.jobs.dead_after)
        for job_id, tenant_id, execution_id in stalled:
            async with self.db.write() as conn:
                if await jobs.retry(conn, job_id):
                    await queue.crash(conn, tenant_id, execution_id)
                    rescued += 1
                    log.warning(
                        "execution %s crashed with its worker; it resumes after its last "
                        "finished block",
                        execution_id,
                    )
        idle_since = now_ms() - int(timeout * 1000)
        async with self.db.read() as conn:
            ended = await jobs.orphans(conn, idle_since)
            walked, deleted = await jobs.walk(conn, self._walked, ORPHAN_WALK, idle_since)
        self._walked = walked or ""
        for tenant_id, execution_id in dict.fromkeys([*ended, *deleted]):
            async with self.db.write() as conn:
                if await queue.requeue_orphan(conn, tenant_id, execution_id):
                    rescued += 1
                    log.warning("execution %s had no job: queued it again", execution_id)
        if rescued:
            self.waker.wake()
        return rescued

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
                self._sweeps_failing = False
            except Unavailable:
                if not self._sweeps_failing:
                    log.warning("crash sweeps paused while the database is unavailable")
                self._sweeps_failing = True
            except Exception:
                log.exception("crash sweep failed")
            await asyncio.sleep(self.settings.worker_timeout_seconds / 6)

    async def _work_forever(self) -> None:
        """Run the procrastinate worker; when the database goes away it stops, so start it
        again (with backoff) until Solder stops."""
        delay = 0.5
        timeout = self.settings.worker_timeout_seconds
        name = f"{socket.gethostname()}:{os.getpid()}"
        while not self._stopping:
            try:
                async with self.app.open_async():
                    # `App.run_worker_async`, with Solder's worker for procrastinate's
                    worker = self.jobs.worker = _Worker(
                        app=self.app,
                        name=name,
                        concurrency=self.concurrency,
                        queues=[jobs.QUEUE],
                        install_signal_handlers=False,
                        shutdown_graceful_timeout=self.settings.shutdown_grace_seconds,
                        fetch_job_polling_interval=_POLL_SECONDS,
                        update_heartbeat_interval=timeout / 6,
                        stalled_worker_timeout=self.jobs.dead_after,
                        delete_jobs="successful",
                    )
                    try:
                        await worker.run()  # type: ignore[no-untyped-call]  # procrastinate's
                    finally:
                        self.jobs.worker = None
                delay = 0.5
                if not self._stopping:  # its heartbeat or listener lost the database
                    log.warning("the queue worker stopped; starting it again")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = str(exc.__cause__ or exc).strip()  # procrastinate wraps psycopg's
                log.warning(
                    "the queue worker stopped (%s); starting it again in %.1f s", reason, delay
                )
            if not self._stopping:
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_RESTART_DELAY)
