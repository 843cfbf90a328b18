"""Compaction: each tenant's log dictionary trained when it is due, its stored logs
brought onto it, and the dictionaries no stored log needs any more deleted.

Every `SOLDER_COMPACTION_SWEEP_SECONDS` the sweep, for each tenant:

1. **Trains** its first dictionary once it has `MIN_LOGS` logs, and later a new one when
   its newest is a week old (then weekly), on a random sample of its stored logs
   (`SAMPLE_LOGS`, `SAMPLE_STRETCH` at a time from random places in its workflows'
   histories). A new dictionary is kept only if it stores the sample's held-out
   eighth at least a tenth smaller than the tenant's current one (or the built-in
   skeleton) does: the tenant's logs are rewritten only when that pays. The training
   runs in a child process (solder/training.py says why).
2. **Recompresses**, once every writer has switched to a new dictionary (`SETTLE_MS`),
   every stored log of the tenant that is not on it: workflow by workflow through the
   workflow logs index, in batches of `BATCH`, read and recompressed in a child process
   (solder/recompressing.py says why), and written here `WRITE_ROWS` at a time, each in
   its own short transaction followed by a pause nine times as long as it took (waiting
   for the write lock included): the sweep holds at most a tenth of the database's
   writes, and backs off further the busier they are, so runs and reads keep their
   latency; in a server on SQLite each write also waits, for at most `YIELD_SECONDS`,
   until no accepted run waits for a worker. Each rewritten row also drops the trigger
   its log already holds.
3. **Deletes** the tenant's older dictionaries that no stored log needs, checked in the
   deleting transaction; one still needed is looked at again a day later.

`solder compact` runs the same sweep at once, at full speed (docs/cli.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import itertools
import logging
import pickle
import random
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any

from solder import children, dictionaries, recompressing, training
from solder.errors import Unavailable
from solder.ids import now_ms
from solder.settings import Settings
from solder.store import codec
from solder.store import queries as q
from solder.store.database import Database
from solder.store.prepared import INTEGRITY_ERRORS

log = logging.getLogger("solder.compaction")

MIN_LOGS = 1_000
SAMPLE_LOGS = 4_000
SAMPLE_CHUNK = 250
SAMPLE_STRETCH = 25
BETTER = 0.9  # a new dictionary must store the held-out logs in 90 % of the size or less
RETRAIN_MS = 7 * 86_400_000
RECHECK_MS = 86_400_000
# Writers learn of a new dictionary within dictionaries.REFRESH_SECONDS; recompressing
# starts well after, so that no writer is still on the old one.
SETTLE_MS = 60_000
BATCH = 500
# Rows rewritten a transaction, and the share of the write lock the paced sweep may hold
# (SQLite has one writer at a time). With batches of 500 written whole and paused as long
# as they took, scenario 2's open loop waited behind them: the rewrites of 70,000 logs
# held the lock 27 % of the time for 27 s, on top of the runs' own writes, and the
# p99 rose to seconds (bench/RESULTS.md).
WRITE_ROWS = 100
WRITE_SHARE = 0.1
# Before each write the paced sweep also waits until no run waits for a worker (the
# embedded dispatcher's queue), for at most YIELD_SECONDS: under a constant stream of
# runs it still goes on, at a percent of the writes.
YIELD_SECONDS = 1.0
# PostgreSQL: one process sweeps at a time (pg_try_advisory_lock); "solder" + 1.
_SWEEP_LOCK = 0x736F6C646572 + 1

OnBatch = Callable[[int], None]


@dataclass
class Swept:
    """What one sweep did."""

    busy: bool = False
    """PostgreSQL: another process was sweeping; this one did nothing."""
    trained: int = 0
    recompressed: int = 0
    deleted: int = 0
    unreadable: int = 0


def _stretches(workflows: Sequence[tuple[int, int, int]]) -> Iterator[tuple[int, int, int]]:
    """Places to read `SAMPLE_STRETCH` logs from, endlessly: (workflow number, position,
    how many), the workflow drawn by its share of the logs (`workflows`: number, how many,
    last position), the position among its logs. Positions above the highest deleted are
    all there, so a workflow's logs are about its last positions (retention deletes the
    oldest first)."""
    weights = list(itertools.accumulate(count for _, count, _ in workflows))
    while True:
        for number, count, last in random.choices(workflows, cum_weights=weights, k=64):
            yield number, last - count + 1 + random.randrange(count), SAMPLE_STRETCH


class Compaction:
    """Trains, recompresses and deletes log dictionaries (see the module's docstring)."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        min_logs: int = MIN_LOGS,
        sample_logs: int = SAMPLE_LOGS,
        settle_ms: int = SETTLE_MS,
        switch_seconds: float = dictionaries.STALE_SECONDS + 1,
        quiet: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.min_logs = min_logs
        self.sample_logs = sample_logs
        self.settle_ms = settle_ms
        self.switch_seconds = switch_seconds
        """By hand: how long until no process writes with an older dictionary."""
        self.quiet = quiet
        """Returns once no run waits for a worker in this process (the paced writes wait
        for it)."""
        self._task: asyncio.Task[None] | None = None
        # Tenants whose first dictionary did not pay, and when: not tried again for a week.
        self._declined: dict[str, int] = {}

    def start(self) -> None:
        self._task = asyncio.create_task(self._sweep_forever(), name="solder-compaction")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def sweep(
        self,
        *,
        by_hand: bool = False,
        retrain: bool = False,
        tenant_ids: Sequence[str] | None = None,
        on_batch: OnBatch | None = None,
    ) -> Swept:
        """One sweep over every tenant (or `tenant_ids`).

        The background sweep waits after each batch as long as it took, and leaves a new
        dictionary to settle until its next sweep. `by_hand` (`solder compact`) goes at
        full speed: after training it waits only for running servers to switch, and it
        tries at once to delete the dictionaries no log needs. `retrain` trains a new
        dictionary for each tenant with enough logs and keeps it whatever it saves: the
        old ones are then deleted, and what they learned from erased logs with them.
        """
        swept = Swept()
        if not self.settings.log_dictionaries:
            return swept
        async with self.db.try_lock(_SWEEP_LOCK) as alone:
            if not alone:
                swept.busy = True
                return swept
            if tenant_ids is None:
                async with self.db.read() as conn:
                    tenant_ids = await q.tenant_ids(conn)
            for tenant_id in tenant_ids:
                await self._tenant(
                    tenant_id, swept, by_hand=by_hand, retrain=retrain, on_batch=on_batch
                )
        return swept

    async def _tenant(
        self,
        tenant_id: str,
        swept: Swept,
        *,
        by_hand: bool,
        retrain: bool,
        on_batch: OnBatch | None,
    ) -> None:
        rows = await self._dictionaries(tenant_id)
        now = now_ms()
        due = retrain or self._training_due(tenant_id, rows[-1] if rows else None, now)
        if due and await self._train(tenant_id, rows, keep=retrain):
            swept.trained += 1
            rows = await self._dictionaries(tenant_id)
        if not rows:
            return
        newest = rows[-1]
        if newest["compacted_at"] is None:
            if not by_hand and newest["created_at"] > now_ms() - self.settle_ms:
                return  # writers may still be on the older one: the next sweep
            # By hand: until no process writes with an older one (dictionaries.STALE_SECONDS).
            switched = newest["created_at"] + self.switch_seconds * 1000 - now_ms()
            await asyncio.sleep(max(switched, 0) / 1000)
            await self._compact(tenant_id, rows, swept, paced=not by_hand, on_batch=on_batch)
            async with self.db.write() as conn:
                await q.update_dictionary(conn, tenant_id, newest["id"], compacted_at=now_ms())
        for older in rows[:-1]:
            checked = older["checked_at"]
            if by_hand or checked is None or checked <= now_ms() - RECHECK_MS:
                swept.deleted += await self._delete_unless_used(tenant_id, older["id"])

    def _training_due(self, tenant_id: str, newest: Mapping[str, Any] | None, now: int) -> bool:
        if newest is None:
            return self._declined.get(tenant_id, 0) <= now - RETRAIN_MS
        last: int = newest["checked_at"] or newest["created_at"]
        return last <= now - RETRAIN_MS

    async def _dictionaries(self, tenant_id: str) -> list[dict[str, Any]]:
        async with self.db.read() as conn:
            return [dict(row) for row in await q.tenant_dictionaries(conn, tenant_id)]

    async def _train(self, tenant_id: str, rows: list[dict[str, Any]], *, keep: bool) -> bool:
        """Train a candidate on a sample of the tenant's logs; store it if it pays (or if
        `keep`). Whether it was stored."""
        async with self.db.read() as conn:
            if await q.count_executions(conn, tenant_id) < self.min_logs:
                return False
        request = training.Request(
            dictionaries={row["id"]: bytes(row["content"]) for row in rows},
            current=rows[-1]["id"] if rows else None,
        )
        try:
            # Closed however the training ends: the sample holds its read transaction
            # open between chunks, and a child that ended early left it open until the
            # garbage collector found the sample (on PostgreSQL a session idle in a
            # transaction, holding back vacuum; its connection given back to a pool
            # maybe disposed by then, and never closed).
            async with contextlib.aclosing(self._sample(tenant_id)) as sample:
                result = await train_apart(request, sample)
        finally:
            # The sample's pages passed through this process's heap: give back those
            # freed whole (bench/RESULTS.md, scenario 6).
            await asyncio.to_thread(give_back_freed_memory)
        if result.readable < self.min_logs:
            return False
        if isinstance(result, training.Untrainable):
            log.warning(
                "no log dictionary could be trained for tenant %s: %s", tenant_id, result.reason
            )
            self._declined[tenant_id] = now_ms()
            return False
        content, before, after = result.content, result.before, result.after
        trained_on = result.trained_on
        if not keep and after > before * BETTER:
            log.info(
                "tenant %s: a new log dictionary would store logs in %.0f bytes instead of "
                "%.0f; kept the current one",
                tenant_id,
                after,
                before,
            )
            if rows:
                async with self.db.write() as conn:
                    await q.update_dictionary(conn, tenant_id, rows[-1]["id"], checked_at=now_ms())
            else:
                self._declined[tenant_id] = now_ms()
            return False
        try:
            async with self.db.write() as conn:
                new_id = await q.insert_dictionary(
                    conn, tenant_id, content=content, samples=trained_on, created_at=now_ms()
                )
        except INTEGRITY_ERRORS:
            return False  # another process trained one at the same moment; it stays
        log.info(
            "tenant %s: log dictionary %d trained on %d logs: %.0f bytes a log, was %.0f",
            tenant_id,
            new_id,
            trained_on,
            after,
            before,
        )
        return True

    async def _sample(self, tenant_id: str) -> AsyncGenerator[list[bytes], None]:
        """A sample of the tenant's stored logs (all of them if it has no more),
        up to `SAMPLE_CHUNK` at a time: the sample goes to the training process without this
        one ever holding all of it (the C heap would keep the pages it took:
        bench/RESULTS.md, scenario 6).

        A sample is `SAMPLE_STRETCH` logs at a time from a random place in the history of
        a workflow drawn by its share of the tenant's logs: every log is about as likely
        to be in it, read through an index by its position in its workflow's logs pages
        (`log_listings`). Execution ids begin with their time: a range of them would be a
        stretch of time, not a sample (docs/decisions.md)."""
        # One read transaction: a connection checked out for each of some 170 stretches
        # took twice as long, and a statement for each still cost 2 ms of SQLAlchemy's
        # async access to SQLite (bench/RESULTS.md, "Now: execution ids that begin with
        # their time"): a statement reads a chunk's worth of stretches.
        async with self.db.read() as conn:
            workflows = await q.logs_by_workflow(conn, tenant_id)
            total = sum(count for _, count, _ in workflows)
            if total <= self.sample_logs:
                # All of them: each workflow's logs from its first on.
                for number, _, _ in workflows:
                    start = 0
                    while True:
                        logs = await q.sample_stretches(conn, [(number, start, SAMPLE_CHUNK)])
                        if logs:
                            yield [stored for _, _, stored in logs]
                        if len(logs) < SAMPLE_CHUNK:
                            break  # the workflow's last log
                        start = max(position for _, position, _ in logs) + 1
                return
            left = self.sample_logs
            seen: set[tuple[int, int]] = set()  # stretches may overlap: (workflow, position)
            places = _stretches(workflows)
            for _ in range(4 * -(-left // SAMPLE_CHUNK)):
                batch = list(itertools.islice(places, SAMPLE_CHUNK // SAMPLE_STRETCH))
                chunk: list[bytes] = []
                for number, position, stored in await q.sample_stretches(conn, batch):
                    if (number, position) not in seen and len(chunk) < left:
                        seen.add((number, position))
                        chunk.append(stored)
                left -= len(chunk)
                if chunk:
                    yield chunk
                if left == 0:
                    return

    async def _compact(
        self,
        tenant_id: str,
        rows: list[dict[str, Any]],
        swept: Swept,
        *,
        paced: bool,
        on_batch: OnBatch | None,
    ) -> None:
        """Recompress every stored log of the tenant that is not on its newest dictionary:
        read and recompressed in a child process (solder/recompressing.py says why),
        written here `WRITE_ROWS` at a time, each in a transaction of its own; `paced`,
        each followed by a pause (`WRITE_SHARE`)."""
        request = recompressing.Request(
            database_url=self.settings.database_url,
            tenant_id=tenant_id,
            dictionaries={row["id"]: bytes(row["content"]) for row in rows},
            current=rows[-1]["id"],
            batch=BATCH,
        )
        try:
            async with recompressing.apart(request) as batches:
                while True:
                    batch = await anext(batches, None)
                    if batch is None:
                        break
                    for start in range(0, len(batch.rewritten), WRITE_ROWS):
                        chunk = batch.rewritten[start : start + WRITE_ROWS]
                        if paced:
                            await self._yield_to_runs()
                        started = time.monotonic()
                        async with self.db.write() as conn:
                            await q.rewrite_logs(conn, tenant_id, chunk)
                        took = time.monotonic() - started
                        await asyncio.sleep(took * (1 / WRITE_SHARE - 1) if paced else 0)
                    for execution_id in batch.unreadable:
                        log.error(
                            "the stored log of execution %s cannot be read: left as it is",
                            execution_id,
                        )
                    swept.recompressed += len(batch.rewritten)
                    swept.unreadable += len(batch.unreadable)
                    if on_batch is not None:
                        on_batch(batch.read)
        finally:
            # The pages the writes took in the C heap, freed whole (scenario 6).
            await asyncio.to_thread(give_back_freed_memory)

    async def _yield_to_runs(self) -> None:
        """Wait while runs wait for a worker, for at most `YIELD_SECONDS`."""
        if self.quiet is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.quiet(), YIELD_SECONDS)

    async def _delete_unless_used(self, tenant_id: str, dictionary_id: int) -> int:
        """Delete an older dictionary of the tenant if no stored log needs it.

        No process writes with it any more (the newest is older than
        `dictionaries.STALE_SECONDS`, and its compaction is over), so the logs that need
        it are all stored already: reading them (a read transaction: on SQLite, writers
        do not wait for the scan) says whether it can go.
        """
        async with self.db.read() as conn:
            used = await q.dictionary_used(conn, tenant_id, codec.prefix(dictionary_id))
        async with self.db.write() as conn:
            if used:
                await q.update_dictionary(conn, tenant_id, dictionary_id, checked_at=now_ms())
                return 0
            await q.delete_dictionary(conn, tenant_id, dictionary_id)
        log.info("tenant %s: log dictionary %d deleted", tenant_id, dictionary_id)
        return 1

    async def _sweep_forever(self) -> None:
        while True:
            try:
                swept = await self.sweep()
                if swept.recompressed or swept.deleted:
                    log.info(
                        "recompressed %d logs, deleted %d log dictionaries",
                        swept.recompressed,
                        swept.deleted,
                    )
            except Unavailable:
                log.warning("compaction sweep skipped: the database is unavailable")
            except Exception:
                log.exception("compaction sweep failed")
            await asyncio.sleep(self.settings.compaction_sweep_seconds)


class TrainingFailed(Exception):
    """The training child ended without an answer."""


async def train_apart(
    request: training.Request, sample: AsyncIterable[Sequence[bytes]]
) -> training.Trained | training.Untrainable:
    """`training.handle` in a child process (solder/training.py says why), on the stored
    logs `sample` yields, sent to it as they come."""
    started = await children.start("solder.training")
    child = started.process
    answer = asyncio.ensure_future(started.stdout.read())
    complaint = asyncio.ensure_future(started.stderr.read())
    try:
        try:
            await _send(started.stdin, request)
            async for logs in sample:
                await _send(started.stdin, list(logs))
            await _send(started.stdin, None)  # the end of the sample
            started.stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the child ended early: its status and message say why
        out, err = await answer, await complaint
        await child.wait()
    except BaseException:  # cancelled (the server stops): the child goes too
        answer.cancel()
        complaint.cancel()
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()
        raise
    if child.returncode != 0:
        raise TrainingFailed(children.ended("training", child.returncode, err))
    result = pickle.loads(out)  # noqa: S301 (the answer of our own child process)
    if not isinstance(result, training.Trained | training.Untrainable):
        raise TrainingFailed(f"the training process answered a {type(result).__name__}")
    return result


async def _send(pipe: asyncio.StreamWriter, message: object) -> None:
    pipe.write(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))
    await pipe.drain()


@functools.cache
def _malloc_trim() -> Any:
    """glibc's `malloc_trim`, or None where the C library has none (musl, macOS)."""
    return getattr(ctypes.CDLL(None), "malloc_trim", None)


def give_back_freed_memory() -> None:
    """Return the C heap's free pages to the system, where the C library can (glibc)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
