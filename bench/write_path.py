"""Scenario 7, the write path alone: Solder's runs in one process, nothing else in the way.

Scenario 2's completed runs over the ceiling (insert_ceiling.py) is the write path's
fraction as the suite reports it. A run there is also an HTTP request parsed and
answered, an `http` block's call and the upstream answering it, and the load
generator's request: CPU on the same two cores, none of it writing a log. Here the same
runs are made without any of that, to say how far Solder's own path, from a run
accepted to its log written, is from the ceiling.

One process (on uvloop, as `solder serve`) holds a `solder.app.Solder` as the server
builds it, started as the server starts it: on SQLite with its dispatcher, on
PostgreSQL with its procrastinate worker. `CLIENTS` coroutines in it accept runs as the
API's usual run request does (`Solder.accept_by_key`: the backpressure, the accepting
statement, the workers' wake), each as soon as its last is accepted, for the window.
Each run is then claimed, run by the engine and ended, its log durably written, as
always. The workflow writes what scenario 2's does (its execution, then its end with
the log of the trigger and two blocks), its second block a `transform` where scenario 2
calls out over HTTP.

Figure: executions that succeeded with their end within the window, per second (read
once the backlog has drained), median of `runs` windows after a warm-up; the process's
CPU a run, and the machine's busy cores (all processes, the database's included), over
each window. Its fraction of the ceiling is reported beside scenario 2's.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import uvloop
from common import VACUUM, postgres_database
from logs_read import progress
from runs import workflow as runs_workflow
from scale_out import BenchError, machine_busy_seconds
from sqlalchemy import text

from solder import keys, users, workflows
from solder.app import Solder
from solder.settings import Settings

CLIENTS = 32
WARM_UP_SECONDS = 3.0
WINDOW_SECONDS = 20.0
DRAIN_TIMEOUT = 120.0

# Scenario 2's workflow, its `http` block a `transform` giving what the upstream answers.
_RUNS = runs_workflow("http://127.0.0.1:9/unused")
WORKFLOW: dict[str, Any] = {
    **_RUNS,
    "name": "Bench write path",
    "blocks": [
        _RUNS["blocks"][0],
        {
            "name": "call",
            "connector": "transform",
            "config": {"expression": "{{ {'n': blocks.prepare} }}"},
        },
    ],
}


@dataclass
class Window:
    seconds: float
    completed: int
    process_cpu: float  # CPU seconds of this process over the window
    machine_busy: float  # busy cores of the whole machine over the window

    @property
    def rate(self) -> float:
        return self.completed / self.seconds


@dataclass
class Measured:
    backend: str
    windows: list[Window] = field(default_factory=list)

    def rate(self) -> float:
        return statistics.median(window.rate for window in self.windows)

    def cpu_ms(self) -> float:
        """The process's CPU a run, median over the windows."""
        return statistics.median(1000 * w.process_cpu / max(1, w.completed) for w in self.windows)

    def busy(self) -> float:
        return statistics.median(window.machine_busy for window in self.windows)

    def describe(self) -> str:
        each = ", ".join(f"{window.rate:,.0f}" for window in self.windows)
        return (
            f"{self.rate():,.0f} exec/s (each: {each}); this process's CPU "
            f"{self.cpu_ms():.2f} ms a run; the machine {self.busy():.2f} cores busy"
        )


