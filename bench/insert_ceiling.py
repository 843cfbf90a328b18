"""Scenario 7, the ceiling: how fast the database alone takes the rows the engine writes.

Into Solder's own schema (`Database(url).migrate()`, a fresh SQLite file or PostgreSQL
database), without Solder's code in the loop, each execution of scenario 2's workflow
(a `transform` block, then an `http` block) is written as the engine ends up writing it:

1. INSERT its `executions` row (status `running`, trigger data, lease);
2. INSERT the `transform` block's `steps` row (its output and inputs, as the engine's
   `_record` stores them; the trigger's step is derived from the row, and the `http`
   block's, the last, goes into the log with the end);
3. UPDATE the execution: `succeeded`, `stopped_at`, `app_actions`, and `log`, the whole
   log document (the trigger's result and both blocks') as `engine._end` stores it
   (`logs.render`, then `codec.pack`);
4. DELETE its steps row.

1,000 executions a transaction, each statement an `executemany` over the batch (SQLite:
`sqlite3`, WAL, synchronous=NORMAL, foreign keys and secure_delete on, BEGIN IMMEDIATE,
as Solder sets it up; PostgreSQL: psycopg, whose executemany pipelines the statements).
On PostgreSQL, a VACUUM ANALYZE (not timed) follows each run's first batch, as
autovacuum would: without statistics (autovacuum is off on the test server) each steps
row's foreign-key check scans the whole executions table, and the rate falls with every
batch (0.2 s for the first 1,000 executions, 3.7 s for the 20th). Not written: the
procrastinate job that PostgreSQL's API defers with each run, and idempotency keys. The
log documents are rendered and packed before the clock starts (that CPU cost is
reported apart): the figure is the database's.

Figure: executions per second (each 2 rows inserted, 1 updated, 1 deleted), median of
`--runs` runs of `EXECUTIONS` executions each. The write path's fraction (run.py) is
scenario 2's completed executions/s over this ceiling; beside it, that of the write path
alone (write_path.py: the same runs made in one process, with no HTTP on either side).
"""

from __future__ import annotations

import contextlib
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
from common import postgres_database
from logs_read import meets, progress

from solder import logs
from solder.ids import execution_id
from solder.store import codec
from solder.store.database import Database

EXECUTIONS = 20_000  # per run
BATCH = 1_000
TARGET_FRACTION = 0.5
TENANT, USER = "a" * 24, "c" * 24
WORKFLOW_NUMBER, USER_NUMBER = 1, 1
BLOCKS = (("prepare", str(uuid.uuid4())), ("call", str(uuid.uuid4())))
TRIGGER = str(uuid.uuid4())
UPSTREAM = "http://127.0.0.1:40000/echo"

Row = tuple[str, str, str, str, str, str]  # scenario, figure, value, target, met, bare stack
Execution = tuple[tuple[Any, ...], list[tuple[Any, ...]], tuple[Any, ...], tuple[Any, ...]]

INSERT_EXECUTION = (
    "INSERT INTO executions (tenant_id, id, workflow_number, user_number, workflow_version, status,"
    " trigger_id, trigger_data, started_at, claimed_at, lease, workflow_position, user_position)"
    " VALUES (?, ?, ?, ?, 1, 'running', ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_STEP = (
    "INSERT INTO steps (tenant_id, execution_id, seq, connector_id, block_name, started_at,"
    " stopped_at, data, inputs, error, meta, app_actions)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?)"
)
FINISH = (
    "UPDATE executions SET status = 'succeeded', stopped_at = ?, lease = NULL,"
    " app_actions = ?, log = ? WHERE tenant_id = ? AND id = ? AND status = 'running'"
)
STEP_KEYS = (
    "seq",
    "connector_id",
    "block_name",
    "started_at",
    "stopped_at",
    "data",
    "inputs",
    "app_actions",
)
DELETE_STEPS = "DELETE FROM steps WHERE tenant_id = ? AND execution_id = ?"


def execution(n: int, started: int) -> Execution:
    """One execution's statements' parameters: its row, its steps, its end, its delete."""
    eid = execution_id()
    trigger = orjson.dumps({"n": n}).decode()
    outputs = (
        ([[{"json": n + 1, "id": str(uuid.uuid4())}]], {"expression": n + 1}, 0),
        (
            [[{"json": {"n": n + 1}, "statusCode": 200, "id": str(uuid.uuid4())}]],
            {"url": UPSTREAM, "query": {"n": n + 1}, "method": "GET"},
            1,
        ),
    )
    steps = []
    for seq, ((name, block_id), (data, inputs, actions)) in enumerate(
        zip(BLOCKS, outputs, strict=True), 1
    ):
        began = started + 2 * seq
        steps.append(
            {
                "seq": seq,
                "connector_id": block_id,
                "block_name": name,
                "started_at": began,
                "stopped_at": began + 1,
                "data": orjson.dumps(data).decode(),
                "inputs": orjson.dumps(inputs).decode(),
                "error": None,
                "meta": None,
                "app_actions": actions,
            }
        )
    stopped = started + 6
    ended = {
        "id": eid,
        "user_id": USER,
        "status": "succeeded",
        "started_at": started,
        "stopped_at": stopped,
        "workflow_version": 1,
        "rerun_of": None,
    }
    row = {"tenant_id": TENANT, "id": eid, "started_at": started}
    trigger_step = logs.trigger_step({**row, "trigger_id": TRIGGER, "trigger_data": trigger})
    log = codec.pack(orjson.dumps(logs.render(ended, [trigger_step, *steps])))
    return (
        (
            *(TENANT, eid, WORKFLOW_NUMBER, USER_NUMBER, TRIGGER, trigger),
            *(started, started + 1, "lease", n + 1, n + 1),
        ),
        [(TENANT, eid, *(s[key] for key in STEP_KEYS)) for s in steps[:1]],
        (stopped, 1, log, TENANT, eid),
        (TENANT, eid),
    )


