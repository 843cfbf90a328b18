"""The plans PostgreSQL runs for the statements that read `executions`, under two sets of
the table's statistics: as Solder's migrations leave them, and PostgreSQL's defaults.

    .venv/bin/python bench/plan_probe.py [--scale 1] [--calls 40] [--keep]
        [--postgres-url postgresql://postgres@127.0.0.1:5432] [--log PATH]

Builds the logs-read data set of scenario 1 (at scale 1: 1,000 workflows x 100 users
with 10 executions each, and one pair with 100,000; bench/logs_dataset.py) in a
database of its own, `solder_bench_plans` (kept with `--keep`, and reused by a later
`--keep` run at the same scale). Then, for each set of statistics (every column's target
set, then every table analyzed), with `auto_explain` logging the plan of every statement
of the database's new sessions:

- `solder serve` with its worker answers `--calls` times each of: the twelve shapes of
  a logs page (newest or oldest first, of one user or of all, the first page, a page at
  an offset on a page of the middle and by cursor), on an ordinary pair and on the big
  one; the failed executions and the analytics of both; a rerun; runs of a workflow of
  its own (the accept, the claims, each block's step, the end);
- the retention sweep's, the compaction's and a user's erasure's statements, called
  from here (`solder.store.queries`) in transactions rolled back: the store stays as it
  was for the other set.

The plans are read back from the server's log (`--log`; by default
`pg_current_logfile()` or Debian's `/var/log/postgresql/postgresql-<version>-main.log`,
which the probe must be allowed to read; each entry's prefix ending with `%u@%d `, as
Debian's does) and compared statement by statement by their shape: each node's type,
relation, index, direction, join and strategy; not its estimates. Also timed: `ANALYZE
executions` on the idle store under each set (the median of five). A probe for
bench/RESULTS.md (a change of the statistics, migration 0015), not part of `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
from common import install, postgres_database, settle
from logs_dataset import Dataset, bench_tenant, create_api_key, generate_postgres
from logs_dataset import user_id as user_ref
from logs_dataset import workflow_id as workflow_ref
from logs_read import deep_page, progress, solder_env
from rich.table import Table
from scale_out import SOLDER, Process, answers_http, console, free_port, wait_until
from sqlalchemy.ext.asyncio import create_async_engine

from solder.ids import now_ms
from solder.store import queries as q
from solder.store.database import Database

DATABASE = "solder_bench_plans"
WEEK_MS = 7 * 86_400_000
SHAPE_KEYS = (
    "Node Type",
    "Parent Relationship",
    "Subplan Name",
    "CTE Name",
    "Relation Name",
    "Index Name",
    "Scan Direction",
    "Join Type",
    "Strategy",
)
OWN = "/* the probe's own */"  # marks the probe's statements, left out of the report
LOG_ENTRY = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
RUNS = {
    "name": "Plans probe",
    "trigger": {"type": "webhook"},
    "blocks": [
        {"name": "one", "connector": "transform", "config": {"expression": "{{ trigger.n + 1 }}"}},
        {"name": "two", "connector": "transform", "config": {"expression": "{{ blocks.one * 2 }}"}},
    ],
}


@dataclass
class Plans:
    """What one set of statistics gave: each statement's plan shapes and how often."""

    label: str
    analyze_ms: float = 0.0
    shapes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))


def shape(node: dict[str, Any], depth: int = 0) -> Iterator[str]:
    words = [str(node[key]) for key in SHAPE_KEYS if key in node]
    yield "  " * depth + " ".join(words)
    for child in node.get("Plans", []):
        yield from shape(child, depth + 1)


def reads_executions(node: dict[str, Any]) -> bool:
    return node.get("Relation Name") == "executions" or any(
        reads_executions(child) for child in node.get("Plans", [])
    )


def logged_plans(log: Path, offset: int) -> Iterator[dict[str, Any]]:
    """auto_explain's JSON plans of the probe's database, logged past `offset` (each
    entry's first line as Debian's `log_line_prefix` writes it: `%m [%p] %q%u@%d `)."""
    with log.open("rb") as file:
        file.seek(offset)
        lines = file.read().decode(errors="replace").splitlines()
    entry: list[str] | None = None
    for line in [*lines, "0000-00-00 00:00:00 (the end)"]:
        if LOG_ENTRY.match(line):
            if entry:
                yield json.loads("\n".join(entry))
            ours = f"@{DATABASE} LOG:" in line and line.rstrip().endswith("plan:")
            entry = [] if ours else None
        elif entry is not None:
            entry.append(line.removeprefix("\t"))


def server_log(admin: psycopg.Connection[Any], given: str | None) -> Path:
    if given:
        return Path(given)
    current = admin.execute("SELECT pg_current_logfile()").fetchone()
    if current and current[0]:
        directory = admin.execute("SHOW data_directory").fetchone()
        assert directory is not None
        return Path(str(directory[0])) / str(current[0])
    version = admin.execute("SHOW server_version_num").fetchone()
    assert version is not None
    return Path(f"/var/log/postgresql/postgresql-{int(version[0]) // 10000}-main.log")


