"""Scenario 1, logs read: `GET /workflows/{id}/logs` on a million stored executions.

`solder serve` runs as in production (no --dev) on the data set of logs_dataset.py;
wrk, a separate process, loads it with 16 connections on 2 threads. Each request is
measured `runs` times, the requests taking turns, and the median of each figure kept.
The deep page's cost relative to page 1 is the ratio of their rates within each turn.
The big pair's failed executions and analytics are measured too, with no target.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx
import psycopg
from common import Load, elapsed, settle, wrk
from cryptography.fernet import Fernet
from logs_dataset import Dataset, Edit, create_api_key, generate_postgres, generate_sqlite
from logs_dataset import user_id as user_ref
from logs_dataset import workflow_id as workflow_ref
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from scale_out import (
    SOLDER,
    BenchError,
    Process,
    answers_http,
    console,
    cpu_seconds,
    free_port,
    wait_until,
)

DATA_DIR = Path(__file__).resolve().parent / ".data"
POSTGRES_DATABASE = "solder_bench_logs"
WARM_UP_SECONDS = 2.0
# Limits the issue sets for limit=10 on 2 cores.
MIN_RATE = 2_500.0
MAX_P99_MS = 20.0
MAX_DEEP_RATIO = 2.0


@dataclass(frozen=True)
class Request:
    key: str
    label: str
    path: str


@dataclass
class Measured:
    """Every run of every request on one backend."""

    backend: str
    dataset: Dataset
    generation: str
    loads: dict[str, list[Load]] = field(default_factory=dict)
    server_cores: dict[str, list[float]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)

    def rate(self, key: str) -> float:
        return statistics.median(load.rate for load in self.loads[key])

    def p99(self, key: str) -> float:
        return statistics.median(load.p99_ms for load in self.loads[key])

    def ratios(self, key: str, reference: str) -> list[float]:
        """Time per request of `key` over that of `reference`, turn by turn."""
        pairs = zip(self.loads[reference], self.loads[key], strict=True)
        return [first.rate / other.rate for first, other in pairs]


def requests(dataset: Dataset) -> list[Request]:
    ordinary = f"/workflows/{workflow_ref(0)}/logs?userId={user_ref(1)}"
    big = f"/workflows/{workflow_ref(dataset.workflows)}/logs?userId={user_ref(0)}"
    page = deep_page(dataset)
    return [
        Request("ordinary10", "ordinary pair, page 1, limit=10", f"{ordinary}&limit=10"),
        Request("ordinary30", "ordinary pair, page 1, limit=30", f"{ordinary}&limit=30"),
        Request("big10", "big pair, page 1, limit=10", f"{big}&limit=10"),
        Request("big30", "big pair, page 1, limit=30", f"{big}&limit=30"),
        Request(
            "deep",
            f"big pair, offset {(page - 1) * 10:,} (page={page}), limit=10",
            f"{big}&page={page}&limit=10",
        ),
    ]


def other_reads(dataset: Dataset) -> list[Request]:
    """The logs' other reads on the big pair, none of whose executions failed (no target:
    the issue's are the logs pages'): a page of its failed executions (from their own
    index, migration 0016), and its analytics (summed once, in the warm-up, then read
    from the executions recorded since: migration 0017)."""
    pair = f"/workflows/{workflow_ref(dataset.workflows)}/{{}}?userId={user_ref(0)}"
    return [
        Request("errors", "big pair, failed executions, page 1 (no target)", pair.format("errors")),
        Request("analytics", "big pair, analytics (no target)", pair.format("analytics")),
    ]


def deep_page(dataset: Dataset) -> int:
    """The page at offset 30,000 (scaled with the data set) of 10 logs each."""
    return round(30_000 * dataset.scale) // 10 + 1


def cursor_request(
    base: str, headers: dict[str, str], dataset: Dataset, deep: Request
) -> Request | None:
    """A page as deep, by cursor, if this Solder answers `nextCursor`."""
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        answer = client.get(deep.path)
    if answer.status_code != 200 or len(answer.json()["data"]) != 10:
        raise BenchError(f"GET {deep.path}: {answer.status_code} {answer.text[:500]}")
    # The cursor the page-based request returns points past it: one page deeper.
    cursor = answer.json().get("nextCursor")
    if cursor is None:
        return None
    big = deep.path.split("&page=")[0]
    offset = deep_page(dataset) * 10
    label = f"big pair, cursor at offset {offset:,}, limit=10"
    return Request("cursor", label, f"{big}&cursor={quote(cursor)}&limit=10")


def solder_env(database_url: str, workdir: Path, **settings: str) -> dict[str, str]:
    """The environment of a Solder process on the data set, with `settings` changed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLDER_")}
    env.update(
        SOLDER_DATABASE_URL=database_url,
        SOLDER_DATA_DIR=str(workdir),
        SOLDER_SECRET_KEY=Fernet.generate_key().decode(),
        # The data set's executions started in 2024: retention must not purge them.
        SOLDER_LOG_RETENTION_DAYS="36500",
    )
    return {**env, **settings}


