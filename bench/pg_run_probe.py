"""What a run of scenario 2 costs on PostgreSQL: CPU by process, and the database's work.

    .venv/bin/python bench/pg_run_probe.py [--seconds 20] [--workers 2] [--rate R]
        [--prefill N] [--checkpoint-after S] [--sql STATEMENT]... [--setting NAME=VALUE]...
        [--postgres-url postgresql://postgres@127.0.0.1:5432]

Starts scenario 2's stack on PostgreSQL (`solder serve --no-worker` and `--workers`
`solder worker` processes, bench/common.py's `solder_stack`), warms it up, then runs a
closed loop of 32 clients for `--seconds` (or, with `--rate`, an open loop at that
rate). Per run accepted, over the load and the drain of its backlog: the CPU of each of
Solder's processes, of the loopback upstream the `http` block calls, and of all of
PostgreSQL's (the server's processes, found as the `postgres` user's; the VACUUM after
the load included), the transactions and rows of the benchmark's database
(`pg_stat_database`), each table's inserts, updates, deletes and scans
(`pg_stat_user_tables`), the WAL written (`pg_stat_wal`: the whole server's), and the
wakes the workers received (the notifications on their channel, counted by a listener
of the probe's own). A probe for bench/RESULTS.md, not part of `make bench`.

`--prefill N` copies N finished executions into the table first (ids drawn by the code
under test; a store of the issue's scale), `--checkpoint-after S` runs a CHECKPOINT
before the load and S seconds into it, and `--sql` runs statements of one's own on the
benchmark's database before the warm-up (a schema or settings change, tried before it
is written). `--setting` sets a `SOLDER_*` variable of the stack's processes: with
`--workers 0 --setting SOLDER_PROCESSES=2`, two serving processes, each with its worker;
with `--setting SOLDER_PROCESSES=2` alone, two API processes (`serve --no-worker
--processes 2`) and the workers.

With `--against REV --pairs N`: N pairs in turns, REV's tree (a temporary git work tree)
and this one, REV first in odd pairs and this tree in even ones, each pair the probe
run once from each tree; a table of each pair's runs a second (or p99 and p50 with
`--rate`), their ratio, and each one's CPU a run, WAL, commits and wakes a run. How two
versions of the code are compared on this shared machine, whose speed moves from one
minute to the next (bench/RESULTS.md).

`--statements` lists the statements that took the database's time, a run: their calls,
executor time, rows and buffer pages (`pg_stat_statements`, the top-level statements of
every connection to the benchmark's database, procrastinate's function calls as one
each). The server must have loaded the module at its start (`ALTER SYSTEM SET
shared_preload_libraries = 'pg_stat_statements'`, a restart; `RESET` and a restart
after): the probe says so, before it starts the stack, if it has not. One probe's, not
with `--against`. To see each statement in order instead, one run at a time: `ALTER
ROLE postgres SET log_statement = 'all'` before the stack starts (its connections take
it), and `RESET` after; the server's log then lists each statement with the connection's
process id.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
from common import ROOT, solder_stack, work_tree
from rich.console import Console
from rich.table import Table
from runs import CLIENTS, Bench, analyze_share, busy_share
from scale_out import cpu_seconds

from solder.store.jobs import CHANNEL

Stats = tuple[list[Any], dict[str, list[Any]], list[Any]]


def postgres_cpu() -> float:
    """CPU seconds of every process of the `postgres` user (the server and its backends)."""
    found = subprocess.run(["pgrep", "-u", "postgres"], capture_output=True, text=True, check=False)
    return sum(cpu_seconds(int(pid)) for pid in found.stdout.split())


def stats(url: str) -> Stats:
    with psycopg.connect(url, autocommit=True) as conn:
        database = conn.execute(
            "SELECT xact_commit, xact_rollback, tup_returned, tup_fetched, tup_inserted,"
            " tup_updated, tup_deleted FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        tables = {
            row[0]: list(row[1:])
            for row in conn.execute(
                "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del,"
                " coalesce(seq_scan, 0), coalesce(idx_scan, 0) FROM pg_stat_user_tables"
            )
        }
        wal = conn.execute("SELECT wal_records, wal_bytes FROM pg_stat_wal").fetchone()
    assert database is not None
    assert wal is not None
    return list(database), tables, list(wal)


def prefill(url: str, count: int) -> None:
    """`count` finished executions of a workflow nobody runs, copied in as a store of the
    issue's scale holds them (a log of 400 bytes each), their ids drawn by the code under
    test; then vacuumed and analyzed, as autovacuum would."""
    from solder.ids import execution_id, now_ms  # the tree's own (PYTHONPATH)

    log, started = os.urandom(400), now_ms() - 60_000
    columns = (
        "tenant_id, id, workflow_number, user_number, workflow_version, status, trigger_id,"
        " trigger_data, started_at, stopped_at, log, user_position, workflow_position"
    )
    with psycopg.connect(url, autocommit=True) as conn:
        with (
            conn.cursor() as cursor,
            cursor.copy(f"COPY executions ({columns}) FROM STDIN") as copy,
        ):
            for n in range(1, count + 1):
                user, position = divmod(n, 1000)
                copy.write_row(
                    (
                        "prefill",
                        execution_id(),
                        2_000_000_000,
                        user,
                        1,
                        "succeeded",
                        "trigger",
                        "{}",
                        started,
                        started + 50,
                        log,
                        position,
                        n,
                    )
                )
        conn.execute("VACUUM ANALYZE executions")


class WakeCounter(threading.Thread):
    """Counts the notifications on the workers' channel (`jobs.CHANNEL`) until stopped:
    the wakes the workers received."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute(f'LISTEN "{CHANNEL}"')
        self.count = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.count += sum(1 for _ in self.conn.notifies(timeout=0.2))

    def stop(self) -> int:
        self.stopping.set()
        self.join()
        self.conn.close()
        return self.count