def targets(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT attname, attstattarget FROM pg_attribute WHERE attrelid ="
            " 'executions'::regclass AND attnum > 0 AND NOT attisdropped"
        ).fetchall()
    return {name: -1 if target is None else int(target) for name, target in rows}


def migrated_targets(admin_url: str) -> dict[str, int]:
    """Each column's statistics target as Solder's migrations leave it: read from a new
    database they build (the probe's own may have been left otherwise)."""
    with postgres_database(admin_url, f"{DATABASE}_schema") as url:
        Database(url).migrate()
        return targets(url)


def set_targets(url: str, wanted: dict[str, int]) -> float:
    """Set each column's statistics target, ANALYZE every table (the queue's plans
    follow its own statistics, left as the last set's runs made them otherwise): the
    median of five ANALYZEs of `executions`, ms."""
    changes = ", ".join(f'ALTER COLUMN "{n}" SET STATISTICS {t}' for n, t in wanted.items())
    took = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE executions {changes}")
        conn.execute("VACUUM ANALYZE")
        for _ in range(5):
            started = time.perf_counter()
            conn.execute("ANALYZE executions")
            took.append((time.perf_counter() - started) * 1000)
    return statistics.median(took)


def explaining(admin: psycopg.Connection[Any], on: bool) -> None:
    """auto_explain for every statement of the probe's database's new sessions."""
    if on:
        for setting in (
            "session_preload_libraries = 'auto_explain'",
            "auto_explain.log_min_duration = 0",
            "auto_explain.log_format = 'json'",
        ):
            admin.execute(f"ALTER DATABASE {DATABASE} SET {setting}")
    else:
        admin.execute(f"ALTER DATABASE {DATABASE} RESET ALL")


def drive_api(url: str, workdir: Path, dataset: Dataset, calls: int) -> None:
    """Every logs page shape, the failed executions, the analytics, a rerun and runs,
    each `calls` times, through `solder serve` with its worker."""
    headers = {"Authorization": f"bearer {asyncio.run(create_api_key(url))}"}
    headers["x-api-version"] = "2025-09"
    env = solder_env(url, workdir)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = Process.start(
        "solder serve", [*SOLDER, "serve", "--port", str(port)], env, workdir / "serve.log"
    )
    try:
        wait_until(lambda: answers_http(f"{base}/health"), "solder serve", server.process)
        with httpx.Client(base_url=base, headers=headers, timeout=60) as api:
            paths = []
            for workflow, user, depth in (
                (workflow_ref(0), user_ref(1), 5),
                (workflow_ref(dataset.workflows), user_ref(0), deep_page(dataset)),
            ):
                for by_user in (True, False):
                    logs = f"/workflows/{workflow}/logs?limit=10"
                    logs += f"&userId={user}" if by_user else ""
                    for order in ("desc", "asc"):
                        paths += [f"{logs}&order={order}", f"{logs}&order={order}&page={depth}"]
                        page = api.get(f"{logs}&order={order}&page={depth // 2}").json()
                        if page.get("nextCursor"):
                            paths.append(f"{logs}&cursor={quote(page['nextCursor'])}")
                    errors = f"/workflows/{workflow}/errors" + (
                        f"?userId={user}" if by_user else ""
                    )
                    paths += [errors, errors.replace("/errors", "/analytics")]
            newest = api.get(f"/workflows/{workflow_ref(0)}/logs?userId={user_ref(1)}").json()
            rerun = f"/workflows/{workflow_ref(0)}/rerun/{newest['data'][0]['executionId']}"
            stamp = time.time_ns()  # each set's user and workflow new
            definition = {**RUNS, "name": f"Plans probe {stamp}"}
            user, flow = install(base, headers, f"plans-probe-{stamp}", definition)
            with progress() as bar:
                task = bar.add_task("requests", total=calls * (len(paths) + 2))
                for _ in range(calls):
                    for path in paths:
                        answer = api.get(path)
                        if answer.status_code != 200:
                            raise SystemExit(
                                f"GET {path}: {answer.status_code} {answer.text[:300]}"
                            )
                        bar.advance(task)
                    api.post(rerun)
                    bar.advance(task)
                    body = {"workflowId": flow, "userId": user, "data": {"n": 1}}
                    api.post("/run/workflow", json=body)
                    bar.advance(task)
            deadline = time.monotonic() + 60
            with psycopg.connect(url) as conn:
                while conn.execute(
                    f"SELECT count(*) FROM executions WHERE status IN ('queued', 'running') {OWN}"
                ).fetchone() != (0,):
                    if time.monotonic() > deadline:
                        raise SystemExit("runs still pending after 60 s: see serve.log")
                    time.sleep(0.2)
    finally:
        server.stop()


