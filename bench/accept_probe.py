"""Accepting runs on PostgreSQL with the API alone: how many a second, and what its
database sessions wait on meanwhile.

    .venv/bin/python bench/accept_probe.py [--seconds 10]
        [--postgres-url postgresql://postgres@127.0.0.1:5432]

Starts `solder serve --no-worker` (bench/common.py's `solder_stack`) with the backpressure
out of reach (`SOLDER_QUEUE_HIGH_WATER`, no worker takes the runs), then posts webhook
runs from 4 and from 16 clients on one workflow, and from 16 clients on one workflow
each, for `--seconds` each, while a thread samples `pg_stat_activity` every 10 ms: the
mean number of the benchmark database's sessions in each state and wait, and the cores
kept busy by the API, PostgreSQL (every process of its user) and the load generator
(this process, its sampling thread included). A probe for bench/RESULTS.md, not part of
`make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from common import Stack, solder_stack
from pg_run_probe import postgres_cpu
from scale_out import cpu_seconds

FLOW: dict[str, Any] = {
    "name": "accept",
    "trigger": {"type": "webhook"},
    "blocks": [
        {"name": "double", "connector": "transform", "config": {"expression": "{{ trigger.n }}"}}
    ],
}
Waits = collections.Counter[tuple[str, str, str]]


def sample(url: str, stop: threading.Event, waits: Waits, taken: list[int]) -> None:
    """Count the sessions by (state, wait type, wait) every 10 ms until `stop`; then add
    how many samples were taken to `taken`."""
    samples = 0
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.is_set():
            for state, kind, event in conn.execute(
                "SELECT state, wait_event_type, wait_event FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND backend_type = 'client backend'"
            ):
                waits[(str(state), str(kind), str(event))] += 1
            samples += 1
            time.sleep(0.01)
    taken.append(samples)


async def accept(
    stack: Stack, targets: list[tuple[str, str]], clients: int, seconds: float
) -> float:
    """Runs accepted a second by `clients` clients, client i posting to target i."""
    accepted = 0

    async def client(i: int) -> None:
        nonlocal accepted
        user, flow = targets[i % len(targets)]
        async with httpx.AsyncClient(base_url=stack.base, headers=stack.headers) as api:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                body = {"userId": user, "workflowId": flow, "data": {"n": accepted}}
                response = await api.post("/run/workflow", json=body)
                response.raise_for_status()
                accepted += 1

    began = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return accepted / (time.monotonic() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432")
    options = parser.parse_args()
    settings = {"SOLDER_QUEUE_HIGH_WATER": "1000000"}
    with (
        tempfile.TemporaryDirectory(prefix="solder-bench-accept-") as tmp,
        solder_stack(
            "PostgreSQL", options.postgres_url, Path(tmp), workers=0, settings=settings
        ) as stack,
    ):
        one = [stack.install("ada", FLOW)]
        each = [stack.install(f"user{i}", {**FLOW, "name": f"accept{i}"}) for i in range(16)]
        url = stack.database_url.replace("postgresql+psycopg://", "postgresql://")
        loads = [("4 clients, one workflow", 4, one), ("16 clients, one workflow", 16, one)]
        loads += [("16 clients, a workflow each", 16, each)]
        for label, clients, targets in loads:
            waits: Waits = collections.Counter()
            stop = threading.Event()
            samples: list[int] = []
            watcher = threading.Thread(target=sample, args=(url, stop, waits, samples))
            watcher.start()
            api = stack.api.process.pid
            cpu = cpu_seconds(api), postgres_cpu(), time.process_time(), time.monotonic()
            rate = asyncio.run(accept(stack, targets, clients, options.seconds))
            after = cpu_seconds(api), postgres_cpu(), time.process_time(), time.monotonic()
            stop.set()
            watcher.join()
            api_cores, pg_cores, load_cores = (
                (after[i] - cpu[i]) / (after[3] - cpu[3]) for i in range(3)
            )
            top = ", ".join(
                f"{state} {kind}/{event} {count / samples[0]:.2f}"
                for (state, kind, event), count in waits.most_common(5)
            )
            print(
                f"{label}: {rate:,.0f} accepted a second; cores busy: API {api_cores:.2f},"
                f" PostgreSQL {pg_cores:.2f}, load {load_cores:.2f}; sessions (mean): {top}",
                flush=True,
            )


if __name__ == "__main__":
    main()
