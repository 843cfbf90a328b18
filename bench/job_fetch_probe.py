"""What a job's life costs PostgreSQL's backend, alone: deferred, fetched and deleted as
Solder's runs do it, in two comparisons, rounds in turns (bench/RESULTS.md, "Where
PostgreSQL's time goes, statement by statement").

    .venv/bin/python bench/job_fetch_probe.py [--compare index|last-call] [--jobs 10000]
        [--batch 4] [--rounds 8] [--postgres-url postgresql://postgres@127.0.0.1:5432]

A scratch database migrated by Solder (`solder migrate`), dropped after. Each round
defers `--batch` jobs at a time (one INSERT, as the accepting statement inserts them),
fetches them in one statement of the shape of `store/jobs.FETCHED` (procrastinate's
`procrastinate_fetch_job_v2` called once a job in a recursive CTE), deletes each in a
statement of its own (as a run's end does), and VACUUMs the queue every 1,200 jobs; the
backend's CPU (its /proc stat, 10 ms ticks) over `--jobs` jobs.

- `--compare index`: the whole life, a job, with procrastinate's `queue_name` index and
  without it (every job writes it twice; nothing of Solder's reads it).
- `--compare last-call`: the fetch alone, a job, asking for exactly `--batch` jobs
  (`--batch` calls of the function) or for 16 (one call more, which finds none and ends
  the recursion), as a fetch does when fewer jobs wait than it has slots.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager

import psycopg
from common import postgres_database
from rich.console import Console
from rich.table import Table

DEFER = (
    "INSERT INTO procrastinate_jobs"
    " (queue_name, task_name, priority, lock, queueing_lock, args, scheduled_at)"
    " SELECT 'executions', 'probe', 0, 'execution:probe:' || %(at)s || ':' || g, NULL,"
    " jsonb_build_object('n', g), NULL FROM generate_series(1, %(count)s) AS g"
)
FETCH = (
    "WITH RECURSIVE calls (n, job) AS (SELECT 1, procrastinate_fetch_job_v2(NULL, %(worker)s)"
    " WHERE set_config('synchronous_commit', 'off', true) = 'off'"
    " UNION ALL SELECT n + 1, procrastinate_fetch_job_v2(NULL, %(worker)s) FROM calls"
    " WHERE n < %(batch)s AND (job).id IS NOT NULL)"
    " SELECT (job).id FROM calls WHERE (job).id IS NOT NULL"
)
DELETE = "DELETE FROM procrastinate_jobs WHERE id = %s AND status = 'doing'"
VACUUM_EVERY = 1_200
WITH_INDEX = (
    "CREATE INDEX IF NOT EXISTS procrastinate_jobs_queue_name_idx_v1"
    " ON procrastinate_jobs (queue_name)"
)
WITHOUT_INDEX = "DROP INDEX IF EXISTS procrastinate_jobs_queue_name_idx_v1"


def backend_cpu(pid: int) -> float:
    """CPU seconds of a backend process (user and system)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lives(url: str, jobs: int, size: int, fetch_batch: int, fetch_only: bool) -> float:
    """µs of the backend's CPU a job: its whole life, or its fetch alone."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        worker = conn.execute(
            "INSERT INTO procrastinate_workers DEFAULT VALUES RETURNING id"
        ).fetchone()
        assert row is not None
        assert worker is not None
        pid, spent, done = row[0], 0.0, 0
        started = backend_cpu(pid)
        while done < jobs:
            conn.execute(DEFER, {"at": done, "count": size})
            before = backend_cpu(pid)
            fetched = conn.execute(FETCH, {"worker": worker[0], "batch": fetch_batch}).fetchall()
            spent += backend_cpu(pid) - before
            if len(fetched) != size:
                raise SystemExit(f"fetched {len(fetched)} jobs of {size}")
            for (job,) in fetched:
                conn.execute(DELETE, (job,))
            done += size
            if done % VACUUM_EVERY < size:
                conn.execute("VACUUM procrastinate_jobs")
        conn.execute("DELETE FROM procrastinate_workers WHERE id = %s", (worker[0],))
        whole = backend_cpu(pid) - started
    return (spent if fetch_only else whole) / done * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", choices=("index", "last-call"), default="index")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("SOLDER_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432"),
    )
    options = parser.parse_args()
    if not 1 <= options.batch <= 15:
        parser.error("--batch is 1 to 15: a fetch asks for 16 at most")
    console = Console()
    database: AbstractContextManager[str] = postgres_database(
        options.postgres_url, "solder_job_fetch_probe"
    )
    with database as url:
        subprocess.run(
            [sys.executable, "-m", "solder", "migrate"],
            env={**os.environ, "SOLDER_DATABASE_URL": url},
            check=True,
            capture_output=True,
        )

        def life(index: bool) -> Callable[[], float]:
            def run() -> float:
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(WITH_INDEX if index else WITHOUT_INDEX)
                return lives(url, options.jobs, options.batch, 16, fetch_only=False)

            return run

        def fetch(batch: int) -> Callable[[], float]:
            return lambda: lives(url, options.jobs, options.batch, batch, fetch_only=True)

        variants: dict[str, Callable[[], float]] = (
            {"with the queue_name index": life(True), "without it": life(False)}
            if options.compare == "index"
            else {
                f"fetch asking for {options.batch}": fetch(options.batch),
                "fetch asking for 16 (one call more)": fetch(16),
            }
        )
        names = list(variants)
        found: dict[str, list[float]] = {name: [] for name in names}
        for n in range(options.rounds):
            for name in names if n % 2 == 0 else names[::-1]:
                found[name].append(variants[name]())
                console.print(f"round {n + 1}: {name}: {found[name][-1]:.1f} µs a job")
    what = "the whole life" if options.compare == "index" else "the fetch"
    table = Table("variant", f"µs of {what} a job (median)", "each round")
    for name in names:
        table.add_row(
            name,
            f"{statistics.median(found[name]):.1f}",
            ", ".join(f"{value:.0f}" for value in found[name]),
        )
    ratios = [b / a for a, b in zip(found[names[0]], found[names[1]], strict=True)]
    console.print(table)
    console.print(
        f"{names[1]} ÷ {names[0]}, round by round: "
        + ", ".join(f"{ratio:.2f}" for ratio in ratios)
        + f" (median {statistics.median(ratios):.2f}); {options.jobs:,} jobs a round,"
        f" {options.batch} at a time"
    )


if __name__ == "__main__":
    main()