class Bench:
    def __init__(self, solder: Solder) -> None:
        self.solder = solder
        self.n = 0
        self.key_hash = self.user_id = self.workflow_id = ""

    async def install(self) -> None:
        async with self.solder.db.write() as conn:
            tenant = await keys.ensure_tenant(conn, "bench")
            _, key = await keys.create_key(conn, tenant)
            self.user_id = await users.create(conn, tenant, "bench-write-path", None)
            await workflows.create(conn, tenant, WORKFLOW, self.solder.connectors)
            workflow = await workflows.resolve(conn, tenant, WORKFLOW["name"])
            await workflows.activate(conn, tenant, workflow, self.user_id)
        self.key_hash, self.workflow_id = keys.hash_key(key), workflow["id"]

    async def _client(self, until: float) -> None:
        while time.monotonic() < until:
            self.n += 1
            answer = await self.solder.accept_by_key(
                self.key_hash,
                user_id=self.user_id,
                workflow_id=self.workflow_id,
                data={"n": self.n},
            )
            if answer is None:
                raise BenchError("the run request was refused: the bench's key or workflow")

    async def load(self, seconds: float) -> Window:
        """`CLIENTS` clients for `seconds`; the window, counted once the backlog drained."""
        cpu, busy = time.process_time(), machine_busy_seconds()
        began_ms, began = time.time() * 1000, time.monotonic()
        await asyncio.gather(*(self._client(began + seconds) for _ in range(CLIENTS)))
        ended_ms, elapsed = time.time() * 1000, time.monotonic() - began
        window_cpu, window_busy = time.process_time() - cpu, machine_busy_seconds() - busy
        await self._drain(began_ms)
        async with self.solder.db.read() as conn:
            completed = (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM executions WHERE status = 'succeeded'"
                        " AND stopped_at >= :began AND stopped_at <= :ended"
                    ),
                    {"began": int(began_ms), "ended": int(ended_ms)},
                )
            ).scalar_one()
        return Window(elapsed, int(completed), window_cpu, window_busy / elapsed)

    async def _drain(self, since_ms: float) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while True:
            async with self.solder.db.read() as conn:
                pending, failed = (
                    await conn.execute(
                        text(
                            "SELECT count(CASE WHEN status IN ('queued', 'running', 'crashed')"
                            " THEN 1 END), count(CASE WHEN status NOT IN ('queued', 'running',"
                            " 'crashed', 'succeeded') THEN 1 END)"
                            " FROM executions WHERE started_at >= :since"
                        ),
                        {"since": int(since_ms)},
                    )
                ).one()
            if failed:
                raise BenchError(f"{failed} executions of the write path's load did not succeed")
            if not pending:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"{pending} executions still unfinished after {DRAIN_TIMEOUT} s")
            await asyncio.sleep(0.1)


def vacuum(url: str) -> None:
    """On PostgreSQL, what autovacuum would do after a window (it is off on the test
    server), as scenario 2 does after each run; not timed."""
    if url.startswith("postgresql"):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(VACUUM)


async def _measure(url: str, workdir: Path, backend: str, runs: int, seconds: float) -> Measured:
    measured = Measured(backend)
    settings = Settings(database_url=url, data_dir=workdir)
    solder = Solder(settings)
    await solder.start()
    try:
        bench = Bench(solder)
        await bench.install()
        with progress() as bar:
            task = bar.add_task(f"{backend}: the write path alone", total=1 + runs)
            await bench.load(WARM_UP_SECONDS)
            bar.advance(task)
            for _ in range(runs):
                await asyncio.to_thread(vacuum, url)
                measured.windows.append(await bench.load(seconds))
                bar.advance(task)
    finally:
        await solder.stop()
    return measured


@contextlib.contextmanager
def _database(backend: str, postgres_url: str | None, workdir: Path) -> Iterator[str]:
    if backend == "SQLite":
        yield f"sqlite:///{workdir / 'write-path.db'}"
    else:
        with postgres_database(postgres_url or "", "solder_bench_write_path") as url:
            yield url


def measure(
    backend: str, postgres_url: str | None, *, runs: int, seconds: float = WINDOW_SECONDS
) -> Measured:
    with (
        tempfile.TemporaryDirectory(prefix="solder-bench-write-path-") as workdir,
        _database(backend, postgres_url, Path(workdir)) as url,
    ):
        return uvloop.run(_measure(url, Path(workdir), backend, runs, seconds))


def run(postgres_url: str | None, *, runs: int, seconds: float = WINDOW_SECONDS) -> list[Measured]:
    """Measure on SQLite, then on PostgreSQL when `postgres_url` is given."""
    backends = ("SQLite", "PostgreSQL") if postgres_url else ("SQLite",)
    return [measure(backend, postgres_url, runs=runs, seconds=seconds) for backend in backends]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=WINDOW_SECONDS)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--sqlite-only", action="store_true")
    options = parser.parse_args()
    for done in run(
        None if options.sqlite_only else options.postgres_url,
        runs=options.runs,
        seconds=options.seconds,
    ):
        print(f"{done.backend}: {done.describe()}")