def batches(count: int, first: int) -> tuple[list[list[Execution]], float]:
    """`count` executions in batches; the CPU seconds their logs took to render and pack."""
    began = time.process_time()
    now = int(time.time() * 1000)
    made = [execution(first + n, now + n) for n in range(count)]
    spent = time.process_time() - began
    return [made[n : n + BATCH] for n in range(0, count, BATCH)], spent


def write(cursor: Any, batch: list[Execution], marks: str) -> None:
    def sql(text: str) -> str:
        return text.replace("?", marks)

    cursor.executemany(sql(INSERT_EXECUTION), [e[0] for e in batch])
    cursor.executemany(sql(INSERT_STEP), [step for e in batch for step in e[1]])
    cursor.executemany(sql(FINISH), [e[2] for e in batch])
    cursor.executemany(sql(DELETE_STEPS), [e[3] for e in batch])


@contextlib.contextmanager
def sqlite_writer(workdir: Path) -> Iterator[Any]:
    path = workdir / "ceiling.db"
    Database(f"sqlite:///{path}").migrate()
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
        conn.execute(f"PRAGMA {pragma}")
    conn.execute("PRAGMA secure_delete=ON")

    def run(batch: list[Execution]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        write(conn, batch, "?")
        conn.execute("COMMIT")

    try:
        yield run, lambda: None
    finally:
        conn.close()


@contextlib.contextmanager
def postgres_writer(admin_url: str, workdir: Path) -> Iterator[Any]:
    with postgres_database(admin_url, workdir.name.replace("-", "_").lower()) as url:
        Database(url).migrate()
        with psycopg.connect(url) as conn:

            def run(batch: list[Execution]) -> None:
                with conn.transaction(), conn.cursor() as cursor:
                    write(cursor, batch, "%s")

            def maintain() -> None:
                conn.commit()
                conn.autocommit = True
                conn.execute("VACUUM ANALYZE executions, steps")
                conn.autocommit = False

            yield run, maintain


@dataclass
class Measured:
    backend: str
    rates: list[float] = field(default_factory=list)  # executions/s, each run
    pack_ms: list[float] = field(default_factory=list)  # CPU ms to render + pack a log

    def rate(self) -> float:
        return statistics.median(self.rates)


def measure(backend: str, postgres_url: str | None, *, runs: int) -> Measured:
    measured = Measured(backend)
    with tempfile.TemporaryDirectory(prefix="solder-bench-ceiling-") as workdir:
        writer = (
            sqlite_writer(Path(workdir))
            if backend == "SQLite"
            else postgres_writer(postgres_url or "", Path(workdir))
        )
        with writer as (run_batch, maintain), progress() as bar:
            task = bar.add_task(f"{backend}: insert ceiling", total=runs * EXECUTIONS)
            for n in range(runs):
                planned, spent = batches(EXECUTIONS, n * EXECUTIONS)
                measured.pack_ms.append(1000 * spent / EXECUTIONS)
                elapsed = 0.0
                for count, batch in enumerate(planned):
                    started = time.monotonic()
                    run_batch(batch)
                    elapsed += time.monotonic() - started
                    bar.advance(task, len(batch))
                    if count == 0:
                        maintain()  # not timed: what autovacuum does in production
                measured.rates.append(EXECUTIONS / elapsed)
    return measured


def run(postgres_url: str | None, *, runs: int) -> list[Measured]:
    """Measure on SQLite, then on PostgreSQL when `postgres_url` is given."""
    backends = ("SQLite", "PostgreSQL") if postgres_url else ("SQLite",)
    return [measure(backend, postgres_url, runs=runs) for backend in backends]


def figures(
    measured: Measured, runs_rate: float | None, alone: tuple[float, str] | None = None
) -> list[Row]:
    """Table rows; `runs_rate`: scenario 2's completed executions/s on this backend;
    `alone`: the write path alone's (write_path.py), its rate and its description."""
    rate = measured.rate()
    each = ", ".join(f"{r:,.0f}" for r in measured.rates)
    rows: list[Row] = [
        (
            "7. ceiling",
            f"raw writes of an execution's rows, {BATCH:,} a transaction",
            f"{rate:,.0f} exec/s = {2 * rate:,.0f} rows inserted/s (each run: {each}); "
            f"rendering + packing a log: {statistics.median(measured.pack_ms):.3f} ms CPU",
            "",
            "",
            "this is the bare stack",
        )
    ]
    if runs_rate is None:
        value, met = "n/a (run scenario 2, runs, too)", ""
    else:
        fraction = runs_rate / rate
        value = f"{fraction:.1%} ({runs_rate:,.0f} of {rate:,.0f} exec/s)"
        met = meets(fraction >= TARGET_FRACTION, fraction / TARGET_FRACTION)
    rows.append(
        ("7. ceiling", "write path's fraction: scenario 2 ÷ ceiling", value, "≥ 50 %", met, "")
    )
    if alone is not None:
        alone_rate, described = alone
        fraction = alone_rate / rate
        rows.append(
            (
                "7. ceiling",
                "the write path alone (one process, no HTTP: write_path.py) ÷ ceiling",
                f"{fraction:.1%} ({described})",
                "≥ 50 %",
                meets(fraction >= TARGET_FRACTION, fraction / TARGET_FRACTION),
                "",
            )
        )
    return rows
