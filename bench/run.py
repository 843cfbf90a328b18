"""The benchmark suite: every scenario on SQLite and on PostgreSQL, one table of figures.

    .venv/bin/python bench/run.py [--scenario logs_read|scale_out|all] [--scale 0.1]

Scenario 1, logs read (logs_read.py), runs on SQLite and, when a server answers at
--postgres-url, on PostgreSQL; then the scale-out benchmark (scale_out.py, PostgreSQL
only) prints its own table. The load generator is wrk (Debian: `apt-get install wrk`).
Figures, machine and commands are recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import logs_read
import psycopg
from common import machine, require_wrk
from logs_dataset import Dataset
from rich.table import Table
from scale_out import BenchError, console

SCENARIOS = ("logs_read", "scale_out")


def postgres_reachable(url: str) -> bool:
    try:
        with psycopg.connect(f"{url.rstrip('/')}/postgres", connect_timeout=3):
            return True
    except psycopg.OperationalError as exc:
        console.print(f"[yellow]PostgreSQL at {url} is unreachable, skipped:[/yellow] {exc}")
        return False


def logs_read_table(results: list[logs_read.Measured]) -> Table:
    table = Table(title="Solder benchmark: logs read (medians)")
    for column in ("scenario", "backend", "figure", "value", "target", "met", "bare stack"):
        table.add_column(column, overflow="fold")
    for measured in results:
        for row in logs_read.figures(measured):
            table.add_row("1. logs read", measured.backend, *row)
        table.add_section()
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=(*SCENARIOS, "all"), default="all")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="data set size: 1 is 1,000,000 + 100,000 logs"
    )
    parser.add_argument("--runs", type=int, default=3, help="measurements of each figure")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of a measurement")
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
    status = 0
    if options.scenario in ("logs_read", "all"):
        dataset = Dataset(options.scale)
        try:
            require_wrk()
            results = logs_read.run(
                dataset,
                options.postgres_url if postgres else None,
                runs=options.runs,
                seconds=options.seconds,
            )
        except BenchError as exc:
            console.print(f"[red]logs read failed:[/red] {exc}")
            return 1
        console.print(logs_read_table(results))
        console.print(
            f"Data set: {dataset.executions:,} executions ({dataset.workflows:,} workflows x "
            f"{dataset.users} users x {dataset.per_pair}, plus {dataset.big:,} on one pair); "
            f"{options.runs} runs of {options.seconds:g} s each, wrk -t2 -c16."
        )
        for measured in results:
            console.print(f"{measured.backend}: data set generated in {measured.generation}")
    if options.scenario in ("scale_out", "all") and postgres:
        scale_out = Path(__file__).with_name("scale_out.py")
        command = [sys.executable, str(scale_out), "--postgres-url", options.postgres_url]
        status = subprocess.run(command, check=False).returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
