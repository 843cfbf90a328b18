"""Accepting runs on PostgreSQL a statement each, or a loop turn's in one statement: the
database's side alone, before the API is changed.

    .venv/bin/python bench/accept_batch_probe.py [--seconds 10] [--rounds 3]
        [--clients 32] [--batches 1,8,32]
        [--postgres-url postgresql://postgres@127.0.0.1:5432]

Sets up Solder's schema, a tenant, its API key and a workflow as scenario 2 does
(bench/common.py's `solder_stack`, no worker), then from this process `--clients`
tasks accept runs by key on one workflow, as fast as they can, through Solder's own
pool:

- `single`: each accept is Solder's (`executions.run_workflow_by_key`: one statement,
  its own transaction), as the API makes it today;
- `batch N`: the accepts waiting when the loop comes round, up to N, are one statement
  (`BATCHED` below, a prototype): the targets read for them all, each listing row taken
  once for its count of them, the jobs deferred by one call, the executions inserted.

Variants take turns, `--rounds` times, `--seconds` each. Figures: accepts a second,
PostgreSQL's CPU an accept (every process of its user, ms) and this process's. A probe
for bench/RESULTS.md, not part of `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common import BENCH_TENANT, solder_stack
from pg_run_probe import postgres_cpu
from sqlalchemy import text

from solder import executions, keys
from solder.ids import execution_id
from solder.store import jobs
from solder.store.database import Database
from solder.store.prepared import Prepared, fetch

FLOW: dict[str, Any] = {
    "name": "accept",
    "trigger": {"type": "webhook"},
    "blocks": [
        {"name": "double", "connector": "transform", "config": {"expression": "{{ trigger.n }}"}}
    ],
}

BATCHED = Prepared(
    text(
        "WITH request AS MATERIALIZED (SELECT * FROM unnest(CAST(:key_hashes AS TEXT[]),"
        " CAST(:workflow_ids AS TEXT[]), CAST(:user_ids AS TEXT[]), CAST(:ids AS TEXT[]),"
        " CAST(:trigger_data AS TEXT[])) WITH ORDINALITY"
        " AS r(key_hash, workflow_id, user_id, id, trigger_data, n)),"
        # Two CTEs of four joins each, not one of eight: PostgreSQL plans each on its
        # own, 1 ms where the eight took 48 (its exhaustive join search).
        " keyed AS MATERIALIZED (SELECT r.*, k.tenant_id, i.version FROM request AS r"
        " JOIN api_keys AS k ON k.key_hash = r.key_hash AND k.revoked_at IS NULL"
        " JOIN installations AS i ON i.tenant_id = k.tenant_id"
        " AND i.workflow_id = r.workflow_id AND i.user_id = r.user_id AND i.active"
        " JOIN users AS u ON u.tenant_id = i.tenant_id AND u.id = i.user_id),"
        " target AS MATERIALIZED (SELECT r.n, r.id, r.trigger_data, r.tenant_id, r.version,"
        " CAST(v.definition AS json) -> 'trigger' ->> 'id' AS trigger_id,"
        " wn.number AS workflow_number, un.number AS user_number,"
        " row_number() OVER (ORDER BY r.n) AS seq"
        " FROM keyed AS r"
        " JOIN workflows AS w ON w.tenant_id = r.tenant_id AND w.id = r.workflow_id"
        " JOIN workflow_versions AS v ON v.tenant_id = r.tenant_id"
        " AND v.workflow_id = r.workflow_id AND v.version = r.version"
        " AND v.trigger_type = 'webhook'"
        " JOIN workflow_numbers AS wn ON wn.tenant_id = r.tenant_id"
        " AND wn.workflow_id = r.workflow_id"
        " JOIN user_numbers AS un ON un.tenant_id = r.tenant_id AND un.user_id = r.user_id),"
        " ranked AS (SELECT t.*,"
        " row_number() OVER (PARTITION BY workflow_number ORDER BY n) AS of_workflow,"
        " count(*) OVER (PARTITION BY workflow_number) AS in_workflow,"
        " row_number() OVER (PARTITION BY workflow_number, user_number ORDER BY n) AS of_user,"
        " count(*) OVER (PARTITION BY workflow_number, user_number) AS in_user FROM target AS t),"
        " job AS MATERIALIZED (SELECT j.job_id, j.seq FROM unnest(procrastinate_defer_jobs_v1("
        " ARRAY(SELECT ROW(:queue, :task, 0, 'execution:' || t.tenant_id || ':' || t.id, NULL,"
        " jsonb_build_object('tenant_id', t.tenant_id, 'execution_id', t.id),"
        " NULL)::procrastinate_job_to_defer_v1 FROM target AS t ORDER BY t.seq)))"
        " WITH ORDINALITY AS j(job_id, seq)),"
        " positions AS (INSERT INTO log_listings"
        " (workflow_number, user_number, last_position, deleted, deleted_top)"
        " SELECT counted.workflow_number, counted.user_number, counted.taken, 0, 0 FROM ("
        " SELECT workflow_number, 0 AS user_number, count(*) AS taken FROM target"
        " GROUP BY workflow_number UNION ALL"
        " SELECT workflow_number, user_number, count(*) FROM target"
        " GROUP BY workflow_number, user_number) AS counted"
        " ORDER BY counted.workflow_number, counted.user_number"
        " ON CONFLICT (workflow_number, user_number)"
        " DO UPDATE SET last_position = log_listings.last_position + EXCLUDED.last_position"
        " RETURNING workflow_number, user_number, last_position)"
        " INSERT INTO executions (tenant_id, id, workflow_version, status, trigger_id,"
        " trigger_data, rerun_of, started_at, job_id, workflow_number, user_number,"
        " workflow_position, user_position)"
        " SELECT r.tenant_id, r.id, r.version, 'queued', r.trigger_id, r.trigger_data, NULL,"
        " CAST(floor(extract(epoch FROM clock_timestamp()) * 1000) AS BIGINT), job.job_id,"
        " r.workflow_number, r.user_number,"
        " of_workflow.last_position - r.in_workflow + r.of_workflow,"
        " of_user.last_position - r.in_user + r.of_user"
        " FROM ranked AS r JOIN job ON job.seq = r.seq"
        " JOIN positions AS of_workflow ON of_workflow.workflow_number = r.workflow_number"
        " AND of_workflow.user_number = 0"
        " JOIN positions AS of_user ON of_user.workflow_number = r.workflow_number"
        " AND of_user.user_number = r.user_number"
        " RETURNING id"
    )
)

Request = tuple[str, str, str, str, str]  # key hash, workflow, user, execution id, data


class Batcher:
    """The accepts waiting when the loop comes round, up to `size`, in one statement."""

    def __init__(self, db: Database, size: int) -> None:
        self.db = db
        self.size = size
        self.waiting: list[tuple[Request, asyncio.Future[bool]]] = []
        self.scheduled = False
        self.statements = 0
        self.sending: set[asyncio.Task[None]] = set()

    async def accept(self, request: Request) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.waiting.append((request, future))
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self.scheduled = False
        while self.waiting:
            batch, self.waiting = self.waiting[: self.size], self.waiting[self.size :]
            task = asyncio.ensure_future(self._send(batch))
            self.sending.add(task)
            task.add_done_callback(self.sending.discard)

    async def _send(self, batch: list[tuple[Request, asyncio.Future[bool]]]) -> None:
        self.statements += 1
        columns = list(zip(*(request for request, _ in batch), strict=True))
        try:
            async with self.db.write_inline(single=True) as conn:
                rows = await fetch(
                    conn,
                    BATCHED,
                    key_hashes=list(columns[0]),
                    workflow_ids=list(columns[1]),
                    user_ids=list(columns[2]),
                    ids=list(columns[3]),
                    trigger_data=list(columns[4]),
                    queue=jobs.QUEUE,
                    task=jobs.TASK,
                )
        except Exception as error:
            for _, future in batch:
                future.set_exception(error)
            return
        queued = {row["id"] for row in rows}
        for request, future in batch:
            future.set_result(request[3] in queued)


async def load(
    db: Database, target: tuple[str, str, str], batch: int | None, clients: int, seconds: float
) -> tuple[int, int]:
    """Accepts made in `seconds` by `clients` tasks; statements sent."""
    key_hash, user_id, workflow_id = target
    batcher = Batcher(db, batch) if batch is not None else None
    done = 0
    deadline = time.monotonic() + seconds

    async def client() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            if batcher is None:  # as the API accepts a run request by key
                answer = await executions.run_workflow_by_key(
                    db, key_hash, user_id=user_id, workflow_id=workflow_id, data={"n": 1}
                )
                queued = answer is not None
            else:
                request = (key_hash, workflow_id, user_id, execution_id(), '{"n": 1}')
                queued = await batcher.accept(request)
            if not queued:
                raise RuntimeError("an accept found no target")
            done += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return done, batcher.statements if batcher is not None else done


async def measure(
    url: str, target: tuple[str, str, str], options: argparse.Namespace
) -> dict[str, list[tuple[float, float, float, float]]]:
    db = Database(url, pool_size=options.clients)
    variants: list[tuple[str, int | None]] = [("single", None)]
    variants += [(f"batch {size}", size) for size in options.batches]
    figures: dict[str, list[tuple[float, float, float, float]]] = {}
    try:
        await load(db, target, None, options.clients, 2.0)  # warm-up: pools, plans
        for _ in range(options.rounds):
            for name, size in variants:
                started = time.monotonic(), postgres_cpu(), time.process_time()
                done, statements = await load(db, target, size, options.clients, options.seconds)
                ended = time.monotonic(), postgres_cpu(), time.process_time()
                figures.setdefault(name, []).append(
                    (
                        done / (ended[0] - started[0]),
                        (ended[1] - started[1]) / done * 1000,
                        (ended[2] - started[2]) / done * 1000,
                        done / statements,
                    )
                )
                print(f"{name}: {figures[name][-1][0]:,.0f} accepts a second", flush=True)
    finally:
        await db.dispose()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument(
        "--batches", type=lambda s: [int(n) for n in s.split(",")], default=[1, 8, 32]
    )
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432")
    options = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="solder-bench-acceptbatch-") as tmp,
        solder_stack("PostgreSQL", options.postgres_url, Path(tmp), workers=0) as stack,
    ):
        user_id, workflow_id = stack.install("ada", FLOW)
        key = stack.headers["Authorization"].split()[-1]
        target = keys.hash_key(key), user_id, workflow_id
        figures = asyncio.run(measure(stack.database_url, target, options))
        (positions_ok,) = stack.query(
            "SELECT count(*) = count(DISTINCT workflow_position)"
            " AND count(*) = max(workflow_position) FROM executions"
        )[0]
    print(f"\n{BENCH_TENANT}: positions of the workflow distinct and gapless: {positions_ok}")
    print("variant: accepts a second; PostgreSQL ms an accept; client ms an accept; batch")
    for name, rows in figures.items():
        median = [statistics.median(row[i] for row in rows) for i in range(4)]
        runs = ", ".join(f"{row[0]:,.0f}" for row in rows)
        print(
            f"{name}: {median[0]:,.0f} ({runs}); {median[1]:.3f}; {median[2]:.3f};"
            f" {median[3]:.1f} accepts a statement"
        )


if __name__ == "__main__":
    main()
