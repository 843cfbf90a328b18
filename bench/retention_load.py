"""Scenario 5, retention under load: purging expired executions while logs are read.

The store is scenario 1's data set (logs_dataset.py) with every execution moved 20 years
back except those of the two workflows logs_read.py reads (workflow 0, whose ordinary
pair it reads, and the big one): at scale 1, 999,000 expired executions among
1,100,000. `solder serve` starts on it with a 10-year retention, so its first sweep
(at start, in batches of 500) purges them at once; on PostgreSQL `solder serve
--no-worker` and one `solder worker`, which runs retention there. Meanwhile wrk (-t2
-c16) loads scenario 1's ordinary pair, limit=10, in consecutive 5 s windows until the
sweep is over (the last window may outlast it by up to 5 s), and a separate connection
polls every 0.5 s how many expired executions are left, from their workflows' rows in
`log_listings` (a count of the rows themselves reads every execution: it is made once
before the purge and once after, when it must find none).

Figures: the p99 of the worst and of the median window and the rate, beside a window of
the same store before the purge (a server that keeps everything); the purge's duration
(from the last count that saw every expired execution to the first that saw none, so
within 0.5 s) and rate; the space. SQLite: the file's size before and after, once
checkpointed, and its free pages (the sweep's incremental vacuum leaves up to 1,024).
PostgreSQL: autovacuum is off on this machine's server, so once the worker has purged
the bench runs the VACUUM autovacuum would, timed and still under the load; VACUUM
makes the space reusable in place (pg_freespacemap's free space), it does not shrink
`executions`' total size.

The purge is held while the processes start (the tenant's retention set to 40 years,
then back to the server's once they answer): a process starting takes a core for a
second or two, which is not the purge's cost. The windows begin as it is released.

Each run starts from a copy of the store, generated once: SQLite, a copy of the file
cached under bench/.data; PostgreSQL, a CREATE DATABASE ... TEMPLATE of a database
filled with COPY. Every figure is the median of `runs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from common import Load, elapsed, postgres_database, settle, wrk
from logs_dataset import (
    EXECUTION_COLUMNS,
    FIRST_SECOND,
    Dataset,
    Edit,
    Row,
    create_api_key,
    generate_postgres,
    workflow_number,
)
from logs_dataset import VERSION as DATASET_VERSION
from logs_read import WARM_UP_SECONDS, meets, progress, requests, serving, solder_env
from logs_read import sqlite_dataset as cached_sqlite
from rich.progress import Progress
from scale_out import SOLDER, BenchError, Process, wait_until

from solder.retention import DAY_MS, RESERVE_PAGES

VERSION = 1  # of the aged store: change it whenever `aged` changes, so caches are rebuilt
AGE_MS = 20 * 365 * DAY_MS
# Expired: started 20 years ago; kept: started in 2024 (logs_dataset), for 10 years.
RETENTION = {"SOLDER_LOG_RETENTION_DAYS": "3650", "SOLDER_RETENTION_SWEEP_SECONDS": "1"}
OLDEST_KEPT_MS = FIRST_SECOND * 1000
COUNT = "SELECT count(*) FROM executions WHERE started_at < ?"
# What the watcher polls: the executions left in the expired workflows' listings, read
# from their rows in `log_listings` (kept in the purge's own transactions). COUNT reads
# every execution (no index holds the start time since migration 0009): 36 to 65 ms of
# PostgreSQL every 0.5 s, beside the reads it measures. It is run before the purge and
# once after.
LEFT = (
    "SELECT coalesce(sum(last_position - deleted), 0) FROM log_listings"
    " WHERE user_number = 0 AND workflow_number NOT IN (?, ?)"
)
SWEPT = "execution logs past retention"  # the sweep's "purged N ..." line
WORKER_STARTED = "started: running executions from the queue"  # `solder worker`'s line
# The tenant's retention while the processes start: 40 years, so nothing has expired
# until the windows begin (then it inherits the server's 10 years again).
HELD_MS = 40 * 365 * DAY_MS
WINDOW_SECONDS = 5.0
POLL_SECONDS = 0.5
TIMEOUT = 3600.0
MAX_P99_MS = 50.0
TEMPLATE = "solder_bench_retention_template"
DATABASE = "solder_bench_retention"
WORKFLOW, STARTED, STOPPED = (
    EXECUTION_COLUMNS.index(column) for column in ("workflow_number", "started_at", "stopped_at")
)

Db = sqlite3.Connection | psycopg.Connection[tuple[Any, ...]]


@dataclass(frozen=True)
class Run:
    baseline: Load  # a window before the purge
    windows: list[Load]  # during the purge
    purge_seconds: float
    reclaim_seconds: float  # SQLite: the sweep's incremental vacuum; PostgreSQL: VACUUM
    size_before: int  # bytes: SQLite the file, PostgreSQL executions' total relation size
    size_after: int
    free_after: int  # SQLite: free pages; PostgreSQL: free bytes in executions' heap
    heap_after: int  # PostgreSQL: executions' heap (main fork) in bytes; SQLite 0


@dataclass
class Measured:
    backend: str
    dataset: Dataset
    generation: str
    runs: list[Run] = field(default_factory=list)

    def median(self, figure: Callable[[Run], float]) -> float:
        return statistics.median(figure(run) for run in self.runs)


def expired(dataset: Dataset) -> int:
    """Executions purged: all but those of workflow 0 and of the big workflow."""
    return (dataset.workflows - 1) * dataset.users * dataset.per_pair


def kept_workflows(dataset: Dataset) -> tuple[int, int]:
    """The numbers of the workflows whose executions stay (logs_read.py reads them)."""
    return workflow_number(0), workflow_number(dataset.workflows)


def aged(dataset: Dataset) -> Edit:
    kept = set(kept_workflows(dataset))

    def edit(row: Row) -> Row:
        if row[WORKFLOW] in kept:
            return row
        moved = list(row)
        moved[STARTED] -= AGE_MS
        moved[STOPPED] -= AGE_MS
        return tuple(moved)

    return edit


def connect(url: str) -> Db:
    if url.startswith("sqlite:///"):
        return sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    return psycopg.connect(url, autocommit=True)


def execute(db: Db, sql: str, *params: Any) -> Any:
    """Run `sql`, written with `?` placeholders, on either database; its cursor."""
    if isinstance(db, sqlite3.Connection):
        return db.execute(sql, params)
    return db.execute(sql.replace("?", "%s"), params)


def scalar(db: Db, sql: str, *params: Any) -> int:
    row = execute(db, sql, *params).fetchone()
    assert row is not None
    return int(row[0])


def hold(url: str, retention_ms: int | None) -> None:
    """Set the bench tenant's retention (None: the server's)."""
    with contextlib.closing(connect(url)) as db:
        execute(db, "UPDATE tenants SET retention_ms = ?", retention_ms)


def space(url: str) -> tuple[int, int, int]:
    """The store's size, its free space and (PostgreSQL) heap: see `Run`."""
    with contextlib.closing(connect(url)) as db:
        if isinstance(db, sqlite3.Connection):
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            free = scalar(db, "PRAGMA freelist_count")
            return Path(url.removeprefix("sqlite:///")).stat().st_size, free, 0
        size = scalar(db, "SELECT pg_total_relation_size('executions')")
        heap = scalar(db, "SELECT pg_relation_size('executions')")
        try:
            free = scalar(db, "SELECT coalesce(sum(avail), 0) FROM pg_freespace('executions')")
        except psycopg.Error:  # pg_freespacemap is a contrib extension: maybe missing
            free = -1
        return size, free, heap