class Statements:
    """What `pg_stat_statements` saw of the benchmark's database from `start` on."""

    HOW = (
        "--statements needs pg_stat_statements loaded at the server's start: ALTER SYSTEM SET"
        " shared_preload_libraries = 'pg_stat_statements', restart PostgreSQL, probe; then"
        " ALTER SYSTEM RESET shared_preload_libraries and restart it again"
    )

    @classmethod
    def check(cls, server_url: str) -> None:
        """Stop, saying how, if the server has not loaded the module."""
        with psycopg.connect(server_url, autocommit=True) as conn:
            loaded = conn.execute("SHOW shared_preload_libraries").fetchone()
        if loaded is None or "pg_stat_statements" not in str(loaded[0]):
            raise SystemExit(cls.HOW)

    def __init__(self, url: str) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        self.url = url

    def start(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_statements_reset()")

    def table(self, runs: int, top: int = 15) -> Table:
        with psycopg.connect(self.url, autocommit=True) as conn:
            found = conn.execute(
                "SELECT calls, total_exec_time + total_plan_time, rows, shared_blks_hit"
                " + shared_blks_read, query"
                " FROM pg_stat_statements"
                " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " ORDER BY 2 DESC"
            ).fetchall()
        total = sum(row[1] for row in found) or 1.0
        table = Table(
            "statement (pg_stat_statements)",
            "calls a run",
            "ms a run",
            "share",
            "rows a call",
            "pages a call",
        )
        for calls, ms, rows, pages, query in found[:top]:
            text = " ".join(str(query).split())
            table.add_row(
                text if len(text) <= 90 else text[:87] + "...",
                f"{calls / runs:.3f}",
                f"{ms / runs:.3f}",
                f"{ms / total:.0%}",
                f"{rows / calls:.1f}" if calls else "",
                f"{pages / calls:.1f}" if calls else "",
            )
        rest = found[top:]
        if rest:
            table.add_row(
                f"{len(rest)} others",
                f"{sum(row[0] for row in rest) / runs:.3f}",
                f"{sum(row[1] for row in rest) / runs:.3f}",
                f"{sum(row[1] for row in rest) / total:.0%}",
                "",
                "",
            )
        return table


def run_checkpoint(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=float, help="an open loop at this rate, not a closed one")
    parser.add_argument(
        "--serve-worker",
        action="store_true",
        help="`solder serve` runs a worker of its own beside the --workers ones",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("SOLDER_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432"),
    )
    parser.add_argument(
        "--prefill",
        type=int,
        default=0,
        metavar="N",
        help="N finished executions in the table before the load (ids of the tree's own kind)",
    )
    parser.add_argument(
        "--checkpoint-after",
        type=float,
        metavar="S",
        help="a CHECKPOINT S seconds into the load (and one before it)",
    )
    parser.add_argument(
        "--sql",
        action="append",
        default=[],
        metavar="STATEMENT",
        help="run on the benchmark's database before the warm-up (after --prefill): what a"
        " change of schema or settings would do, before writing it (repeatable)",
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a SOLDER_* setting of the stack's processes (repeatable), e.g."
        " SOLDER_PROCESSES=2 with --workers 0: two serving processes, each with its worker",
    )
    parser.add_argument(
        "--statements",
        action="store_true",
        help="the statements that took the database's time, a run (pg_stat_statements)",
    )
    parser.add_argument("--against", metavar="REV", help="pairs in turns: REV, then this tree")
    parser.add_argument("--pairs", type=int, default=4)
    options = parser.parse_args()
    console = Console()
    if options.statements:
        if options.against:
            parser.error("--statements shows one probe's statements: not with --against")
        Statements.check(options.postgres_url)
    if options.against:
        compare(console, options)
        return
    with (
        tempfile.TemporaryDirectory(prefix="solder-bench-probe-") as workdir,
        solder_stack(
            "PostgreSQL",
            options.postgres_url,
            Path(workdir),
            workers=options.workers,
            upstream=True,
            serve_worker=options.serve_worker,
            settings=dict(setting.split("=", 1) for setting in options.setting),
        ) as stack,
    ):
        bench = Bench(stack, Path(workdir))
        statements = Statements(stack.database_url) if options.statements else None
        if options.prefill:
            prefill(stack.database_url, options.prefill)
        if options.sql:
            with psycopg.connect(stack.database_url, autocommit=True) as conn:
                for statement in options.sql:
                    conn.execute(statement)
        bench.closed(3.0)
        checkpoint = None
        if options.checkpoint_after is not None:
            run_checkpoint(stack.database_url)
            checkpoint = threading.Timer(
                options.checkpoint_after, run_checkpoint, (stack.database_url,)
            )
            checkpoint.start()
        pids = stack.server_pids()
        if stack.upstream_pid is not None:
            pids["upstream (the benchmark's)"] = stack.upstream_pid
        solder_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        postgres_before, stats_before = postgres_cpu(), stats(stack.database_url)
        wakes = WakeCounter(stack.database_url)
        wakes.start()
        if statements is not None:
            statements.start()
        if options.rate:
            latency = bench.open(options.rate, options.seconds)
            runs, how = latency.executions, f"open loop at {options.rate:,.0f}/s"
            done = (
                f"p50 {latency.p50:.0f} ms, p99 {latency.p99:.0f} ms, slowest"
                f" {latency.worst:.0f} ms, {latency.over_500} over 500 ms; request scheduled"
                f" to sent p50 {latency.sent[0]:.0f} and p99 {latency.sent[1]:.0f} ms, to answer"
                f" p50 {latency.answered[0]:.0f} and p99 {latency.answered[1]:.0f} ms,"
                f" answer to finished p50 {latency.ran[0]:.0f} and p99 {latency.ran[1]:.0f}"
                " ms; slowest 10 s"
                " windows (start: p99): "
                + ", ".join(f"{at:.0f} s: {p99:.0f} ms" for at, p99 in latency.slowest)
                + f"; the machine {busy_share(latency.machine_cores)} busy"
                + analyze_share([latency])
            )
        else:
            window = bench.closed(options.seconds)
            runs, how = window.accepted, f"closed loop of {CLIENTS} clients"
            done = (
                f"{window.rate:,.0f} completed a second in the window, "
                f"{window.accepted / window.seconds:,.0f} accepted; the machine"
                f" {busy_share(window.machine_cores)} busy"
            )
        if checkpoint is not None:
            checkpoint.join()
        solder_cpu = {name: cpu_seconds(pid) - solder_before[name] for name, pid in pids.items()}
        postgres = postgres_cpu() - postgres_before
        stats_after = stats(stack.database_url)
        woken = wakes.stop()
        by_statement = None if statements is None else statements.table(runs)

    console.print(f"{how}, {options.seconds:.0f} s: {runs:,} runs; {done}")
    cpu = Table("process", "CPU a run accepted")
    for name, seconds in solder_cpu.items():
        cpu.add_row(name, f"{seconds * 1000 / runs:.2f} ms")
    cpu.add_row("PostgreSQL (all its processes)", f"{postgres * 1000 / runs:.2f} ms")
    console.print(cpu)
    names = ("commits", "rollbacks", "rows returned", "rows fetched", "inserts", "updates")
    deltas = [after - before for before, after in zip(stats_before[0], stats_after[0], strict=True)]
    console.print(
        "database, a run: "
        + ", ".join(
            f"{name} {delta / runs:.2f}" for name, delta in zip(names, deltas, strict=False)
        )
        + f", deletes {deltas[6] / runs:.2f}; the workers' wakes {woken / runs:.2f}"
    )
    tables = Table(
        "table", "inserts", "updates", "of which HOT", "deletes", "seq scans", "index scans"
    )
    for name in sorted(stats_after[1]):
        before = stats_before[1].get(name, [0] * 6)
        changed = [after - was for was, after in zip(before, stats_after[1][name], strict=True)]
        if any(changed):
            tables.add_row(name, *(f"{value / runs:.2f}" for value in changed))
    console.print(tables)
    records, size = (
        after - before for before, after in zip(stats_before[2], stats_after[2], strict=True)
    )
    console.print(
        f"WAL a run (whole server): {records / runs:.1f} records, {float(size) / runs:,.0f} bytes"
    )
    if by_statement is not None:
        console.print(by_statement)


class Probed(NamedTuple):
    """What `probe_in` read from one probe's output."""

    figure: float  # runs a second (closed loop) or p99 ms (`--rate`)
    p50: float  # ms (`--rate`; NaN for a closed loop)
    cpu: list[float]  # ms a run: the API, the workers together, PostgreSQL
    wal: str  # bytes a run
    commits_wakes: str  # commits and the workers' wakes a run


def probe_in(tree: Path, options: argparse.Namespace) -> Probed:
    """This probe run on `tree`'s code (this tree's probe, `tree`'s package)."""
    args = ["--seconds", str(options.seconds), "--workers", str(options.workers)]
    args += ["--postgres-url", options.postgres_url, "--prefill", str(options.prefill)]
    if options.rate:
        args += ["--rate", str(options.rate)]
    if options.serve_worker:
        args.append("--serve-worker")
    if options.checkpoint_after is not None:
        args += ["--checkpoint-after", str(options.checkpoint_after)]
    for statement in options.sql:
        args += ["--sql", statement]
    for setting in options.setting:
        args += ["--setting", setting]
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "200"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "pg_run_probe.py"), *args],
        cwd=tree,  # `python -m solder` then imports that tree's package
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    figure = re.search(r"p99 ([\d,]+) ms" if options.rate else r"([\d,]+) completed a second", out)
    if figure is None:
        raise SystemExit(f"the probe in {tree} printed no figure:\n{out}")
    cpu = {"API": 0.0, "worker": 0.0, "PostgreSQL": 0.0}
    # `solder serve` and its processes (`--workers 0`) are the API's column.
    for name, ms in re.findall(
        r"│ (API|solder serve|process|worker|PostgreSQL)[^│]*│ ([\d.]+) ms", out
    ):
        cpu["API" if name in ("solder serve", "process") else name] += float(ms)
    wal = re.search(r"WAL a run \(whole server\): [\d.]+ records, ([\d,]+) bytes", out)
    commits = re.search(r"database, a run: commits ([\d.]+)", out)
    woken = re.search(r"the workers' wakes ([\d.]+)", out)
    p50 = re.search(r"p50 ([\d,]+) ms, p99", out)
    if options.rate and p50 is None:
        raise SystemExit(f"the probe in {tree} printed no p50:\n{out}")
    return Probed(
        float(figure.group(1).replace(",", "")),
        float(p50.group(1).replace(",", "")) if p50 else math.nan,
        list(cpu.values()),
        wal.group(1) if wal else "?",
        f"{commits.group(1) if commits else '?'}, {woken.group(1) if woken else '?'}",
    )


