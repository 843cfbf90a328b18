"""A diagnostic for the key of `steps`: how long retention's purge batches take while
other executions are running, their finished blocks in `steps`.

Deleting an execution deletes its steps (ON DELETE CASCADE), a delete that names the
execution only. Solder keys `steps` by (execution id, seq), so that delete goes
through the key; this compares it, in one run, with `steps` keyed by (tenant,
execution id, seq), as migration 0009 first left it, on SQLite and on PostgreSQL
(when reachable).

    .venv/bin/python bench/cascade_probe.py [--running 5000] [--batches 5] [--runs 3]

Each store: one workflow with `batches` x 500 ended executions past their retention,
and `running` executions of it, not ended, with 4 steps each. Every batch is timed as
the server's sweep runs it (`queries.purge_workflow_executions`, one write transaction).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import psycopg
from common import postgres_database
from rich.console import Console
from rich.table import Table
from sqlalchemy import insert, select, text

from solder import keys
from solder.store import queries as q
from solder.store.database import Database
from solder.store.schema import executions, log_listings, steps, workflow_numbers

BATCH = 500
STEPS = 4
WORKFLOW = "w" * 24
POSTGRES = "postgresql://postgres@127.0.0.1:5432"
# The key as migration 0009 first left it, and as Solder keys it.
KEYS = {
    "tenant, execution, seq": "tenant_id, execution_id, seq",
    "execution, seq (Solder)": "execution_id, seq",
}


async def fill(db: Database, expired: int, running: int) -> str:
    """One workflow: `expired` ended executions, then `running` not ended, with their
    steps. The tenant's id."""
    async with db.write() as conn:
        tenant = await keys.ensure_tenant(conn, "probe")
        number = (
            await conn.execute(
                insert(workflow_numbers)
                .values(tenant_id=tenant.id, workflow_id=WORKFLOW)
                .returning(workflow_numbers.c.number)
            )
        ).scalar_one()
        total = expired + running
        await conn.execute(
            insert(log_listings),
            [
                {"workflow_number": number, "user_number": user, "last_position": total}
                | {"deleted": 0, "deleted_top": 0}
                for user in (0, 1)
            ],
        )
        rows = [
            {
                "tenant_id": tenant.id,
                "id": f"e{n:020d}",
                "workflow_number": number,
                "user_number": 1,
                "workflow_version": 1,
                "status": "succeeded" if n <= expired else "running",
                "trigger_id": "",
                "trigger_data": "",
                "started_at": n,
                "log": b"x" * 300 if n <= expired else None,
                "user_position": n,
                "workflow_position": n,
            }
            for n in range(1, total + 1)
        ]
        await conn.execute(insert(executions), rows)
        await conn.execute(
            insert(steps),
            [
                {
                    "tenant_id": tenant.id,
                    "execution_id": f"e{n:020d}",
                    "seq": seq,
                    "connector_id": "http",
                    "block_name": f"block {seq}",
                    "started_at": n,
                    "stopped_at": n + 1,
                    "data": "[" + "0" * 200 + "]",
                    "inputs": "{}",
                }
                for n in range(expired + 1, total + 1)
                for seq in range(1, STEPS + 1)
            ],
        )
    return tenant.id


async def rekey(db: Database, key: str) -> None:
    """`steps` keyed by `key` (on SQLite, rebuilt: a primary key cannot be altered)."""
    async with db.write() as conn:
        if not db.is_sqlite:
            await conn.execute(text("ALTER TABLE steps DROP CONSTRAINT pk_steps"))
            await conn.execute(
                text(f"ALTER TABLE steps ADD CONSTRAINT pk_steps PRIMARY KEY ({key})")
            )
            return
        await conn.execute(text("ALTER TABLE steps RENAME TO steps_old"))
        ddl = (
            await conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'steps_old'"))
        ).scalar_one()
        start = ddl.index("PRIMARY KEY (") + len("PRIMARY KEY (")
        ddl = ddl[:start] + key + ddl[ddl.index(")", start) :]
        await conn.execute(text(ddl.replace("steps_old", "steps", 1)))
        await conn.execute(text("INSERT INTO steps SELECT * FROM steps_old"))
        await conn.execute(text("DROP TABLE steps_old"))


async def probe(url: str, key: str, expired: int, running: int) -> list[float]:
    """Each purge batch's time, in ms."""
    db = Database(url)
    try:
        await asyncio.to_thread(db.migrate)
        await rekey(db, key)
        tenant_id = await fill(db, expired, running)
        if not db.is_sqlite:
            async with db.write() as conn:
                await conn.execute(text("ANALYZE"))
        timings = []
        after: int | None = 0
        while after is not None:
            started = time.perf_counter()
            async with db.write() as conn:
                deleted, after = await q.purge_workflow_executions(
                    conn, tenant_id, WORKFLOW, expired + 1, after, BATCH
                )
            timings.append((time.perf_counter() - started) * 1000)
            assert deleted == BATCH or after is None, (deleted, after)
        async with db.read() as conn:
            left = (await conn.execute(select(executions.c.id))).all()
            assert len(left) == running, len(left)
        return timings
    finally:
        await db.dispose()


def store(backend: str, directory: Path, name: str) -> contextlib.AbstractContextManager[str]:
    """A new, empty database of `backend`: its URL (PostgreSQL's dropped afterwards)."""
    if backend == "SQLite":
        return contextlib.nullcontext(f"sqlite:///{directory / name}.db")
    return postgres_database(POSTGRES, name)


def postgres_reachable() -> bool:
    try:
        psycopg.connect(f"{POSTGRES}/postgres", connect_timeout=3).close()
    except psycopg.OperationalError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--running", type=int, default=5_000)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    console = Console()
    table = Table(title=f"A purge batch of {BATCH}, {args.running:,} executions running")
    table.add_column("database")
    table.add_column("steps keyed by")
    table.add_column("median batch", justify="right")
    table.add_column("slowest batch", justify="right")
    with tempfile.TemporaryDirectory(prefix="solder-cascade-") as tmp:
        for backend in ("SQLite", "PostgreSQL"):
            if backend == "PostgreSQL" and not postgres_reachable():
                console.print(f"[yellow]PostgreSQL at {POSTGRES} is unreachable: skipped")
                continue
            medians: dict[str, list[float]] = {name: [] for name in KEYS}
            worst: dict[str, float] = dict.fromkeys(KEYS, 0.0)
            for run in range(args.runs):
                for name, key in KEYS.items():  # in turns, so both see the same machine
                    label = f"solder_cascade_{run}_{key[:6]}"
                    with (
                        console.status(f"{backend}, {name}, run {run + 1} of {args.runs}"),
                        store(backend, Path(tmp), label) as url,
                    ):
                        timings = asyncio.run(probe(url, key, args.batches * BATCH, args.running))
                    medians[name].append(statistics.median(timings))
                    worst[name] = max(worst[name], *timings)
            for name in KEYS:
                if medians[name]:
                    table.add_row(
                        backend,
                        name,
                        f"{statistics.median(medians[name]):,.1f} ms",
                        f"{worst[name]:,.1f} ms",
                    )
    console.print(table)


if __name__ == "__main__":
    main()