def watch(
    url: str,
    dataset: Dataset,
    swept: Callable[[], bool],
    stop: threading.Event,
    bar: Progress,
) -> tuple[float, float]:
    """Wait until the expired executions are purged and the sweep is over, then on
    PostgreSQL VACUUM as autovacuum would: how long the purge and reclaiming took."""
    total = expired(dataset)
    kept = kept_workflows(dataset)
    task = bar.add_task("purging", total=total)
    with contextlib.closing(connect(url)) as db:
        full = purged = time.monotonic()
        left = total
        while left:
            if stop.wait(POLL_SECONDS):
                return 0.0, 0.0
            purged = time.monotonic()
            counted = scalar(db, LEFT, *kept)
            if counted == total:
                full = purged
            bar.advance(task, left - counted)
            left = counted
        while not swept():
            if stop.wait(POLL_SECONDS):
                return 0.0, 0.0
        if isinstance(db, sqlite3.Connection):
            return purged - full, time.monotonic() - purged
        started = time.monotonic()
        db.execute("VACUUM executions, steps")
        return purged - full, time.monotonic() - started


def one_run(backend: str, url: str, workdir: Path, dataset: Dataset) -> Run:
    sqlite = backend == "SQLite"
    key = asyncio.run(create_api_key(url))
    headers = {"Authorization": f"bearer {key}", "x-api-version": "2025-09"}
    path = next(request.path for request in requests(dataset) if request.key == "ordinary10")
    (workdir / "before").mkdir()
    with serving(url, workdir / "before", sqlite=sqlite) as (base, _pid):
        wrk(base + path, headers, WARM_UP_SECONDS)
        baseline = wrk(base + path, headers, WINDOW_SECONDS)
    total = expired(dataset)
    with contextlib.closing(connect(url)) as db:
        if (found := scalar(db, COUNT, OLDEST_KEPT_MS)) != total:
            raise BenchError(
                f"the store holds {found:,} expired executions, not {total:,}: delete "
                "bench/.data/retention-* and rerun"
            )
    size_before = space(url)[0]
    (purging := workdir / "purge").mkdir()
    log = purging / ("serve.log" if sqlite else "worker.log")
    windows: list[Load] = []
    stop = threading.Event()
    with progress() as bar, ThreadPoolExecutor(1) as pool, contextlib.ExitStack() as stack:
        stack.callback(stop.set)

        def said() -> str:
            return log.read_text(errors="replace") if log.exists() else ""

        # The processes start with the purge held (a process starting takes a core for a
        # second or two, which is not the purge's cost); it begins with the windows.
        hold(url, HELD_MS)
        base, _pid = stack.enter_context(serving(url, purging, sqlite=sqlite, **RETENTION))
        worker = None
        if not sqlite:
            env = solder_env(url, purging, **RETENTION)
            worker = Process.start("solder worker", [*SOLDER, "worker"], env, log)
            stack.callback(worker.stop)
            wait_until(lambda: WORKER_STARTED in said(), "solder worker", worker.process)
        watcher = pool.submit(watch, url, dataset, lambda: SWEPT in said(), stop, bar)
        hold(url, None)
        deadline = time.monotonic() + TIMEOUT
        while not windows or not watcher.done():
            windows.append(wrk(base + path, headers, WINDOW_SECONDS))
            if "retention sweep failed" in said() or (worker and not worker.alive()):
                tail = "\n".join(said().splitlines()[-30:])
                raise BenchError(f"the retention sweep failed; {log.name} says:\n{tail}")
            if time.monotonic() > deadline:
                raise BenchError(
                    f"the purge did not end within {TIMEOUT:g} s: see {log.name}, or rerun "
                    "with a smaller --scale"
                )
        purge_seconds, reclaim_seconds = watcher.result()
    with contextlib.closing(connect(url)) as db:
        if left := scalar(db, COUNT, OLDEST_KEPT_MS):
            raise BenchError(f"the listings say every expired execution is gone; {left:,} are left")
    return Run(baseline, windows, purge_seconds, reclaim_seconds, size_before, *space(url))