def compare(console: Console, options: argparse.Namespace) -> None:
    figure = "p99 ms" if options.rate else "runs/s"
    table = Table(
        "pair",
        figure,
        "after ÷ before",
        *(["p50 ms"] if options.rate else []),
        "API ms a run",
        "workers",
        "PostgreSQL",
        "WAL bytes",
        "commits, wakes",
    )
    with work_tree(options.against) as before:
        for pair in range(1, options.pairs + 1):
            # In turns, as read_cpu_probe.py: REV first in odd pairs, this tree in even ones.
            first = "this tree" if pair % 2 == 0 else options.against
            console.print(f"pair {pair} of {options.pairs}: {first} first")
            if pair % 2 == 0:
                new = probe_in(ROOT, options)
                old = probe_in(before, options)
            else:
                old = probe_in(before, options)
                new = probe_in(ROOT, options)
            table.add_row(
                str(pair),
                f"{old.figure:,.0f} → {new.figure:,.0f}",
                f"{new.figure / old.figure:.2f}",
                *([f"{old.p50:.0f} → {new.p50:.0f}"] if options.rate else []),
                *(f"{was:.2f} → {now:.2f}" for was, now in zip(old.cpu, new.cpu, strict=True)),
                f"{old.wal} → {new.wal}",
                f"{old.commits_wakes} → {new.commits_wakes}",
            )
            console.print(f"pair {pair}: {old.figure:,.0f} → {new.figure:,.0f}")
    console.print(table)


if __name__ == "__main__":
    main()
