"""Scenario 3, engine overhead: what one block costs the engine, its durable log included.

One workflow: a webhook trigger and 100 `transform` blocks, each adding 1 to the one
before (`{{ blocks.b041 + 1 }}`), so the last outputs `n + 100` (checked). Solder runs
as in production (common.solder_stack: `solder serve` on SQLite; `solder serve
--no-worker` plus `solder worker` processes on PostgreSQL). Executions run one at a
time: POST /run/workflow, then the bench polls the executions table every 10 ms until
it has ended, then reads its log through GET /workflows/{id}/logs.

Figure: milliseconds per block = (the log's `stoppedAt` - `startedAt`) / 100, median over
the `--executions` executions of a run, median over `--runs` runs. `startedAt` is when
the API accepted the run, so the figure includes the dispatch to a worker and the final
write of the log; the value also gives the blocks alone (last block's `stoppedAt` - first
block's `startedAt` in `results`, / 100) and the server's CPU per block (all its
processes' CPU seconds over the run, / the blocks run).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from common import Stack, solder_stack
from logs_read import meets, progress
from scale_out import BenchError

BLOCKS = 100
TARGET_MS = 0.1  # per block
POLL_SECONDS = 0.01
WARM_UP = 3  # executions

Row = tuple[str, str, str, str, str, str]  # scenario, figure, value, target, met, bare stack


def workflow() -> dict[str, Any]:
    blocks = [
        {
            "name": f"b{n:03}",
            "connector": "transform",
            "config": {"expression": f"{{{{ blocks.b{n - 1:03} + 1 }}}}"},
        }
        for n in range(1, BLOCKS)
    ]
    first = {
        "name": "b000",
        "connector": "transform",
        "config": {"expression": "{{ trigger.n + 1 }}"},
    }
    return {"name": "Bench 100 blocks", "trigger": {"type": "webhook"}, "blocks": [first, *blocks]}


def ms(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp).timestamp() * 1000


@dataclass
class Execution:
    total: float  # ms from startedAt to stoppedAt
    blocks: float  # ms from the first step's start to the last step's end


@dataclass
class Measured:
    backend: str
    runs: list[list[Execution]] = field(default_factory=list)
    server_cpu_ms: list[float] = field(default_factory=list)  # per block, each run

    def per_block(self) -> list[float]:
        return [statistics.median(e.total for e in run) / BLOCKS for run in self.runs]


class Bench:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.user, self.workflow = stack.install("bench-overhead", workflow())
        self.api = httpx.Client(base_url=stack.base, headers=stack.headers, timeout=60)
        self.n = 0

    def execute(self) -> Execution:
        """Run the workflow once and wait for its end; its timings from its log."""
        self.n += 1
        body = {"userId": self.user, "workflowId": self.workflow, "data": {"n": self.n}}
        answer = self.api.post("/run/workflow", json=body)
        if answer.status_code != 200:
            raise BenchError(f"POST /run/workflow: {answer.status_code} {answer.text}")
        execution = answer.json()["executionId"]
        deadline = time.monotonic() + 120
        while True:
            status = self.stack.query("SELECT status FROM executions WHERE id = ?", [execution])
            if status and status[0][0] not in ("queued", "running", "crashed"):
                break
            if time.monotonic() > deadline:
                self.stack.check_alive()
                raise BenchError(f"execution {execution} still unfinished after 120 s")
            time.sleep(POLL_SECONDS)
        page = self.api.get(
            f"/workflows/{self.workflow}/logs", params={"userId": self.user, "limit": 1}
        )
        log = page.json()["data"][0] if page.status_code == 200 and page.json()["data"] else {}
        results = log.get("results", [])[-BLOCKS:]  # the trigger's entry comes first
        if log.get("executionId") != execution or not log.get("finished"):
            raise BenchError(f"execution {execution} did not succeed: {page.text[:1000]}")
        if len(results) != BLOCKS or results[-1]["data"][0][0]["json"] != self.n + BLOCKS:
            raise BenchError(f"execution {execution} has a wrong log: {page.text[:1000]}")
        return Execution(
            ms(log["stoppedAt"]) - ms(log["startedAt"]),
            ms(results[-1]["stoppedAt"]) - ms(results[0]["startedAt"]),
        )


def measure(
    backend: str, postgres_url: str | None, *, runs: int, executions: int, workers: int
) -> Measured:
    measured = Measured(backend)
    with (
        tempfile.TemporaryDirectory(prefix="solder-bench-overhead-") as workdir,
        solder_stack(backend, postgres_url, Path(workdir), workers=workers) as stack,
        progress() as bar,
    ):
        bench = Bench(stack)
        task = bar.add_task(f"{backend}: 100 blocks", total=WARM_UP + runs * executions)
        for _ in range(WARM_UP):
            bench.execute()
            bar.advance(task)
        for _ in range(runs):
            stack.vacuum()
            cpu = stack.server_cpu()
            done = []
            for _ in range(executions):
                done.append(bench.execute())
                bar.advance(task)
            spent = stack.server_cpu() - cpu
            measured.runs.append(done)
            measured.server_cpu_ms.append(1000 * spent / (executions * BLOCKS))
        bench.api.close()
    return measured


def run(postgres_url: str | None, *, runs: int, executions: int, workers: int) -> list[Measured]:
    """Measure on SQLite, then on PostgreSQL when `postgres_url` is given."""
    backends = ("SQLite", "PostgreSQL") if postgres_url else ("SQLite",)
    return [
        measure(backend, postgres_url, runs=runs, executions=executions, workers=workers)
        for backend in backends
    ]


def figures(measured: Measured) -> list[Row]:
    per_block = measured.per_block()
    value = statistics.median(per_block)
    alone = statistics.median(
        statistics.median(e.blocks for e in run) / BLOCKS for run in measured.runs
    )
    cpu = statistics.median(measured.server_cpu_ms)
    count = len(measured.runs[0])
    return [
        (
            "3. engine overhead",
            f"ms per block, {BLOCKS} transform blocks, {count} executions one at a time",
            f"{value:.2f} ms/block (each run: {', '.join(f'{v:.2f}' for v in per_block)}); "
            f"blocks alone {alone:.2f} ms/block; server CPU {cpu:.2f} ms/block",
            f"≤ {TARGET_MS:g} ms/block",
            meets(value <= TARGET_MS, TARGET_MS / value),
            "",
        )
    ]