def run(dataset: Dataset, postgres_url: str | None, *, runs: int) -> list[Measured]:
    """Measure on SQLite, then on PostgreSQL when `postgres_url` is given."""
    name = f"retention-v{VERSION}-logs-v{DATASET_VERSION}-scale{dataset.scale:g}"
    cached, generation = cached_sqlite(dataset, name, aged(dataset))
    results = [Measured("SQLite", dataset, generation)]
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="solder-bench-") as workdir:
            copy = Path(workdir) / "solder.db"
            shutil.copyfile(cached, copy)
            settle()
            results[0].runs.append(one_run("SQLite", f"sqlite:///{copy}", Path(workdir), dataset))
    if postgres_url is None:
        return results
    with postgres_database(postgres_url, TEMPLATE) as template:
        started = time.monotonic()
        with progress() as bar:
            task = bar.add_task("PostgreSQL: generating executions", total=dataset.executions)
            generate_postgres(template, dataset, lambda n: bar.advance(task, n), aged(dataset))
        with psycopg.connect(template, autocommit=True) as db, contextlib.suppress(psycopg.Error):
            db.execute("CREATE EXTENSION IF NOT EXISTS pg_freespacemap")
        results.append(Measured("PostgreSQL", dataset, elapsed(started)))
        for _ in range(runs):
            with (
                postgres_database(postgres_url, DATABASE, TEMPLATE) as url,
                tempfile.TemporaryDirectory(prefix="solder-bench-") as workdir,
            ):
                settle(url)  # the copy is written to the WAL and the buffers
                results[1].runs.append(one_run("PostgreSQL", url, Path(workdir), dataset))
    return results


