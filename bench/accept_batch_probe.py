"""Accepting runs on PostgreSQL a statement each, or a loop turn's in one statement: the
database's side alone.

    .venv/bin/python bench/accept_batch_probe.py [--seconds 10] [--rounds 3]
        [--clients 32] [--batches 1,8,32]
        [--postgres-url postgresql://postgres@127.0.0.1:5432]

Sets up Solder's schema, a tenant, its API key and a workflow as scenario 2 does
(bench/common.py's `solder_stack`, no worker), then from this process `--clients`
tasks accept runs by key on one workflow, as fast as they can, through Solder's own
pool:

- `single`: each accept a statement of its own (`queue.queue_by_keys` of one run), its
  own transaction, as the API made it before `executions.KeyedAccepts`;
- `batch N`: the API's `executions.KeyedAccepts`, which takes the accepts waiting when
  the loop comes round, or when its statement in flight is done, up to N, in one
  statement (a prototype of it here, until it was built: RESULTS, 2026-12-06 09:45).

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

from solder import executions, keys
from solder.ids import execution_id
from solder.store import queue
from solder.store.database import Database

FLOW: dict[str, Any] = {
    "name": "accept",
    "trigger": {"type": "webhook"},
    "blocks": [
        {"name": "double", "connector": "transform", "config": {"expression": "{{ trigger.n }}"}}
    ],
}


class Counted(executions.KeyedAccepts):
    """The API's `KeyedAccepts`, counting its statements."""

    statements = 0

    async def _queue(
        self, runs: list[queue.KeyedRun], here: queue.Here | None
    ) -> dict[str, queue.Taken | None]:
        self.statements += 1
        return await super()._queue(runs, here)


async def load(
    db: Database, target: tuple[str, str, str], batch: int | None, clients: int, seconds: float
) -> tuple[int, int]:
    """Accepts made in `seconds` by `clients` tasks; statements sent."""
    key_hash, user_id, workflow_id = target
    accepts = Counted(db)
    accepts.MOST = batch or 1
    done = 0
    deadline = time.monotonic() + seconds

    async def client() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            run = queue.KeyedRun(key_hash, workflow_id, user_id, execution_id(), '{"n": 1}')
            if batch is None:  # a statement each, as before KeyedAccepts
                queued = run.id in await accepts._queue([run], None)
            else:
                queued = await accepts.accept(run) is not None
            if not queued:
                raise RuntimeError("an accept found no target")
            done += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return done, accepts.statements


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