async def drive_sweeps(url: str, dataset: Dataset, calls: int) -> None:
    """The retention sweep's, the compaction's and an erasure's statements, `calls`
    times each, in transactions rolled back."""
    engine = create_async_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    tenant = (await bench_tenant(url)).id
    big, ordinary = workflow_ref(dataset.workflows), workflow_ref(0)
    try:
        for _ in range(calls):
            async with engine.connect() as conn:
                await q.expired_workflows(conn, now_ms(), WEEK_MS)
                for workflow in (big, ordinary):
                    _, after = await q.purge_workflow_executions(
                        conn, tenant, workflow, now_ms() - WEEK_MS, 0, 500
                    )
                    if after:
                        await q.purge_workflow_executions(
                            conn, tenant, workflow, now_ms() - WEEK_MS, after, 500
                        )
                listed = await q.logs_by_workflow(conn, tenant)
                stretches = [(number, last // 2 + 1, 20) for number, _, last in listed[:8]]
                await q.sample_stretches(conn, stretches)
                await q.logs_to_compact(conn, tenant, big, 0, b"\x00\x01", 100)
                await q.dictionary_used(conn, tenant, b"\x00\x01")
                await q.any_execution(conn, tenant, ordinary)
                await q.erase_user_logs(conn, tenant, user_ref(1))
                await conn.rollback()
        async with engine.connect() as conn:
            await q.count_expired(conn, now_ms(), WEEK_MS)
            await conn.rollback()
    finally:
        await engine.dispose()


def capture(
    admin: psycopg.Connection[Any], log: Path, url: str, dataset: Dataset, calls: int, plans: Plans
) -> None:
    explaining(admin, True)
    offset = log.stat().st_size
    try:
        with tempfile.TemporaryDirectory(prefix="solder-bench-") as workdir:
            drive_api(url, Path(workdir), dataset, calls)
        asyncio.run(drive_sweeps(url, dataset, calls))
    finally:
        explaining(admin, False)
    found = 0
    for logged in logged_plans(log, offset):
        found += 1
        if reads_executions(logged["Plan"]) and OWN not in logged["Query Text"]:
            text = " ".join(logged["Query Text"].split())
            drawn = "\n".join(shape(logged["Plan"]))
            plans.shapes[text][drawn] += 1
    if not found:
        raise SystemExit(
            f"no plan of {DATABASE} in {log} past byte {offset:,}: pass the server's log as "
            "--log; its log_line_prefix must end with '%u@%d ' (Debian's: '%m [%p] %q%u@%d ')"
        )


def report(first: Plans, second: Plans) -> int:
    table = Table(title="Plans of the statements that read executions")
    table.add_column("statement", no_wrap=True, max_width=80, overflow="ellipsis")
    table.add_column(f"{first.label}: calls, plans", justify="right")
    table.add_column(f"{second.label}: calls, plans", justify="right")
    table.add_column("the same plans")
    differing = []
    for text in sorted(set(first.shapes) | set(second.shapes)):
        a, b = first.shapes.get(text, Counter()), second.shapes.get(text, Counter())
        same = set(a) == set(b)
        if not same:
            differing.append((text, a, b))
        table.add_row(
            text,
            f"{sum(a.values())}, {len(a)}",
            f"{sum(b.values())}, {len(b)}",
            "yes" if same else "[bold red]no[/]",
        )
    console.print(table)
    for text, a, b in differing:
        console.print(f"\n[bold]{text}[/]")
        for label, found in ((first.label, a), (second.label, b)):
            for drawn, count in found.items():
                console.print(f"-- {label}, {count} calls:\n{drawn}")
    console.print(
        f"\n{len(set(first.shapes) | set(second.shapes))} statements read executions; "
        f"{len(differing)} planned otherwise. ANALYZE executions on the idle store: "
        f"{first.label} {first.analyze_ms:.0f} ms, {second.label} {second.analyze_ms:.0f} ms "
        "(the median of five)"
    )
    return 1 if differing else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--keep", action="store_true", help="keep the database, reuse it")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--log", help="the PostgreSQL server's log file")
    args = parser.parse_args()
    dataset = Dataset(args.scale)
    admin_url = args.postgres_url.rstrip("/")
    url = f"{admin_url}/{DATABASE}"
    with psycopg.connect(f"{admin_url}/postgres", autocommit=True) as admin:
        log = server_log(admin, args.log)
        if not os.access(log, os.R_OK):
            raise SystemExit(f"cannot read the server's log {log}: run as its owner, or pass --log")
        found = admin.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            [DATABASE],
        ).fetchone()
        reuse = args.keep and found is not None and found[0] == dataset.name
        if not reuse:
            admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
            admin.execute(f"CREATE DATABASE {DATABASE}")
            with progress() as bar:
                task = bar.add_task("generating executions", total=dataset.executions)
                generate_postgres(url, dataset, lambda rows: bar.advance(task, rows))
            admin.execute(f"COMMENT ON DATABASE {DATABASE} IS '{dataset.name}'")
            settle(url)
        try:
            migrated = migrated_targets(admin_url)
            default = {name: -1 for name in migrated}
            if set(migrated.values()) == {-1}:
                console.print("[yellow]the migrations leave every target at the default[/]")
            results = []
            for label, wanted in (("as migrated", migrated), ("defaults", default)):
                plans = Plans(label, set_targets(url, wanted))
                capture(admin, log, url, dataset, args.calls, plans)
                results.append(plans)
            set_targets(url, migrated)
        finally:
            if not args.keep:
                admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    return report(*results)


if __name__ == "__main__":
    sys.exit(main())