def figures(measured: Measured) -> list[tuple[str, str, str, str, str]]:
    """Table rows: figure, value, target, met, bare-stack reference."""
    m, n = measured, expired(measured.dataset)
    runs = f"median of {len(m.runs)} runs" if len(m.runs) > 1 else "1 run"
    worst = m.median(lambda r: max(w.p99_ms for w in r.windows))
    typical = m.median(lambda r: statistics.median(w.p99_ms for w in r.windows))
    windows = m.median(lambda r: len(r.windows))
    errors = m.median(lambda r: sum(w.errors for w in r.windows))
    rate = m.median(lambda r: statistics.median(w.rate for w in r.windows))
    purge = m.median(lambda r: r.purge_seconds)
    reclaim = m.median(lambda r: r.reclaim_seconds)
    before, after = m.median(lambda r: r.size_before), m.median(lambda r: r.size_after)
    free = m.median(lambda r: r.free_after)
    kept = 1 - n / m.dataset.executions
    rows = [
        (
            f"logs read p99 during the purge, worst {WINDOW_SECONDS:g} s window ({runs})",
            f"{worst:.1f} ms (median window {typical:.1f} ms, {windows:g} windows"
            + (f", {errors:g} socket errors" if errors else "")
            + f"; before the purge {m.median(lambda r: r.baseline.p99_ms):.1f} ms)",
            f"p99 ≤ {MAX_P99_MS:g} ms",
            meets(worst <= MAX_P99_MS, MAX_P99_MS / worst),
            "",
        ),
        (
            "logs read rate during the purge (median window)",
            f"{rate:,.0f} req/s (before the purge {m.median(lambda r: r.baseline.rate):,.0f})",
            "",
            "",
            "",
        ),
        (
            f"purge of {n:,} expired executions (of {m.dataset.executions:,})",
            f"{purge:.1f} s, {n / max(purge, 0.001):,.0f} executions/s",
            "",
            "",
            "",
        ),
    ]
    mb = f"{before / 1e6:,.0f} → {after / 1e6:,.0f} MB"
    if m.backend == "SQLite":
        met = after < before and free <= RESERVE_PAGES
        rows.append(
            (
                "space after the sweep (file, incremental vacuum)",
                f"{mb} ({after / before:.0%}; {kept:.0%} of the rows kept), {free:,.0f} free "
                f"pages; the vacuum took {reclaim:.1f} s under the load",
                f"file shrinks, ≤ {RESERVE_PAGES:,} free pages",
                meets(met, 0),
                "",
            )
        )
    else:
        heap = m.median(lambda r: r.heap_after)
        found = f"{free / 1e6:,.0f} of its {heap / 1e6:,.0f} MB heap free" if free >= 0 else ""
        met = free >= 0.8 * (1 - kept) * heap
        rows.append(
            (
                "space after VACUUM (executions, total size)",
                f"{mb}; {found or 'free space unknown (no pg_freespacemap)'}, reusable by "
                f"new rows; VACUUM took {reclaim:.1f} s under the load (autovacuum off here)",
                "expired rows' space reusable",
                meets(met, 0) if found else "",
                "",
            )
        )
    return rows


def timeline(measured: Measured) -> str:
    """Each run's windows' p99 in order, to see whether the worst came while purging or
    while reclaiming the space."""
    runs = "; ".join(
        ", ".join(f"{window.p99_ms:.0f}" for window in run.windows)
        + f" (purge {run.purge_seconds:.0f} s, then reclaiming {run.reclaim_seconds:.0f} s)"
        for run in measured.runs
    )
    return f"{measured.backend}: retention, each {WINDOW_SECONDS:g} s window's p99 (ms): {runs}"