@contextlib.contextmanager
def serving(
    database_url: str, workdir: Path, *, sqlite: bool, **settings: str
) -> Iterator[tuple[str, int]]:
    """`solder serve` on the data set (with these `SOLDER_*` settings changed): its base
    URL and process id."""
    env = solder_env(database_url, workdir, **settings)
    port = free_port()
    # On PostgreSQL production runs the API apart from the workers.
    args = [*SOLDER, "serve", "--port", str(port), *([] if sqlite else ["--no-worker"])]
    server = Process.start("solder serve", args, env, workdir / "serve.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers_http(f"{base}/health"), "solder serve", server.process)
        yield base, server.process.pid
    except BenchError:
        console.print(server.tail())
        raise
    finally:
        server.stop()


def measure(
    backend: str,
    database_url: str,
    dataset: Dataset,
    generation: str,
    *,
    runs: int,
    seconds: float,
    only: Collection[str] = (),
) -> Measured:
    """Every request `runs` times in turns (those whose keys are in `only`, if given)."""
    headers = {
        "Authorization": f"bearer {asyncio.run(create_api_key(database_url))}",
        "x-api-version": "2025-09",
    }
    measured = Measured(backend, dataset, generation)
    with (
        tempfile.TemporaryDirectory(prefix="solder-bench-") as workdir,
        serving(database_url, Path(workdir), sqlite=backend == "SQLite") as (base, pid),
    ):
        planned = requests(dataset)
        cursor = cursor_request(base, headers, dataset, planned[-1])
        planned += [cursor] if cursor is not None else []
        planned += other_reads(dataset)
        planned = [request for request in planned if not only or request.key in only]
        with progress() as bar:
            task = bar.add_task(f"{backend}: logs read", total=len(planned) * (runs + 1))
            for request in planned:
                measured.labels[request.key] = request.label
                wrk(base + request.path, headers, WARM_UP_SECONDS)
                bar.advance(task)
            for _ in range(runs):
                for request in planned:
                    before = cpu_seconds(pid)
                    load = wrk(base + request.path, headers, seconds)
                    cores = (cpu_seconds(pid) - before) / seconds
                    measured.loads.setdefault(request.key, []).append(load)
                    measured.server_cores.setdefault(request.key, []).append(cores)
                    bar.advance(task)
    return measured


def progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def sqlite_dataset(dataset: Dataset, name: str = "", edit: Edit | None = None) -> tuple[Path, str]:
    """The cached SQLite file of the data set (`name`: with its executions' rows changed
    by `edit`), generated if missing; how long that took."""
    path = DATA_DIR / f"{name or dataset.name}.db"
    if path.exists():
        return path, "cached"
    DATA_DIR.mkdir(exist_ok=True)
    started = time.monotonic()
    with progress() as bar:
        task = bar.add_task("SQLite: generating executions", total=dataset.executions)
        generate_sqlite(path, dataset, lambda rows: bar.advance(task, rows), edit)
    generation = elapsed(started)
    settle()
    return path, generation


@contextlib.contextmanager
def postgres_dataset(admin_url: str, dataset: Dataset) -> Iterator[tuple[str, str]]:
    """A new database `solder_bench_logs` holding the data set, dropped afterwards."""
    admin_url = admin_url.rstrip("/")
    with psycopg.connect(f"{admin_url}/postgres", autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {POSTGRES_DATABASE} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {POSTGRES_DATABASE}")
    url = f"{admin_url}/{POSTGRES_DATABASE}"
    try:
        started = time.monotonic()
        with progress() as bar:
            task = bar.add_task("PostgreSQL: generating executions", total=dataset.executions)
            generate_postgres(url, dataset, lambda rows: bar.advance(task, rows))
        generation = elapsed(started)
        settle(url)
        yield url, generation
    finally:
        with psycopg.connect(f"{admin_url}/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {POSTGRES_DATABASE} WITH (FORCE)")


def run(dataset: Dataset, postgres_url: str | None, *, runs: int, seconds: float) -> list[Measured]:
    """Measure on SQLite, then on PostgreSQL when `postgres_url` is given."""
    path, generation = sqlite_dataset(dataset)
    results = [
        measure("SQLite", f"sqlite:///{path}", dataset, generation, runs=runs, seconds=seconds)
    ]
    if postgres_url is not None:
        with postgres_dataset(postgres_url, dataset) as (url, generation):
            results.append(
                measure("PostgreSQL", url, dataset, generation, runs=runs, seconds=seconds)
            )
    return results


def figures(measured: Measured) -> list[tuple[str, str, str, str, str]]:
    """Table rows: figure, value, target, met, bare-stack reference."""
    rows = []
    for key, label in measured.labels.items():
        rate, p99 = measured.rate(key), measured.p99(key)
        cores = statistics.median(measured.server_cores[key])
        value = f"{rate:,.0f} req/s, p99 {p99:.1f} ms (server: {cores:.2f} cores)"
        met = [f"p99 {meets(p99 <= MAX_P99_MS, MAX_P99_MS / p99)}"]
        target = f"p99 ≤ {MAX_P99_MS:g} ms"
        reference = ""
        if key in ("ordinary10", "big10"):
            met.insert(0, f"rate {meets(rate >= MIN_RATE, rate / MIN_RATE)}")
            target = f"≥ {MIN_RATE:,.0f} req/s, {target}"
            reference = "8,900 req/s from memory; 4,300 from SQLite"
        elif key == "deep":
            reference = "190 req/s with OFFSET 1500 on wide rows"
        elif key in ("errors", "analytics"):
            target, met = "", []
        rows.append((label, value, target, "; ".join(met), reference))
    for key in ("deep", "cursor"):
        if "big10" not in measured.loads:  # measured in part (`measure`'s `only`)
            break
        if key not in measured.loads:
            label = f"big pair, cursor at offset {deep_page(measured.dataset) * 10:,}, limit=10"
            rows.append((label, "n/a (no nextCursor in the answer)", "", "", ""))
            continue
        ratios = measured.ratios(key, "big10")
        ratio = statistics.median(ratios)
        turns = ", ".join(f"{each:.2f}" for each in ratios)
        value = f"{ratio:.2f}x (each run: {turns})"
        if key == "deep":
            rows.append(
                ("deep page cost / page 1", value, "≤ 2x", meets(ratio <= 2, 2 / ratio), "")
            )
        else:
            rows.append(
                ("cursor cost / page 1", value, "1x at any depth", meets(ratio <= 1.2, 0), "")
            )
    return rows


def meets(met: bool, fraction: float) -> str:
    """`yes`, or `no` with how far the figure is from its target (a fraction of it)."""
    if met:
        return "yes"
    return f"no ({fraction:.0%} of target)" if fraction else "no"
