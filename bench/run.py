"""The benchmark suite: every scenario on SQLite and on PostgreSQL, one table of figures.

    .venv/bin/python bench/run.py [--scenario NAME|all] [--runs 3] [--run-seconds 60]

Scenarios, each on SQLite and, when a server answers at --postgres-url, on PostgreSQL:
1. logs read (logs_read.py, load from wrk: `apt-get install wrk`); 2. runs and 6. memory
(runs.py); 3. engine overhead (engine_overhead.py); 4. storage (storage.py); 5. retention
under load (retention_load.py, wrk too); 7. the insert ceiling (insert_ceiling.py), and the
write path alone against it (write_path.py). Their figures make one table; then the
scale-out benchmark (scale_out.py, PostgreSQL only) prints its own. Figures, machine and
commands are recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import engine_overhead
import insert_ceiling
import logs_read
import psycopg
import retention_load
import runs
import storage
import write_path
from common import elapsed, machine, require_wrk
from logs_dataset import Dataset
from rich.table import Table
from scale_out import BenchError, console

SCENARIOS = (
    "logs_read",
    "runs",
    "engine_overhead",
    "storage",
    "retention",
    "insert_ceiling",
    "scale_out",
)
COLUMNS = ("scenario", "backend", "figure", "value", "target", "met", "bare stack")

Row = tuple[str, str, str, str, str, str, str]


def postgres_reachable(url: str) -> bool:
    try:
        with psycopg.connect(f"{url.rstrip('/')}/postgres", connect_timeout=3):
            return True
    except psycopg.OperationalError as exc:
        console.print(f"[yellow]PostgreSQL at {url} is unreachable, skipped:[/yellow] {exc}")
        return False


def table(rows: list[Row]) -> Table:
    shown = Table(title="Solder benchmark (medians)")
    for column in COLUMNS:
        shown.add_column(column, overflow="fold")
    for n, row in enumerate(rows):
        if n and row[:2] != rows[n - 1][:2]:
            shown.add_section()
        shown.add_row(*row)
    return shown


def attempt(name: str, measure: Callable[[], None], failures: list[str]) -> None:
    """Run one scenario; a failure is reported and the others still run."""
    started = time.monotonic()
    try:
        measure()
    except BenchError as exc:
        console.print(f"[red]{name} failed:[/red] {exc}")
        failures.append(name)
    except psycopg.OperationalError as exc:
        console.print(f"[red]{name} failed, PostgreSQL unreachable:[/red] {exc}")
        failures.append(name)
    console.print(f"{name}: {elapsed(started)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=(*SCENARIOS, "all"), default="all")
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="logs read and storage: 1 is 1,000,000 + 100,000 logs; retention: 999,000 of "
        "them expired",
    )
    parser.add_argument("--runs", type=int, default=3, help="measurements of each figure")
    parser.add_argument("--seconds", type=float, default=10.0, help="logs read: a measurement")
    parser.add_argument(
        "--run-seconds", type=float, default=60.0, help="runs and memory: each load's length"
    )
    parser.add_argument(
        "--executions", type=int, default=50, help="engine overhead: executions per run"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="`solder worker` processes on PostgreSQL"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 1,
        help="runs: on SQLite, also with `solder serve --processes N` (1: one process only)",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("SOLDER_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432"),
        help="server to benchmark on too; its user must be allowed to create databases",
    )
    parser.add_argument("--sqlite-only", action="store_true", help="skip PostgreSQL")
    options = parser.parse_args()
    for line in machine():
        console.print(line)
    postgres = not options.sqlite_only and postgres_reachable(options.postgres_url)
    postgres_url = options.postgres_url if postgres else None
    chosen = SCENARIOS if options.scenario == "all" else (options.scenario,)
    rows: list[Row] = []
    notes: list[str] = []
    failures: list[str] = []

    if "logs_read" in chosen:
        dataset = Dataset(options.scale)

        def logs() -> None:
            require_wrk()
            results = logs_read.run(
                dataset, postgres_url, runs=options.runs, seconds=options.seconds
            )
            for measured in results:
                rows.extend(
                    ("1. logs read", measured.backend, *r) for r in logs_read.figures(measured)
                )
                notes.append(
                    f"{measured.backend}: logs data set generated in {measured.generation}"
                )
            notes.append(
                f"Logs read: {dataset.executions:,} executions ({dataset.workflows:,} workflows x "
                f"{dataset.users} users x {dataset.per_pair}, plus {dataset.big:,} on one pair); "
                f"{options.runs} runs of {options.seconds:g} s each, wrk -t2 -c16."
            )

        attempt("logs read", logs, failures)

    ran: dict[str, runs.Measured] = {}
    if "runs" in chosen:

        def load() -> None:
            for measured in runs.run(
                postgres_url,
                runs=options.runs,
                seconds=options.run_seconds,
                workers=options.workers,
                processes=options.processes,
            ):
                ran[measured.label] = measured

        attempt("runs and memory", load, failures)

    ceilings: dict[str, insert_ceiling.Measured] = {}
    alones: dict[str, write_path.Measured] = {}
    if "insert_ceiling" in chosen:

        def ceiling() -> None:
            for measured in insert_ceiling.run(postgres_url, runs=options.runs):
                ceilings[measured.backend] = measured
            for alone in write_path.run(postgres_url, runs=options.runs):
                alones[alone.backend] = alone

        attempt("insert ceiling", ceiling, failures)

    for label, measured in ran.items():
        base = measured.backend
        limit = ceilings[base].rate() if base in ceilings else None
        rows.extend((r[0], label, *r[1:]) for r in runs.figures(measured, limit))

    if "engine_overhead" in chosen:

        def overhead() -> None:
            for measured in engine_overhead.run(
                postgres_url,
                runs=options.runs,
                executions=options.executions,
                workers=options.workers,
            ):
                rows.extend(
                    (r[0], measured.backend, *r[1:]) for r in engine_overhead.figures(measured)
                )

        attempt("engine overhead", overhead, failures)

    if "storage" in chosen:

        def stored() -> None:
            for measured in storage.run(Dataset(options.scale), postgres_url):
                rows.extend(("4. storage", measured.backend, *r) for r in storage.figures(measured))
                notes.append(
                    f"{measured.backend}: storage data set generated in {measured.generation}"
                )
                notes.extend(storage.tables(measured))
            notes.extend(storage.scope_lines())

        attempt("storage", stored, failures)

    if "retention" in chosen:

        def retention() -> None:
            require_wrk()
            purged = Dataset(options.scale)
            for measured in retention_load.run(purged, postgres_url, runs=options.runs):
                rows.extend(
                    ("5. retention under load", measured.backend, *r)
                    for r in retention_load.figures(measured)
                )
                notes.append(
                    f"{measured.backend}: retention store generated in {measured.generation}"
                )
                notes.append(retention_load.timeline(measured))
            notes.append(
                f"Retention under load: {retention_load.expired(purged):,} expired executions "
                f"of {purged.executions:,}, purged by Solder's own sweep while wrk -t2 -c16 "
                f"reads the logs in {retention_load.WINDOW_SECONDS:g} s windows; "
                f"{options.runs} runs, each on a fresh copy of the store."
            )

        attempt("retention under load", retention, failures)

    for backend, writes in ceilings.items():
        # The write path at its best: with its processes, on SQLite.
        rates = [m.max_rate() for m in ran.values() if m.backend == backend]
        rate = max(rates) if rates else None
        alone = alones.get(backend)
        described = None if alone is None else (alone.rate(), alone.describe())
        rows.extend(
            (r[0], backend, *r[1:]) for r in insert_ceiling.figures(writes, rate, described)
        )

    if rows:
        console.print(table(rows))
        if "runs" in chosen or "engine_overhead" in chosen:
            notes.append(
                f"On PostgreSQL: solder serve --no-worker and {options.workers} solder worker "
                "processes; on SQLite: solder serve, and for the runs also solder serve "
                f"--processes {options.processes} (when more than 1). Runs' load: its own "
                "process."
            )
        for note in notes:
            console.print(note)
    status = 1 if failures else 0
    if "scale_out" in chosen and postgres:
        scale_out = Path(__file__).with_name("scale_out.py")
        command = [sys.executable, str(scale_out), "--postgres-url", options.postgres_url]
        status = subprocess.run(command, check=False).returncode or status
    return status


if __name__ == "__main__":
    sys.exit(main())
